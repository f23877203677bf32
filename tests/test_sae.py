import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from saekit import metrics as M
from saekit import sae as S

HOOK = "blocks.1.hook_resid_post"


pytestmark = pytest.mark.usefixtures("one_thread")


def trained_like(arch, d_in=64, d_sae=128, hook=HOOK, seed=0):
    """A training SAE with non-trivial weights (biases, decoder norms, thresholds) without training."""
    torch.manual_seed(seed)
    sae = S.build_training_sae(arch, d_in, d_sae, k=8, metadata={"model_name": "tiny", "hook_name": hook})
    with torch.no_grad():
        sae.b_dec.normal_(std=0.1)
        sae.b_enc.normal_(std=0.05)
        sae.W_dec.mul_(torch.rand(d_sae, 1) * 5 + 0.5)
        if arch == "batchtopk":
            sae.topk_threshold.fill_(0.05)
    return sae


@pytest.mark.slow  # a subprocess per case (kill, fresh process) or a full uncached pass: not in make test-fast
@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "standard"])
def test_saved_sae_loads_in_a_fresh_sae_lens_process_with_the_same_outputs(arch, tmp_path):
    sae = trained_like(arch)
    folder = S.save_sae(sae, tmp_path / "sae", log_sparsity_F=torch.full((128,), -2.0))
    x = torch.randn(20, 64)
    expected = S.load_sae(folder).sae(x)
    if arch in ("topk", "standard"):  # the inference SAE computes what the training SAE computed
        torch.testing.assert_close(expected, sae.decode(sae.encode(x)), rtol=1e-4, atol=1e-5)
    save_file({"x": x, "y": expected.detach().contiguous()}, str(tmp_path / "io.safetensors"))
    script = (
        "import sys, torch\n"
        "from safetensors.torch import load_file\n"
        "from sae_lens import SAE\n"
        f"sae = SAE.load_from_disk({str(folder)!r})\n"
        f"io = load_file({str(tmp_path / 'io.safetensors')!r})\n"
        "torch.testing.assert_close(sae(io['x']), io['y'], rtol=1e-5, atol=1e-6)\n"
        "print(sae.cfg.architecture(), sae.cfg.metadata.hook_name, sae.cfg.d_sae)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    expected_arch = "jumprelu" if arch == "batchtopk" else arch
    assert done.stdout.split() == [expected_arch, HOOK, "128"]
    assert load_file(str(folder / "sparsity.safetensors"))["sparsity"].shape == (128,)


def test_batchtopk_saves_its_threshold_as_jumprelu(tmp_path):
    sae = trained_like("batchtopk")
    loaded = S.load_sae(S.save_sae(sae, tmp_path / "sae")).sae
    x = torch.randn(30, 64)
    feats = loaded.encode(x)
    active = feats[feats != 0]
    assert active.numel() > 0
    pre = (x - loaded.b_dec) @ loaded.W_enc + loaded.b_enc
    assert ((pre > 0.05 - 1e-6) == (feats != 0)).all()


def test_load_checks_d_in_against_the_model(tiny_model, tmp_path):
    folder = S.save_sae(trained_like("topk", d_in=32), tmp_path / "sae")
    with pytest.raises(S.SAEError, match="d_in is 32 but the width of blocks.1.hook_resid_post is 64"):
        S.load_sae(folder, model=tiny_model)


def test_load_checks_the_hook_exists_in_the_model(tiny_model, tmp_path):
    folder = S.save_sae(trained_like("topk", hook="blocks.9.hook_resid_post"), tmp_path / "sae")
    with pytest.raises(S.SAEError, match="blocks.9.hook_resid_post"):
        S.load_sae(folder, model=tiny_model)
    ok = S.load_sae(S.save_sae(trained_like("topk"), tmp_path / "ok"), model=tiny_model)
    assert ok.hook == HOOK and S.describe(ok)["d_in"] == 64


def test_folder_with_pickled_weights_but_no_safetensors_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "sae"
    folder.mkdir()
    cfg = trained_like("topk").cfg.get_inference_sae_cfg_dict()
    (folder / "cfg.json").write_text(json.dumps(cfg))
    (folder / "sae_weights.pt").write_bytes(b"\x80\x04not really a pickle")

    def no_unpickling(*a, **k):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(S.SAEError, match=r"pickled files \['sae_weights.pt'\]"):
        S.load_sae(folder)


def test_missing_folder_and_unknown_release_are_clear_errors(tmp_path):
    with pytest.raises(S.SAEError, match="does not exist"):
        S.load_sae(tmp_path / "nowhere")
    with pytest.raises(S.SAEError, match="neither an SAE folder nor a sae-lens release"):
        S.load_sae("no-such-release", "x")


def test_registry_refuses_pickled_releases_and_needs_the_hub(monkeypatch):
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    pickled = next(r for r, info in directory.items() if info.conversion_func == "dictionary_learning_1")
    some_id = next(iter(directory[pickled].saes_map))
    with pytest.raises(S.SAEError, match="pickled"):
        S.load_sae(pickled, some_id)
    safe = next(r for r, info in directory.items() if info.conversion_func in (None, "sae_lens"))
    with pytest.raises(S.SAEError, match="needs an SAE id"):
        S.load_sae(safe)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(S.SAEError, match="HF_HUB_OFFLINE"):
        S.load_sae(safe, next(iter(directory[safe].saes_map)))


# ---------------------------------------------------------------------------- metrics


def identity_sae(tmp_path, d=64):
    """A standard SAE with latents +e_i and -e_i: it reconstructs every input exactly."""
    sae = S.build_training_sae("standard", d, 2 * d, metadata={"hook_name": HOOK})
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return S.load_sae(S.save_sae(sae, tmp_path / "identity")).sae


def test_activation_metrics_of_an_exact_sae(tmp_path):
    sae = identity_sae(tmp_path, d=8)
    x = torch.randn(500, 8)
    x[:, 0] = x[:, 0].abs()  # latent 8 (-e_0) never fires
    m = M.activation_metrics(sae, x, batch_size=64, dense_threshold=0.6)
    assert m["explained_variance"] == pytest.approx(1.0, abs=1e-6) and m["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert m["l0"] == pytest.approx(float((x != 0).sum(-1).float().mean()))
    assert m["dead_fraction"] == pytest.approx(1 / 16) and m["dead_window_tokens"] == 500
    assert m["dense_fraction"] == pytest.approx(1 / 16)  # latent 0 fires on every token


def test_activation_metrics_of_a_zero_sae_explain_nothing(tmp_path):
    sae = identity_sae(tmp_path, d=8)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.copy_(torch.ones(8))
    x = torch.randn(400, 8) + 1
    m = M.activation_metrics(sae, x)
    assert m["fvu"] == pytest.approx(1.0, abs=0.05)


def test_lm_metrics_of_an_exact_sae_recover_all_loss(tiny_model, tmp_path):
    sae = identity_sae(tmp_path)
    texts = ["the cat sat on a mat while rain fell", "small boats drifted home over quiet hills"]
    m = M.lm_metrics(tiny_model, sae, HOOK, texts)
    assert m["loss_sae"] == pytest.approx(m["loss_clean"], abs=1e-4)
    assert m["kl_sae"] == pytest.approx(0, abs=1e-5) and m["loss_recovered"] == pytest.approx(1, abs=1e-3)
    assert m["loss_zero_ablation"] != pytest.approx(m["loss_clean"], abs=1e-3)
    with torch.no_grad():
        sae.W_dec.mul_(0.5)  # a worse SAE moves the loss and the KL
    worse = M.lm_metrics(tiny_model, sae, HOOK, texts)
    assert worse["kl_sae"] > 1e-4 and worse["loss_sae_with_error"] == pytest.approx(m["loss_clean"], abs=1e-4)
