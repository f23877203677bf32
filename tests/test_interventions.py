"""Interventions on the tiny model with real sae-lens SAEs: splice, ablate, clamp, scale, steer."""

import pytest
import torch

from saekit.interventions import Ablate, Clamp, InterventionError, Scale, Splice, Steer, edit_features, mean_resid_norm, patched
from saekit.sae import build_training_sae, load_sae, save_sae

HOOK = "blocks.2.hook_resid_post"


def make_sae(tmp_path, architecture="topk", normalize="none", hook=HOOK, d_sae=128, seed=0):
    torch.manual_seed(seed)
    sae = build_training_sae(architecture, 64, d_sae, k=8, normalize_activations=normalize,
                             metadata={"hook_name": hook, "model_name": "tiny"})
    with torch.no_grad():  # a trained-looking scale: decoder rows of norm ~1, encoder matched
        sae.W_dec.mul_(10)
    return load_sae(save_sae(sae, tmp_path / f"sae-{architecture}-{normalize}-{hook}")).sae


@pytest.fixture(scope="module")
def tokens():
    torch.manual_seed(1)
    return torch.randint(100, 5000, (2, 12))


def clean_run(model, tokens):
    seen = {}

    def grab(act, hook):
        seen["x"] = act.detach().clone()
        return act

    logits = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, grab)])
    return logits.detach(), seen["x"]


def replaced_run(model, tokens, new_BTD):
    return model.run_with_hooks(tokens, fwd_hooks=[(HOOK, lambda act, hook: new_BTD)]).detach()


@pytest.mark.parametrize("normalize", ["none", "layer_norm"])
def test_splice_without_edits_equals_clean_model(tiny_model, tokens, tmp_path, normalize):
    sae = make_sae(tmp_path, normalize=normalize)
    clean, x = clean_run(tiny_model, tokens)
    # the SAE alone is far from the clean activation: the error term is what keeps the output exact
    with torch.no_grad():
        recon = sae.decode(sae.encode(x))
    assert (recon - x).norm() / x.norm() > 0.05
    with patched(tiny_model, Splice(sae)):
        spliced = tiny_model(tokens).detach()
    torch.testing.assert_close(spliced, clean, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("normalize", ["none", "layer_norm"])
def test_ablation_changes_logits_exactly_as_decode_edited_plus_error(tiny_model, tokens, tmp_path, normalize):
    sae = make_sae(tmp_path, normalize=normalize)
    clean, x = clean_run(tiny_model, tokens)
    with torch.no_grad():
        feats = sae.encode(x)
        f = int(feats.sum((0, 1)).argmax())  # the most active feature
        assert feats[..., f].max() > 0
        edited = sae.decode(edit_features(feats, [Ablate([f])]))
        error = x - sae.decode(sae.encode(x))
        expected_acts = edited + error
    expected = replaced_run(tiny_model, tokens, expected_acts)
    with patched(tiny_model, Splice(sae, [Ablate([f])])):
        got = tiny_model(tokens).detach()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert (got - clean).abs().max() > 1e-3  # the ablation did something


def test_clamp_and_scale_edit_only_the_chosen_features(tiny_model, tokens, tmp_path):
    sae = make_sae(tmp_path)
    _, x = clean_run(tiny_model, tokens)
    with torch.no_grad():
        feats = sae.encode(x)
        out = Splice(sae, [Clamp([3, 7], [5.0, -2.0])])(x)
        want = x + (5.0 - feats[..., 3:4]) * sae.W_dec[3] + (-2.0 - feats[..., 7:8]) * sae.W_dec[7]
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
        scaled = Splice(sae, [Scale([3], 3.0)])(x)
        torch.testing.assert_close(scaled, x + 2.0 * feats[..., 3:4] * sae.W_dec[3], atol=1e-5, rtol=1e-5)
        # later edits win on shared features
        both = edit_features(feats, [Clamp([3], 1.0), Ablate([3])])
        assert (both[..., 3] == 0).all()


def test_splice_positions_leave_other_tokens_untouched(tiny_model, tokens, tmp_path):
    sae = make_sae(tmp_path)
    _, x = clean_run(tiny_model, tokens)
    with torch.no_grad():
        out = Splice(sae, [Clamp([5], 9.0)], positions=[-1])(x)
    assert torch.equal(out[:, :-1], x[:, :-1])
    assert (out[:, -1] - x[:, -1]).norm() > 0


def test_steering_adds_exactly_strength_times_norm_times_unit_at_chosen_positions(tiny_model, tokens):
    clean, x = clean_run(tiny_model, tokens)
    direction = torch.randn(64)
    steer = Steer(HOOK, direction * 7.0, strength=0.5, scale=3.0, positions=[2, 5])
    seen = {}
    with patched(tiny_model, steer):
        def grab(act, hook):
            seen["x"] = act.detach().clone()
            return act
        tiny_model.hook_dict[HOOK].add_hook(grab)
        try:
            steered = tiny_model(tokens).detach()
        finally:
            tiny_model.hook_dict[HOOK].remove_hooks()
    diff = seen["x"] - x
    added = 0.5 * 3.0 * direction / direction.norm()
    torch.testing.assert_close(diff[:, [2, 5]], added.expand(2, 2, 64), atol=1e-5, rtol=1e-5)
    others = [p for p in range(tokens.shape[1]) if p not in (2, 5)]
    assert torch.equal(diff[:, others], torch.zeros_like(diff[:, others]))
    assert not torch.allclose(steered[:, 5:], clean[:, 5:])
    torch.testing.assert_close(steered[:, :2], clean[:, :2])  # causal: tokens before the edit do not change


def test_steering_with_a_mask_for_padded_batches(tiny_model):
    x = torch.zeros(2, 4, 64)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    out = Steer(HOOK, torch.ones(64), 1.0, 8.0, positions=mask)(x)
    assert torch.equal(out[0, 2:], torch.zeros(2, 64))
    torch.testing.assert_close(out[1].norm(dim=-1), torch.full((4,), 8.0))


def test_hooks_are_removed_even_when_the_block_raises(tiny_model, tokens, tmp_path):
    sae = make_sae(tmp_path)
    clean, _ = clean_run(tiny_model, tokens)
    with pytest.raises(RuntimeError, match="boom"):
        with patched(tiny_model, [Splice(sae, [Ablate([1])]), Steer(HOOK, torch.ones(64), 5.0, 1.0)]):
            raise RuntimeError("boom")
    assert not tiny_model.hook_dict[HOOK].fwd_hooks
    torch.testing.assert_close(tiny_model(tokens).detach(), clean)


def test_bad_inputs_raise_before_any_forward_pass(tiny_model, tmp_path):
    sae = make_sae(tmp_path)
    calls = []
    tiny_model.hook_dict["blocks.0.hook_resid_pre"].add_hook(lambda a, hook: calls.append(1))
    try:
        with pytest.raises(InterventionError, match="out of range: the SAE has 128 features"):
            Splice(sae, [Ablate([128])])
        with pytest.raises(InterventionError, match="no hook 'blocks.9.hook_resid_post'"):
            with patched(tiny_model, Splice(make_sae(tmp_path, hook="blocks.9.hook_resid_post"))):
                tiny_model(torch.tensor([[1, 2]]))
        with pytest.raises(InterventionError, match="vector length is 10"):
            with patched(tiny_model, Steer(HOOK, torch.ones(10), 1.0)):
                tiny_model(torch.tensor([[1, 2]]))
        with pytest.raises(InterventionError, match="norm 0"):
            Steer(HOOK, torch.zeros(64), 1.0)
        with pytest.raises(InterventionError, match="3 features but 2 values"):
            Clamp([1, 2, 3], [1.0, 2.0])
    finally:
        tiny_model.hook_dict["blocks.0.hook_resid_pre"].remove_hooks()
    assert calls == []


def test_mean_resid_norm_is_the_mean_token_norm_without_the_first(tiny_model):
    ids = [[1, 200, 300, 400], [1, 500, 600]]
    norms = []
    for s in ids:
        _, x = clean_run(tiny_model, torch.tensor([s]))
        norms += x[0, 1:].norm(dim=-1).tolist()
    assert mean_resid_norm(tiny_model, HOOK, ids) == pytest.approx(sum(norms) / len(norms), rel=1e-5)


def test_a_norm_filtering_rule_keeps_edits_off_outlier_positions():
    from saekit.tokens import TokenRule

    x = torch.ones(1, 4, 8)
    x[0, 2] *= 1000.0                                    # an outlier position
    rule = TokenRule(skip_first=0, max_norm_ratio=10.0, reference_norm=float(torch.ones(8).norm()))
    steer = Steer(HOOK, torch.ones(8), strength=1.0, scale=2.0, rule=rule)
    out = steer(x.clone())
    assert torch.equal(out[0, 2], x[0, 2])
    assert torch.allclose(out[0, [0, 1, 3]] - x[0, [0, 1, 3]], steer.added.expand(3, -1))
    assert torch.allclose(Steer(HOOK, torch.ones(8), 1.0, 2.0)(x.clone())[0, 2] - x[0, 2], steer.added, atol=1e-3)


def test_mean_resid_norm_follows_the_token_rule(tiny_model):
    from saekit.tokens import TokenRule

    ids = [[1, 200, 300, 400], [1, 500, 600]]
    norms = []
    for s in ids:
        _, x = clean_run(tiny_model, torch.tensor([s]))
        norms += x[0, 2:].norm(dim=-1).tolist()
    assert mean_resid_norm(tiny_model, HOOK, ids, TokenRule(skip_first=2)) == pytest.approx(sum(norms) / len(norms), rel=1e-5)
