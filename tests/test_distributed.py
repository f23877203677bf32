"""Two processes under torchrun (gloo, CPU) give the results of one: harvest, resume, training."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saekit import distributed as D
from saekit import harvest as H
from saekit import train as T

pytestmark = pytest.mark.slow  # torchrun processes: left out by `make test-fast`

HOOK = "blocks.1.hook_resid_post"
HARVEST = dict(model="tiny", hooks=[HOOK], corpus="shipped", limit=10, docs_per_shard=2, batch_size=2,
               max_tokens=96)
TRAIN = dict(model="tiny", hook=HOOK, sae={"architecture": "topk", "d_sae": 96, "k": 3}, batch_size=64,
             training_tokens=64 * 16, lr=3e-3, checkpoint_every=5, keep_checkpoints=5, lm_metrics=False,
             dead_feature_window=4, eval_tokens=400, shuffle_buffer_tokens=512, seed=3)


def toml(path: Path, fields: dict) -> Path:
    """A TOML file of scalar fields and one-level tables (dict values)."""
    top = [(k, v) for k, v in fields.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in fields.items() if isinstance(v, dict)]
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in top)
                    + "".join(f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in t.items())
                              for name, t in tables))
    return path


def torchrun(*args, nproc: int = 2, check: bool = True, fault: str = "") -> subprocess.CompletedProcess:
    """`torchrun --standalone` (a free rendezvous port) with 2 CPU processes; `fault`: SAEKIT_FAULT for them."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "SAEKIT_FAULT": fault}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"{cmd} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return done


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A 1-process reference harvest, and the 2-process harvest's config file."""
    root = tmp_path_factory.mktemp("dist")
    ref = H.harvest(H.HarvestConfig(**HARVEST, out=str(root / "ref")))
    return root, ref, toml(root / "harvest.toml", HARVEST)


def same_harvest(a: Path, b: Path) -> None:
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    assert ma["documents"] == mb["documents"] and ma["identity"] == mb["identity"]
    assert mb["complete"] and sorted(mb["shards"], key=int) == [str(s) for s in range(5)]
    assert [e["sha256"] for _, e in sorted(ma["shards"].items())] == [e["sha256"] for _, e in sorted(mb["shards"].items())]
    assert not [p.name for p in b.iterdir() if p.name.startswith(".")], "parts and temporaries are removed"
    acts_a, acts_b = H.Activations.open(a), H.Activations.open(b)
    assert acts_b.verify() == []
    torch.testing.assert_close(acts_b.tokens(HOOK), acts_a.tokens(HOOK), atol=0, rtol=0)
    torch.testing.assert_close(acts_b.pooled(HOOK), acts_a.pooled(HOOK), atol=0, rtol=0)


def test_two_process_harvest_equals_one_process(work):
    root, ref, config = work
    torchrun("-m", "saekit", "harvest", "--config", str(config), "--out", str(root / "two"))
    same_harvest(ref, root / "two")


def test_shards_of_a_dead_rank_are_resumed(work):
    """Rank 1 dies (kill -9) after its second shard is renamed but before any manifest.json exists."""
    root, ref, config = work
    out = root / "killed"
    killed = torchrun("-m", "saekit", "harvest", "--config", str(config), "--out", str(out), check=False,
                      fault="written:shard-00003.safetensors")  # rank r does shards s % 2 == r
    assert killed.returncode != 0
    first = out / "shard-00001.safetensors"
    part = json.loads((out / ".manifest.rank1.json").read_text())
    assert first.exists() and (out / "shard-00003.safetensors").exists()
    assert "1" in part["shards"] and "3" not in part["shards"], "shard 3 was renamed but not recorded"
    assert not (out / "manifest.json").exists()
    with pytest.raises(H.HarvestError, match="unfinished"):
        H.Activations.open(out)
    mtime = first.stat().st_mtime_ns
    torchrun("-m", "saekit", "harvest", "--config", str(config), "--out", str(out))
    assert first.stat().st_mtime_ns == mtime, "a finished shard is not harvested again"
    same_harvest(ref, out)


def test_folder_without_final_manifest_resumes_from_part_files(work):
    """Killed while writing the final manifest: the parts' sha256 decide what is kept; an altered shard is redone."""
    root, ref, config = work
    out = root / "no-manifest"
    killed = torchrun("-m", "saekit", "harvest", "--config", str(config), "--out", str(out), check=False,
                      fault="write:manifest.json")
    assert killed.returncode != 0 and not (out / "manifest.json").exists()
    assert {".manifest.rank0.json", ".manifest.rank1.json", "pooled.safetensors"} <= set(os.listdir(out))
    with pytest.raises(H.HarvestError, match="unfinished"):
        H.Activations.open(out)
    altered = out / "shard-00002.safetensors"
    data = bytearray(altered.read_bytes())
    data[-4:] = bytes(4)  # the same size, other values
    altered.write_bytes(bytes(data))
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    assert H.harvest(H.HarvestConfig(**HARVEST, out=str(out))) == out  # one process resumes two
    changed = sorted(p.name for p in out.glob("shard-*") if p.stat().st_mtime_ns != mtimes[p.name])
    assert changed == ["shard-00002.safetensors"]
    same_harvest(ref, out)


def test_two_process_training_matches_one_process(work):
    root, ref, _ = work
    config = toml(root / "train.toml", TRAIN | {"activations": str(ref)})
    one = T.train_sae(T.load_train_config(config, {"out": str(root / "sae1")}))
    torchrun("-m", "saekit", "train", str(config), "--out", str(root / "sae2"))
    two = root / "sae2"
    w1, w2 = (load_file(str(p / "sae_weights.safetensors")) for p in (one, two))
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=2e-4, rtol=1e-3)
    m1, m2 = (T.read_metrics(p) for p in (one, two))
    for k, v in m1["activations"].items():
        assert m2["activations"][k] == pytest.approx(v, rel=1e-3, abs=1e-4), k
    assert m2["training_window"] == pytest.approx(m1["training_window"])
    # checkpoints: the same steps, and the ranks agreed on the firing statistics (so on dead latents)
    c1, c2 = T.list_checkpoints(one), T.list_checkpoints(two)
    assert [p.name for p in c1] == [p.name for p in c2] and len(c2) == 4
    for a, b in zip(c1, c2):
        ta, tb = load_file(str(a / T.CKPT_TENSORS)), load_file(str(b / T.CKPT_TENSORS))
        assert torch.equal(ta["trainer.steps_since_fired"], tb["trainer.steps_since_fired"])
        assert torch.equal(ta["trainer.window_fired"], tb["trainer.window_fired"])
        sa, sb = (json.loads((p / T.CKPT_STATE).read_text()) for p in (a, b))
        assert (sa["step"], sa["tokens"], sa["window_tokens"]) == (sb["step"], sb["tokens"], sb["window_tokens"])
    r1, r2 = (json.loads((p / T.TRAIN_RECORD).read_text()) for p in (one, two))
    assert (r1["steps"], r1["tokens"]) == (r2["steps"], r2["tokens"])


def test_one_process_helpers_are_no_ops():
    x = torch.arange(6.0).reshape(3, 2)
    D.setup("cpu")
    assert (D.rank(), D.world(), D.is_main()) == (0, 1, True)
    assert D.local_rows(x) is x and torch.equal(D.all_reduce_(x.clone(), "mean"), x)
    assert D.backend_for("cuda:1") == "nccl" and D.backend_for("cpu") == "gloo"


def test_the_study_runs_under_torchrun_unchanged(tmp_path):
    """`torchrun ... saekit study CONFIG`: both processes harvest and train, rank 0 alone ranks, runs the
    experiments and writes the report; a second launch skips every step."""
    from test_study import write_config

    from saekit.db import read_only_query
    from saekit.study import load_study_config

    config = write_config(tmp_path)
    first = torchrun("-m", "saekit", "study", str(config))
    steps = json.loads((tmp_path / "study" / "steps.json").read_text())
    assert set(steps) == {"harvest activations", "train SAE", "rank features and vectors", "experiment tiny_probes",
                          "write report"}
    assert {name: s["processes"] for name, s in steps.items()} == dict.fromkeys(steps, 2)
    manifest = json.loads((tmp_path / "study" / "activations" / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["documents"]) == load_study_config(config).limit
    assert (tmp_path / "study" / "report.html").is_file()
    assert first.stdout.count("study finished") == 1, "only rank 0 prints the summary"
    db = tmp_path / "study.duckdb"
    assert read_only_query("SELECT count(*) AS n FROM feature_emotion_stats", db).to_pylist()[0]["n"] > 0
    names = read_only_query("SELECT name FROM experiments", db).to_pylist()
    assert names == [{"name": "tiny_probes"}], "the experiment ran once, on rank 0"
    again = torchrun("-m", "saekit", "study", str(config))
    assert again.returncode == 0 and json.loads((tmp_path / "study" / "steps.json").read_text()) == steps
