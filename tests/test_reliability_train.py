"""Hostile and careless input to configs, training and SAE folders, and kills while an SAE is saved.

Kills are real (os._exit(137) at a named fault point, SAEKIT_FAULT) in a subprocess for training,
and simulated by raising at the same points for save_sae alone.
"""

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import saekit.sae.storage
from saekit import sae as S
from saekit import train as T
from saekit.cli import app
from saekit.config import ConfigError, from_dict, load_toml
from saekit.experiments import ConditionSpec, ExperimentSpec, load_spec

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
WEIGHTS = "sae_weights.safetensors"
SAVE_POINTS = ["save_sae.weights_written", "save_sae.new_complete", "save_sae.old_aside", "save_sae.new_in",
               "save_sae.entry_moved"]
BEFORE_SWAP = SAVE_POINTS[:2]

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


def cli_fails_clearly(args, *expected):
    """The CLI exits 2 with `error: ...` naming every expected piece, and no traceback."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "Traceback" not in result.output
    for piece in expected:
        assert piece in result.output, result.output
    return result.output


# ---------------------------------------------------------------------------- NaN and inf in configs


@pytest.mark.parametrize("line,field", [("lr = nan", "lr"),
                                        ('[sae]\narchitecture = "topk"\naux_loss_coefficient = nan', "sae.aux_loss_coefficient"),
                                        ("max_grad_norm = inf", "max_grad_norm"), ("lr_end = -inf", "lr_end")])
def test_non_finite_train_config_values_are_refused_at_load(tmp_path, line, field):
    path = tmp_path / "t.toml"
    path.write_text(f"{line}\n")
    with pytest.raises(ConfigError, match=rf"{path}\.{field} is -?(nan|inf): it must be a finite number"):
        T.load_train_config(path)
    cli_fails_clearly(["train", str(path)], str(path), field, "finite")


def test_a_python_built_train_config_with_nan_fails_before_any_step(tmp_path):
    steps = []
    with pytest.raises(ConfigError, match="train config.lr is nan"):
        T.train_sae(T.TrainConfig(lr=float("nan"), out=str(tmp_path / "sae")), activations=tiny_source(),
                    progress=steps.append)
    assert steps == [] and not (tmp_path / "sae").exists()


SPEC = '''name = "t"
task = "probes"
sae = "/nowhere"
strengths = [{strengths}]

[[conditions]]
name = "c"
kind = "clamp"
features = [1]
clamp_to = "value"
{condition}
'''


@pytest.mark.parametrize("strengths,condition,field", [
    ("nan", "", "strengths[0]"),
    ("1.0", "strengths = [2.0, inf]", "conditions[0].strengths[1]"),
    ("1.0", "sign = nan", "conditions[0].sign"),
])
def test_non_finite_experiment_values_are_refused_at_load(tmp_path, strengths, condition, field):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.format(strengths=strengths, condition=condition))
    with pytest.raises(ConfigError, match=re.escape(f"{path}.{field} is ")):
        load_spec(path)
    cli_fails_clearly(["experiment", "run", str(path)], f"{path}.{field}", "finite")


def test_a_python_built_spec_with_nan_strengths_is_refused():
    spec = ExperimentSpec(name="t", task="probes", strengths=[0.5, float("nan")],
                          conditions=[ConditionSpec(name="c", kind="steer", emotion="calm")])
    with pytest.raises(ConfigError, match=r"experiment spec.strengths\[1\] is nan"):
        load_spec(spec)


@dataclasses.dataclass
class Inner:
    weights: tuple[float, ...] = ()


@dataclasses.dataclass
class Outer:
    inner: Inner = dataclasses.field(default_factory=Inner)
    grid: list[list[float]] = dataclasses.field(default_factory=list)


@pytest.mark.parametrize("data,where", [({"inner": {"weights": [1.0, float("inf")]}}, r"cfg.inner.weights\[1\] is inf"),
                                        ({"grid": [[1.0], [2.0, float("nan")]]}, r"cfg.grid\[1\]\[1\] is nan")])
def test_finiteness_reaches_nested_lists_tuples_and_tables(data, where):
    with pytest.raises(ConfigError, match=where):
        from_dict(Outer, data, where="cfg")


# ---------------------------------------------------------------------------- unreadable config files


def test_a_non_utf8_config_names_the_file(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('architecture = "topk"\n# caf\xe9\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"{path}: not UTF-8 text"):
        load_toml(path)
    cli_fails_clearly(["train", str(path)], str(path), "UTF-8")


def test_a_folder_given_as_config_says_it_is_a_folder(tmp_path):
    cli_fails_clearly(["train", str(tmp_path)], f"config file {tmp_path} is a folder, not a TOML file")


# ---------------------------------------------------------------------------- training input


def tiny_source(d=16, n=1600, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_ND = torch.randn(n, d, generator=g) * (1 + torch.rand(n, 1, generator=g))
    return T.TensorSource(x_ND[: n * 9 // 10], x_ND[n * 9 // 10:], chunk_tokens=400)


def tiny_cfg(out, sae=None, **kw):
    """A tiny training config, built in Python; `sae` defaults to a topk SAE of 32 latents, k = 2."""
    base = dict(model="tiny", hook="blocks.1.hook_resid_post", out=str(out), batch_size=64, training_tokens=64 * 12,
                lr=3e-3, checkpoint_every=5, lm_metrics=False, dead_feature_window=4, eval_tokens=100)
    base.update(kw)
    return T.TrainConfig(sae=sae or S.TopKConfig(d_sae=32, k=2), **base)


def tiny_run(out, resume=False, **kw):
    """One small deterministic training run (also the subprocess' whole job)."""
    return T.train_sae(tiny_cfg(out, **kw), activations=tiny_source(), resume=resume)


def test_k_wider_than_the_expanded_sae_fails_before_any_step(tmp_path):
    steps = []
    with pytest.raises(T.TrainError, match=r"k \(40\) must be less than d_sae \(32 = expansion_factor 2 x d_in 16\)"):
        T.train_sae(tiny_cfg(tmp_path / "sae", sae=S.TopKConfig(d_sae=0, expansion_factor=2, k=40)), activations=tiny_source(),
                    progress=steps.append)
    assert steps == [] and T.list_checkpoints(tmp_path / "sae") == []


def test_k_wider_than_d_sae_is_refused_at_load(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text("d_sae = 16\nk = 32\n")
    cli_fails_clearly(["train", str(path)], str(path), "k (32.0) must be less than d_sae (16)")


def test_out_that_is_a_file_says_so(tmp_path):
    (tmp_path / "sae").write_text("not a folder")
    with pytest.raises(T.TrainError, match="is a file, not a folder"):
        tiny_run(tmp_path / "sae")


def test_out_holding_other_things_is_refused_and_left_as_it_was(tmp_path):
    """An export site (or anything) at `out`: training would save an SAE among its files."""
    site = tmp_path / "site"
    (site / "emotion").mkdir(parents=True)
    (site / "index.html").write_text("<html>")
    (site / ".saekit-browse-export").write_text("[]")
    before = sorted(p.relative_to(site).as_posix() for p in site.rglob("*"))
    steps = []
    with pytest.raises(T.TrainError, match=r"holds files that are not an SAE's \(emotion, index.html\)"):
        T.train_sae(tiny_cfg(site), activations=tiny_source(), progress=steps.append)
    assert steps == [] and sorted(p.relative_to(site).as_posix() for p in site.rglob("*")) == before
    finished = tiny_run(tmp_path / "sae")
    assert tiny_run(finished, resume=True) == finished   # an SAE folder of saekit's own is still resumable


def test_all_zero_activations_fail_the_norm_estimate_with_a_hint(tmp_path):
    zeros = T.TensorSource(torch.zeros(500, 16), torch.zeros(50, 16))
    with pytest.raises(T.TrainError, match="mean norm is 0.0: they hold NaN/inf or are all zero; check the harvest"):
        T.train_sae(tiny_cfg(tmp_path / "sae", normalize_activations="expected_average_only_in"), activations=zeros)


def test_an_exploding_loss_says_what_to_check(tmp_path):
    class Exploding:
        d_in = 16

        def batches(self, batch_size, seed):
            for i, b in enumerate(tiny_source().batches(batch_size, seed)):
                yield b * (1e4 if i >= 3 else 1)

    with pytest.raises(T.TrainingDiverged, match="exploded.*Check the activations' scale"):
        T.train_sae(tiny_cfg(tmp_path / "sae"), activations=Exploding())


# ---------------------------------------------------------------------------- damaged checkpoints


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def killed_at_step(out, step, **kw):
    class Killed(Exception):
        pass

    def die(report):
        if report.step == step:
            raise Killed

    with pytest.raises(Killed):
        T.train_sae(tiny_cfg(out, **kw), activations=tiny_source(), progress=die)


def test_resume_skips_a_truncated_checkpoint_and_ends_at_the_uninterrupted_weights(tmp_path, reference):
    out = tmp_path / "sae"
    killed_at_step(out, 11)
    ckpts = T.list_checkpoints(out)
    assert [p.name for p in ckpts] == ["step-00000005", "step-00000010"]
    truncate(ckpts[-1] / T.CKPT_TENSORS)
    with pytest.warns(UserWarning, match=r"step-00000010 cannot be read .*resuming from the older .*step-00000005"):
        tiny_run(out, resume=True)
    assert_same_weights(out, reference)


def test_resume_with_every_checkpoint_damaged_names_them(tmp_path):
    out = tmp_path / "sae"
    killed_at_step(out, 11)
    for p in T.list_checkpoints(out):
        (p / T.CKPT_STATE).write_text('{"step": ')
    with pytest.raises(T.TrainError, match=r"no checkpoint can be read: .*step-00000010.*step-00000005"):
        tiny_run(out, resume=True)
    assert len(T.list_checkpoints(out)) == 2  # nothing deleted


# ---------------------------------------------------------------------------- damaged SAE folders


def fresh_sae(seed=0):
    torch.manual_seed(seed)
    return S.build_training_sae("topk", 16, 32, k=2)


@pytest.fixture
def sae_folder(tmp_path):
    return S.save_sae(fresh_sae(), tmp_path / "sae")


def test_nan_weights_are_refused_naming_the_file_and_tensor(sae_folder):
    tensors = load_file(str(sae_folder / WEIGHTS))
    tensors["W_dec"][3, 1] = float("nan")
    save_file(tensors, str(sae_folder / WEIGHTS))
    with pytest.raises(S.SAEError, match=rf"{sae_folder / WEIGHTS}: tensor 'W_dec' holds 1 NaN/inf values"):
        S.load_sae(sae_folder)
    cli_fails_clearly(["sae", "load", str(sae_folder)], "'W_dec'", WEIGHTS)


def test_truncated_weights_name_the_file(sae_folder):
    truncate(sae_folder / WEIGHTS)
    with pytest.raises(S.SAEError, match=rf"{sae_folder / WEIGHTS} is truncated or corrupt"):
        S.load_sae(sae_folder)
    cli_fails_clearly(["sae", "load", str(sae_folder)], "truncated or corrupt")


def test_truncated_sparsity_names_the_file(tmp_path):
    folder = S.save_sae(fresh_sae(), tmp_path / "sae", log_sparsity_F=torch.zeros(32))
    truncate(folder / "sparsity.safetensors")
    with pytest.raises(S.SAEError, match=rf"{folder / 'sparsity.safetensors'} is truncated or corrupt"):
        S.load_sae(folder)


def test_pickle_only_folder_is_refused_without_unpickling(tmp_path, monkeypatch):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "cfg.json").write_text("{}")
    (folder / "ae.pt").write_bytes(b"\x80\x04not really a pickle")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(S.SAEError, match=r"pickled files \['ae.pt'\].*reads only safetensors"):
        S.load_sae(folder)
    cli_fails_clearly(["sae", "load", str(folder)], "ae.pt", "only safetensors")


@pytest.mark.parametrize("make,message", [(lambda p: None, "does not exist"),
                                          (lambda p: p.write_text("x"), "is a file, not an SAE folder")])
def test_missing_folder_or_a_file_instead_is_a_clear_error(tmp_path, make, message):
    path = tmp_path / "sae"
    make(path)
    with pytest.raises(S.SAEError, match=message):
        S.load_sae(path)
    cli_fails_clearly(["sae", "load", str(path)], message)


# ---------------------------------------------------------------------------- kills inside save_sae


class Killed(BaseException):
    """Stands for kill -9: nothing after the fault point runs (save_sae has no cleanup handlers)."""


def kill_at(monkeypatch, point):
    def fault(name):
        if name == point:
            raise Killed(name)
    monkeypatch.setattr(saekit.sae.storage, "fault_point", fault)


def weights_of(folder):
    return {k: v.clone() for k, v in load_file(str(Path(folder) / WEIGHTS)).items()}


def assert_same_weights(folder, expected):
    got = load_file(str(Path(folder) / WEIGHTS))
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6)


def hidden(folder):
    return sorted(p.name for p in Path(folder).parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("point", SAVE_POINTS)
def test_a_save_killed_anywhere_leaves_one_complete_sae_and_every_other_file(tmp_path, monkeypatch, point):
    folder = tmp_path / "sae"
    old = weights_of(S.save_sae(fresh_sae(0), folder))
    new = weights_of(S.save_sae(fresh_sae(1), tmp_path / "expected"))
    (folder / "checkpoints" / "step-00000001").mkdir(parents=True)
    (folder / "checkpoints" / "step-00000001" / "state.json").write_text("{}")
    (folder / "metrics.json").write_text("{}")

    kill_at(monkeypatch, point)
    with pytest.raises(Killed):
        S.save_sae(fresh_sae(1), folder)
    monkeypatch.undo()
    expected = old if point in BEFORE_SWAP else new
    torch.testing.assert_close(S.load_sae(folder).sae.W_dec.detach(), expected["W_dec"])
    assert hidden(folder), "the kill left its temporary folder, and reading it must not touch it"

    S.recover_sae_folder(folder)
    assert hidden(folder) == []
    assert_same_weights(folder, expected)
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "checkpoints", "metrics.json", WEIGHTS]
    assert (folder / "checkpoints" / "step-00000001" / "state.json").exists()


def test_a_folder_recreated_after_a_kill_between_the_renames_is_merged(tmp_path, monkeypatch):
    """Someone recreates the out folder (with a file in it) before anything recovers: nothing is lost."""
    folder = tmp_path / "sae"
    S.save_sae(fresh_sae(0), folder)
    (folder / "checkpoints").mkdir()
    kill_at(monkeypatch, "save_sae.old_aside")
    with pytest.raises(Killed):
        S.save_sae(fresh_sae(1), folder)
    monkeypatch.undo()
    folder.mkdir()
    (folder / "study_key.json").write_text("{}")
    S.recover_sae_folder(folder)
    assert hidden(folder) == []
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "checkpoints", WEIGHTS, "study_key.json"]


# ---------------------------------------------------------------------------- real kills while training saves


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The weights of an uninterrupted run."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tiny_run(tmp_path_factory.mktemp("ref") / "sae")
    torch.set_num_threads(n)
    return weights_of(out)


def run_killed(out: Path, point: str) -> None:
    code = (f"import sys, torch; sys.path.insert(0, {str(TESTS)!r}); torch.set_num_threads(1); "
            f"import test_reliability_train as t; t.tiny_run({str(out)!r})")
    env = dict(os.environ, SAEKIT_FAULT=point)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 137, proc.stderr[-3000:]


@pytest.mark.slow  # a subprocess per case (kill, fresh process) or a full uncached pass: not in make test-fast
@pytest.mark.parametrize("point", SAVE_POINTS)
def test_training_killed_while_saving_the_sae_resumes_to_the_same_weights(tmp_path, reference, point):
    out = tmp_path / "sae"
    run_killed(out, point)
    if point in BEFORE_SWAP:
        with pytest.raises(S.SAEError, match="has no sae_weights.safetensors"):
            S.load_sae(out)  # a first save killed before its renames: no SAE yet, only checkpoints
    else:
        torch.testing.assert_close(S.load_sae(out).sae.W_dec.detach(), reference["W_dec"], rtol=0, atol=1e-6)
    steps = []
    T.train_sae(tiny_cfg(out), activations=tiny_source(), resume=True, progress=steps.append)
    assert steps == []  # the final checkpoint survived the kill and was found: no step is repeated
    assert T.list_checkpoints(out)[-1].name == "step-00000012"
    assert_same_weights(out, reference)
    assert hidden(out) == []
    assert T.read_metrics(out)["activations"] is not None


# ---------------------------------------------------------------------------- spec values caught at the spec check

SIDE = '''name = "t"
task = "{task}"
strengths = {strengths}
[prompts]
{prompts}
[[conditions]]
name = "c"
kind = "steer"
emotion = "calm"
'''


@pytest.mark.parametrize("task,strengths,prompts,words", [
    ("side_effects", "[0.1]", "temperature = -1.0", "temperature = -1.0"),
    ("side_effects", "[0.1]", "max_tokens = 0", "prompts.max_tokens = 0"),
    ("side_effects", "[0.1]", 'generate = [""]', "prompts.generate holds an empty string"),
    ("side_effects", "[0.1]", "generate = [\"" + "word " * 6000 + "\"]", "prompts.generate[0] has 6000 words"),
    ("probes", "[]", "", "strengths is empty"),
    ("probes", "[1e30]", "", "beyond +-1000"),
    ("probes", "[0.1]", 'words = [""]', "prompts.words holds an empty string"),
    ("probes", "[0.1]", "limit = -1", "prompts.limit = -1 is negative"),
])
def test_bad_spec_values_fail_at_the_spec_check(tmp_path, monkeypatch, task, strengths, prompts, words):
    """Refused by load_spec itself: no model is loaded (loading one here would fail the test)."""
    import saekit.experiments.runner as runner_module

    monkeypatch.setattr(runner_module, "load_model", lambda *a, **k: pytest.fail("the model was loaded"), raising=False)
    path = tmp_path / "spec.toml"
    path.write_text(SIDE.format(task=task, strengths=strengths, prompts=prompts))
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_spec(path)
    cli_fails_clearly(["experiment", "run", str(path)], words)


def test_a_prompt_beyond_the_models_context_is_refused_before_any_forward_pass(tiny_model, monkeypatch):
    """Within the word bound but past the tiny model's 1,024-token context (with the new tokens)."""
    from saekit.experiments.spec import ExperimentError
    from saekit.experiments.tasks.side_effects import SideEffectsTask

    spec = load_spec({"name": "t", "task": "side_effects", "model": "tiny", "conditions": [
        {"name": "c", "kind": "steer", "emotion": "calm"}], "prompts": {
        "generate": ["ab " * 1000], "max_prompt_tokens": 4000, "max_new_tokens": 20}})
    res = type("Res", (), {"spec": spec})()
    monkeypatch.setattr(tiny_model, "forward", lambda *a, **k: pytest.fail("a forward pass ran"))
    with pytest.raises(ExperimentError, match=r"prompts.generate\[0\] is \d+ tokens, beyond the model's context of 1024"):
        SideEffectsTask(tiny_model, res)


@pytest.mark.parametrize("extra,words", [
    ({"batch_size": 0}, "batch_size must be at least 1"), ({"batch_size": -4}, "batch_size must be at least 1"),
    ({"max_tokens": 0}, "max_tokens must be at least 1"), ({"limit": -5}, "limit must be 0 or more"),
    ({"hook": "blocks.40.hook_resid_post"}, "unknown hook 'blocks.40.hook_resid_post' for tiny (4 layers)"),
    ({"vector_hooks": ["blocks.1.hook_resid_sideways"]}, "unknown hook 'blocks.1.hook_resid_sideways'"),
])
def test_study_plan_checks_what_harvest_checks(tmp_path, extra, words):
    from test_study import write_config

    cli_fails_clearly(["study", str(write_config(tmp_path, **extra)), "--plan"], words)


def test_negative_counts_are_refused_at_load(tmp_path):
    cli_fails_clearly(["harvest", "--model", "tiny", "--hook", "blocks.1.hook_resid_post", "--limit", "-5",
                       "--out", str(tmp_path / "h")], "limit must be 0")
    assert not (tmp_path / "h").exists()
    with pytest.raises(ConfigError, match="eval_docs must be 0 or more"):
        T.train_sae(tiny_cfg(tmp_path / "sae", eval_docs=-1), activations=tiny_source())


def test_a_rank_config_files_activations_are_not_overridden_by_the_options_default(tmp_path):
    path = tmp_path / "rank.toml"
    path.write_text(f'activations = "{tmp_path / "my-harvest"}"\n')
    out = cli_fails_clearly(["rank", "--config", str(path)], str(tmp_path / "my-harvest"))
    assert "artifacts/study/activations" not in out
