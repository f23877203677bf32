
import re
from pathlib import Path

import pytest
import torch

from saekit import model as M


def test_tiny_model_has_transformer_lens_hooks(tiny_model):
    hooks = tiny_model.hook_dict
    for layer in range(M.n_layers(tiny_model)):
        assert f"blocks.{layer}.hook_resid_post" in hooks
        assert f"blocks.{layer}.hook_resid_pre" in hooks
    assert M.n_layers(tiny_model) == 4 and M.d_model(tiny_model) == 64


def test_bridge_logits_equal_plain_transformers(tiny_model):
    hf = M.hf_model_of(tiny_model)
    tokens = torch.randint(0, 1000, (2, 12))
    with torch.no_grad():
        ours = tiny_model(tokens)
        ref = hf(tokens).logits
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_offline_hub_name_fails_at_once_and_names_local_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(M.ModelLoadError, match="HF_HUB_OFFLINE.*local Hugging Face folder"):
        M.load_model("HuggingFaceTB/SmolLM2-360M-Instruct")


def test_unreachable_hub_fails_with_clear_message(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(M.catalogue, "HUB_HOST", ("hub.invalid", 443))
    with pytest.raises(M.ModelLoadError, match="unreachable.*local Hugging Face folder"):
        M.resolve_model("someone/some-model")


def test_reachable_hub_name_is_passed_through(monkeypatch):
    monkeypatch.setattr(M.loading, "hub_reachable", lambda timeout=3.0: True)
    assert M.resolve_model("someone/some-model") == "someone/some-model"


def test_local_folder_without_safetensors_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(M.ModelLoadError, match="no \\*.safetensors"):
        M.load_model(tmp_path)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(M.ModelLoadError, match="does not exist"):
        M.load_model(tmp_path / "nope")


def test_local_folder_loads_like_any_model(tiny_model):
    folder = M.tiny_model_folder()
    again = M.load_model(str(folder))
    tokens = torch.randint(0, 1000, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(again(tokens), tiny_model(tokens))


def test_chat_format_has_no_injected_system_prompt(tiny_model):
    text = M.format_chat(tiny_model.tokenizer, [{"role": "user", "content": "I lost my dog today."}])
    assert text == "<|im_start|>user\nI lost my dog today.<|im_end|>\n<|im_start|>assistant\n"
    assert "SmolLM" not in text


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="unknown dtype"):
        M.parse_dtype("float8")


def test_bridge_tokenises_like_the_models_own_tokenizer(tiny_model):
    _, tok = M.load_hf("tiny")
    text = M.format_chat(tok, [{"role": "user", "content": "hello"}])
    assert tiny_model.tokenizer(text).input_ids == tok(text).input_ids
    assert tiny_model.tokenizer(text).input_ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert tiny_model.tokenizer(text).input_ids[1] != tok.convert_tokens_to_ids("<|im_start|>")


# ---------------------------------------------------------------------------- one model object


def test_lm_reads_and_edits_a_bridge_and_a_plain_model_alike(tiny_model):
    hf, tok = M.load_hf("tiny")
    bridge, plain = M.LM.of(tiny_model), M.LM.of(hf, tok)
    assert M.LM.of(bridge) is bridge
    assert (plain.n_layers, plain.d_model, plain.dtype) == (bridge.n_layers, bridge.d_model, bridge.dtype)
    assert set(plain.hook_names()) <= set(bridge.hook_names())
    assert plain.tokenizer is tok
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"]
    seqs = [tok("I lost my dog today.").input_ids, tok("hello").input_ids]
    for lm in (bridge, plain):
        acts, mask_BT = lm.capture_padded(seqs, hooks, M.pad_token_id(tok))
        want, _ = bridge.capture_padded(seqs, hooks, M.pad_token_id(tok))
        for h in hooks:
            torch.testing.assert_close(acts[h][mask_BT], want[h][mask_BT], atol=1e-4, rtol=1e-4)
        with lm.hooks([("blocks.0.hook_resid_post", lambda act, hook: act * 0)]):
            edited, _ = lm.capture_padded(seqs, ["blocks.1.hook_resid_pre"], 0)
        assert not edited["blocks.1.hook_resid_pre"].any()
        again, _ = lm.capture_padded(seqs, ["blocks.1.hook_resid_pre"], 0)
        assert again["blocks.1.hook_resid_pre"].any()   # the edit is gone with its scope
    assert bridge.unknown_hooks(hooks) is None
    assert "blocks.9.hook_resid_post" in bridge.unknown_hooks(["blocks.9.hook_resid_post"])
    assert "need a model from saekit.load_model" in plain.unknown_hooks(["hook_embed"])


def test_no_module_outside_the_model_package_asks_which_kind_of_model_it_holds():
    root = Path(M.__file__).parent.parent
    asks = re.compile(r"\b(is_bridge|hf_model_of|plain_model)\b|\.original_model\b|\.hook_dict\b")
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if "model" not in p.relative_to(root).parts[:1] and asks.search(p.read_text())]
    assert offenders == []
