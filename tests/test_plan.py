"""The cost plan: its deterministic figures against a real tiny run, its refusals, and the GPU configs."""

import json
import os

import pytest
from safetensors import safe_open
from typer.testing import CliRunner

from saekit.cli import app
from saekit.config import ConfigError, load_config
from saekit.model import load_model
from saekit.plan import HEADER_BYTES, model_shape, plan_study, sae_bytes
from saekit.study import StudyRun, load_study_config
from saekit.train import TrainConfig
from tests.test_study import write_config

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Plan, then harvest and train for real, a tiny study without experiments."""
    tmp = tmp_path_factory.mktemp("plan")
    cfg_path = write_config(tmp, experiments=[], limit=40, train_tokens=4096)
    plan = plan_study(cfg_path, profile="h100")
    run = StudyRun(load_study_config(cfg_path))
    for step in run.steps()[:2]:  # harvest, train SAE
        step.run(lambda *a: None)
    return plan, tmp / "study"


def test_planned_tokens_match_the_manifest_and_the_trainer(tiny_run):
    plan, out = tiny_run
    manifest = json.loads((out / "activations" / "manifest.json").read_text())
    steps = {s.name: s for s in plan.steps}
    assert steps["harvest activations"].tokens == manifest["total_tokens"]
    assert steps["rank features and vectors"].tokens == manifest["total_tokens"]
    last = sorted((out / "sae" / "checkpoints").iterdir())[-1]
    assert steps["train SAE"].tokens == json.loads((last / "state.json").read_text())["tokens"] == 4096


def test_planned_shard_bytes_match_the_files(tiny_run):
    plan, out = tiny_run
    real = sum(p.stat().st_size for p in (out / "activations").glob("*.safetensors"))
    planned = next(s for s in plan.steps if s.name == "harvest activations").disk_bytes
    files = len(list((out / "activations").glob("*.safetensors")))
    assert real <= planned <= real + files * HEADER_BYTES


def test_planned_sae_disk_matches_weights_and_checkpoints(tiny_run):
    plan, out = tiny_run
    real = sum(p.stat().st_size for p in (out / "sae").rglob("*.safetensors"))
    planned = next(s for s in plan.steps if s.name == "train SAE").disk_bytes
    assert planned == pytest.approx(real, rel=0.02)


def test_planned_parameter_memory_matches_the_models(tiny_run):
    from transformers import AutoModelForCausalLM

    from saekit.model import tiny_model_folder

    plan, out = tiny_run
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_model_folder()), use_safetensors=True)
    assert plan.shape.params() == sum(p.numel() for p in hf.parameters())
    with safe_open(str(out / "sae" / "sae_weights.safetensors"), "pt") as f:
        stored = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys()) * 4
    assert stored == sae_bytes(plan.shape.d_model, 4 * plan.shape.d_model)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def test_the_gpu_configs_load_and_plan():
    cfg = load_study_config("analysis/study-gpu.toml")
    assert (cfg.device, cfg.dtype) == ("cuda", "bfloat16")
    train = load_config(TrainConfig, cfg.train_config)
    shape = model_shape(cfg.model)
    assert 16_384 <= train.sae.resolved_d_sae(shape.d_model) <= 65_536
    assert int(cfg.hook.split(".")[1]) / shape.n_layers == pytest.approx(2 / 3, abs=0.06)
    result = runner.invoke(app, ["study", "analysis/study-gpu.toml", "--plan", "--device-profile", "h100", "--gpus", "8"])
    assert result.exit_code == 0, result.output
    assert "8 GPUs" in result.output and "experiment impossible_task-gpu" in result.output


def test_gpu_study_without_cuda_stops_before_loading(tmp_path, monkeypatch):
    import torch

    import saekit.model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(saekit.model, "load_hf", lambda *a, **k: pytest.fail("weights loaded"))
    cfg = write_config(tmp_path, device="cuda")
    result = runner.invoke(app, ["study", str(cfg)])
    assert result.exit_code == 2 and "torch.cuda.is_available() is False" in result.output
    assert not (tmp_path / "study").exists()


def test_unreadable_model_config_names_the_file(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    cfg = write_config(tmp_path, model=str(folder))
    result = runner.invoke(app, ["study", str(cfg), "--plan"])
    assert result.exit_code == 2 and "config.json" in result.output and str(folder) in result.output
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        model_shape(str(folder))
    with pytest.raises(ConfigError, match="needs its config.json"):
        model_shape("nobody/not-a-cached-model")


def test_bad_plan_options_are_refused(tmp_path):
    cfg = write_config(tmp_path)
    for args, words in ((["--device-profile", "tpu9"], "unknown device profile"), (["--gpus", "0"], "gpus must be")):
        result = runner.invoke(app, ["study", str(cfg), "--plan", *args])
        assert result.exit_code == 2 and words in result.output


def test_a_plan_that_will_not_fit_says_so(tmp_path, monkeypatch):
    import saekit.plan as P

    monkeypatch.setattr(P, "free_disk", lambda folder: 1000)
    plan = plan_study(write_config(tmp_path, experiments=[]), profile="h100")
    assert any(w.startswith("disk: the study writes") for w in plan.warnings)
    assert "WILL NOT FIT: disk" in P.format_plan(plan)


def test_available_memory_counts_the_page_cache_linux_can_drop(monkeypatch):
    from saekit.model import gguf
    from saekit.plan import available_memory

    monkeypatch.setattr(gguf, "_available_memory", lambda: 20 * 10**9)   # what MemAvailable / the cgroup say
    assert available_memory("cpu", "") == 20 * 10**9
    monkeypatch.setattr(gguf, "_available_memory", lambda: None)         # unknown: the free pages
    assert 0 < available_memory("cpu", "") == os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_planned_rank_flops_match_the_work_a_real_rank_does(tiny_run):
    """Counted by torch's own FLOP counter over the real ranking (encoding, logit lens, own-word checks):
    the plan's figure is within 5% (without the lens and checks it was 110x short here, 7x on Qwen)."""
    from torch.utils.flop_counter import FlopCounterMode

    from saekit.rank import RankConfig, run_rank
    from saekit.sae import load_sae

    plan, out = tiny_run
    model = load_model("tiny")
    sae = load_sae(str(out / "sae"), model=model).sae
    with FlopCounterMode(display=False) as counter:
        run_rank(RankConfig(activations=str(out / "activations"), sae=str(out / "sae")), sae=sae, model=model,
                 tokenizer=model.tokenizer, db=None)
    planned = next(s for s in plan.steps if s.name == "rank features and vectors").flops
    assert counter.get_total_flops() == pytest.approx(planned, rel=0.05)


def test_decode_bytes_are_the_weights_a_generated_token_reads():
    from transformers import AutoModelForCausalLM

    from saekit.model import tiny_model_folder

    hf = AutoModelForCausalLM.from_pretrained(str(tiny_model_folder()), use_safetensors=True)
    shape = model_shape(str(tiny_model_folder()))
    read = sum(p.numel() for n, p in hf.named_parameters() if n != "model.norm.weight")   # tied: the head is the embedding
    assert shape.decode_bytes(2) == 2 * read


def test_generation_is_priced_per_generated_token_by_bandwidth(tmp_path):
    """live_dialogue's greedy replies: reply_tokens one-token steps per chosen message, each one weight read
    at the profile's bandwidth, on top of its counted passes."""
    from saekit.experiments.load import load_spec
    from saekit.experiments.tasks import TASKS
    from saekit.experiments.tasks.live_dialogue import dialogue_items
    from saekit.plan import DEVICE_PROFILES

    spec_path = "analysis/experiments/live_dialogue.toml"
    spec = load_spec(spec_path)
    cost = TASKS["live_dialogue"].cost(spec)
    assert cost.counted and cost.prompts == len(dialogue_items(spec)) == 20
    assert cost.decode_steps == 20 * spec.prompts.reply_tokens
    plan = plan_study(write_config(tmp_path, experiments=[spec_path]), profile="a100")
    step = next(s for s in plan.steps if s.name == "experiment live_dialogue")
    profile = DEVICE_PROFILES["a100"]
    decode_s = cost.decode_steps * plan.shape.decode_bytes(4) / (profile["bandwidth_gbs"] * 1e9)
    assert step.seconds == pytest.approx(step.flops / (profile["gflops"] * 1e9) + decode_s)
    assert f"{cost.decode_steps:,} generated tokens" in step.note


def test_the_device_rate_is_its_best_window_not_one_stalled_by_other_work():
    """A stall from other work on the machine (here one 0.3 s call) must not set the plan's rate."""
    import time

    from saekit.plan import _calls_per_second

    calls = []

    class Stalls:
        def __rmatmul__(self, other):
            calls.append(time.perf_counter())
            time.sleep(0.3 if len(calls) == 2 else 0.002)  # call 1 is the warm-up; call 2 opens window 1

    rate = _calls_per_second(object(), Stalls(), "cpu", seconds=0.25, windows=5)
    average = (len(calls) - 1) / (time.perf_counter() - calls[1])
    assert rate > 2 * average  # the stalled window alone would drag an overall average down
    assert rate <= 1 / 0.002 * 1.01  # and no window can beat the calls' own speed
