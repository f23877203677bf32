"""Activations on disk survive kill -9, altered or broken files and careless input, and say what went wrong."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save
from typer.testing import CliRunner

from saekit import harvest as H
from saekit.activations import store as A
from saekit.artifacts import atomic_write_bytes, file_sha256
from saekit.cli import app

HOOK = "blocks.1.hook_resid_post"
HARVEST_TOML = (f'model = "tiny"\nhooks = ["{HOOK}"]\nlimit = 10\ndocs_per_shard = 4\nbatch_size = 4\n'
                'max_tokens = 64\nout = "acts"\n')  # 3 shards; "acts" relative, so manifests compare byte for byte
TRAIN = dict(model="tiny", hook=HOOK, architecture="topk", d_sae=96, k=3, batch_size=64, training_tokens=64 * 4,
             lr=3e-3, checkpoint_every=0, lm_metrics=False, eval_tokens=200, shuffle_buffer_tokens=256, seed=3)
runner = CliRunner()


# ---------------------------------------------------------------------------- kill -9 and umask (subprocesses)


def run_harvest(cwd: Path, fault: str = "", umask: int = 0o022) -> subprocess.CompletedProcess:
    """`saekit harvest` in its own process, as a user runs it; `fault` names a kill point (SAEKIT_FAULT)."""
    cwd.mkdir(parents=True, exist_ok=True)
    (cwd / "h.toml").write_text(HARVEST_TOML)
    env = os.environ | {"SAEKIT_FAULT": fault, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "saekit", "harvest", "--config", "h.toml"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, preexec_fn=lambda: os.umask(umask))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted harvest (umask 022)."""
    root = tmp_path_factory.mktemp("reference")
    done = run_harvest(root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "acts"


@pytest.mark.parametrize("fault", [
    "write:shard-00001.safetensors",    # shard bytes in the temporary file, not renamed
    "written:shard-00001.safetensors",  # shard renamed, the manifest not yet rewritten
    "write:manifest.json",              # the first manifest (after shard 0) half written
    "written:pooled.safetensors",       # pooled vectors written, the manifest still unfinished
])
@pytest.mark.slow  # a subprocess per case (kill, fresh process) or a full uncached pass: not in make test-fast
def test_kill_9_then_resume_gives_the_uninterrupted_result(reference, tmp_path, fault):
    killed = run_harvest(tmp_path, fault)
    assert killed.returncode == 137, killed.stderr[-3000:]
    out = tmp_path / "acts"
    with pytest.raises(H.HarvestError, match="unfinished.*rerun it with the same config"):
        H.Activations.open(out)
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else {"shards": {}}
    recorded = {e["file"]: (out / e["file"]).stat().st_mtime_ns for e in manifest["shards"].values()}
    resumed = run_harvest(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert snapshot(out) == snapshot(reference), "byte-identical, no temporaries left"
    assert {f: (out / f).stat().st_mtime_ns for f in recorded} == recorded, "recorded shards are not redone"


@pytest.mark.slow  # a subprocess per case (kill, fresh process) or a full uncached pass: not in make test-fast
def test_files_follow_the_users_umask(reference, tmp_path):
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in reference.iterdir()} == {"0o644"}
    private = run_harvest(tmp_path, umask=0o077)
    assert private.returncode == 0, private.stderr[-3000:]
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in (tmp_path / "acts").iterdir()}
    assert set(modes.values()) == {"0o600"} and len(modes) == 5, modes  # 3 shards, pooled, manifest


# ---------------------------------------------------------------------------- altered and broken files


def harvest_in(out: Path, tiny_model, small_records) -> Path:
    """A small in-process harvest (4 shards), or its resume."""
    cfg = H.HarvestConfig(model="tiny", hooks=[HOOK], out=str(out), batch_size=4, docs_per_shard=4, max_tokens=64)
    return H.harvest(cfg, model=tiny_model, records=small_records)


@pytest.fixture
def acts(tiny_model, small_records, tmp_path) -> Path:
    return harvest_in(tmp_path / "acts", tiny_model, small_records)


def alter(path: Path) -> None:
    """Change the last 4 bytes (the last stored value) in place: same size, other contents."""
    data = bytearray(path.read_bytes())
    data[-4:] = bytes(x ^ 0x55 for x in data[-4:])
    path.write_bytes(bytes(data))


def rewrite_shard(out: Path, name: str, change) -> None:
    """Store changed tensors in a shard and record their true size and sha256, as if harvested so."""
    manifest = json.loads((out / "manifest.json").read_text())
    entry = next(e for e in manifest["shards"].values() if e["file"] == name)
    tensors = H.Activations.open(out).read(entry)
    change(tensors)
    atomic_write_bytes(out / name, save(tensors))
    entry["bytes"], entry["sha256"] = (out / name).stat().st_size, file_sha256(out / name)
    (out / "manifest.json").write_text(json.dumps(manifest))


def train_cli(tmp_path: Path, activations: Path):
    config = tmp_path / "train.toml"
    config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in TRAIN.items()))
    return runner.invoke(app, ["train", str(config), "--activations", str(activations), "--out", str(tmp_path / "sae")])


def assert_clear_error(result, *fragments: str) -> None:
    """Exit code 2 and a message, not a traceback."""
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output and "error:" in result.output
    text = " ".join(result.output.split())  # rich wraps long paths
    for fragment in fragments:
        assert fragment in text, (fragment, text)


def test_altered_shard_is_refused_by_readers_and_redone_by_resume(acts, tiny_model, small_records, tmp_path):
    good = (acts / "shard-00001.safetensors").read_bytes()
    alter(acts / "shard-00001.safetensors")
    folder = H.Activations.open(acts)
    assert [p.split(":")[0] for p in folder.verify()] == [str(acts / "shard-00001.safetensors")]
    with pytest.raises(H.HarvestError, match=r"shard-00001.safetensors is corrupt: .*sha256.*rerun the same harvest"):
        folder.tokens(HOOK)
    assert_clear_error(train_cli(tmp_path, acts), "shard-00001.safetensors is corrupt", "rerun the same harvest")
    others = {p.name: p.stat().st_mtime_ns for p in acts.glob("shard-*") if p.name != "shard-00001.safetensors"}
    harvest_in(acts, tiny_model, small_records)
    assert (acts / "shard-00001.safetensors").read_bytes() == good
    assert {n: (acts / n).stat().st_mtime_ns for n in others} == others
    assert H.Activations.open(acts).verify() == []


def test_altered_pooled_vectors_are_refused(acts):
    alter(acts / "pooled.safetensors")
    with pytest.raises(H.HarvestError, match="pooled.safetensors is corrupt: .*sha256"):
        H.Activations.open(acts).pooled(HOOK)


def test_a_shard_is_hashed_once_per_open_folder(acts, monkeypatch):
    hashed = []
    monkeypatch.setattr(A, "file_sha256", lambda p: hashed.append(p.name) or file_sha256(p))
    folder = H.Activations.open(acts)
    folder.tokens(HOOK), folder.tokens(HOOK)
    assert sorted(hashed) == sorted(e["file"] for e in folder.manifest["shards"].values())


def test_truncated_shard_is_a_clear_error(acts, tmp_path):
    shard = acts / "shard-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:50])  # the header cut
    assert_clear_error(train_cli(tmp_path, acts), "shard-00002.safetensors is corrupt")


@pytest.mark.parametrize("value", [1e30, float("nan"), float("-inf")])
def test_values_out_of_range_name_the_shard(acts, tmp_path, value):
    def poison(t):
        t[HOOK][3, 5] = value

    rewrite_shard(acts, "shard-00000.safetensors", poison)
    with pytest.raises(H.HarvestError, match=rf"shard-00000.safetensors: '{HOOK}' holds values .*out of the range"):
        H.Activations.open(acts).tokens(HOOK)
    assert_clear_error(train_cli(tmp_path, acts), "shard-00000.safetensors", "out of the range")


def test_model_overflow_is_refused_before_a_shard_is_written(tiny_model, small_records, tmp_path, monkeypatch):
    real = H.forward_capture

    def overflowing(*args, **kw):
        acts, mask = real(*args, **kw)
        return {h: a * float("inf") for h, a in acts.items()}, mask

    monkeypatch.setattr(H, "forward_capture", overflowing)
    with pytest.raises(H.HarvestError, match="activations for shard 0 .* out of range.*try dtype float32"):
        harvest_in(tmp_path / "acts", tiny_model, small_records)
    assert not list((tmp_path / "acts").glob("*shard*"))


def test_edited_d_model_names_the_manifest_and_both_widths(acts, tmp_path):
    manifest = json.loads((acts / "manifest.json").read_text())
    manifest["d_model"] = 65
    (acts / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(H.HarvestError, match=r"manifest.json says d_model 65 .* \(d_model 64\)"):
        H.Activations.open(acts)
    assert_clear_error(train_cli(tmp_path, acts), "manifest.json says d_model 65", "(d_model 64)")


def test_broken_manifests_are_named(acts, tiny_model, small_records):
    manifest = acts / "manifest.json"
    good = manifest.read_text()
    manifest.write_text(json.dumps({"complete": True}))
    with pytest.raises(H.HarvestError, match="manifest.json is not a saekit harvest manifest"):
        H.Activations.open(acts)
    manifest.write_text(good)
    (acts / ".manifest.rank1.json").write_text("{half")
    with pytest.raises(H.HarvestError, match=r"\.manifest\.rank1\.json is corrupt .*delete it and rerun"):
        harvest_in(acts, tiny_model, small_records)


def test_unfinished_harvest_of_another_config_is_not_overwritten(acts, tiny_model, small_records):
    part = json.loads((acts / "manifest.json").read_text())
    part["identity"]["pool_offset"] = 7
    (acts / ".manifest.rank1.json").write_text(json.dumps(part))
    (acts / "manifest.json").unlink()
    with pytest.raises(H.HarvestError, match="unfinished"):
        H.Activations.open(acts)
    before = snapshot(acts)
    with pytest.raises(H.HarvestError, match="unfinished harvest with a different config"):
        harvest_in(acts, tiny_model, small_records)
    assert snapshot(acts) == before


def test_out_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "taken").write_text("mine")
    result = runner.invoke(app, ["harvest", "--model", "tiny", "--hook", HOOK, "--out", str(tmp_path / "taken")])
    assert_clear_error(result, "taken exists and is not a folder")
    assert (tmp_path / "taken").read_text() == "mine"
