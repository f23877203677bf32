import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saekit import harvest as H
from saekit import sae as S
from saekit import train as T
from saekit.config import ConfigError
from saekit.tokens import TokenRule

ROOT = Path(__file__).resolve().parents[1]
HOOK = "blocks.1.hook_resid_post"


pytestmark = pytest.mark.usefixtures("one_thread")


def planted(n_tokens=6000, d=32, n_atoms=48, per_token=3, seed=0):
    """Tokens that are sums of `per_token` of `n_atoms` unit directions with positive weights."""
    g = torch.Generator().manual_seed(seed)
    atoms_AD = torch.randn(n_atoms, d, generator=g)
    atoms_AD /= atoms_AD.norm(dim=-1, keepdim=True)
    idx_NK = torch.stack([torch.randperm(n_atoms, generator=g)[:per_token] for _ in range(n_tokens)])
    coef_NK = 1 + torch.rand(n_tokens, per_token, generator=g)
    x_ND = (coef_NK[..., None] * atoms_AD[idx_NK]).sum(1)
    return x_ND, atoms_AD


def source(n_tokens=6000, **kw):
    x_ND, atoms = planted(n_tokens, **kw)
    split = int(0.9 * n_tokens)
    return T.TensorSource(x_ND[:split], x_ND[split:], chunk_tokens=1000), atoms


def cfg(tmp_path, sae=None, **kw):
    """A small training config; `sae` is the [sae] table (default: a topk SAE of 96 latents, k = 3)."""
    base = dict(model="tiny", hook=HOOK, out=str(tmp_path / "sae"), batch_size=256, training_tokens=256 * 40,
                lr=3e-3, checkpoint_every=10, lm_metrics=False, dead_feature_window=20, eval_tokens=2000, log_every=5)
    base.update(kw)
    return T.train_config(base | {"sae": {"d_sae": 96} | (sae or {"architecture": "topk", "k": 3})})


def sae_tensors(folder):
    return load_file(str(Path(folder) / "sae_weights.safetensors"))


# ---------------------------------------------------------------------------- learning


def test_topk_learns_planted_sparse_features(tmp_path):
    src, atoms_AD = source()
    reports = []
    out = T.train_sae(cfg(tmp_path, training_tokens=256 * 300, checkpoint_every=0), activations=src,
                      progress=reports.append)
    assert reports[-1].loss < 0.2 * reports[0].loss
    m = T.read_metrics(out)["activations"]
    assert m["explained_variance"] > 0.85 and m["l0"] <= 3
    W_dec = sae_tensors(out)["W_dec"]
    cos_AF = torch.nn.functional.normalize(atoms_AD, dim=-1) @ torch.nn.functional.normalize(W_dec, dim=-1).T
    assert cos_AF.max(dim=1).values.median() > 0.9  # most planted directions have a latent


@pytest.mark.parametrize("arch,sae,extra", [("batchtopk", {"k": 3}, {}), ("jumprelu", {"l0_coefficient": 0.02}, {}),
                                            ("standard", {"l1_coefficient": 0.05}, {"dead_feature_handling": "resample"})])
def test_other_architectures_train_and_save_as_sae_lens(tmp_path, arch, sae, extra):
    src, _ = source(3000)
    reports = []
    out = T.train_sae(cfg(tmp_path, sae={"architecture": arch, **sae}, training_tokens=256 * 300, checkpoint_every=0,
                          **extra), activations=src, progress=reports.append)
    assert reports[-1].mse < reports[0].mse
    saved = json.loads((out / "cfg.json").read_text())
    assert saved["architecture"] == ("jumprelu" if arch == "batchtopk" else arch)
    assert saved["metadata"]["hook_name"] == HOOK and saved["d_sae"] == 96
    assert T.read_metrics(out)["activations"]["explained_variance"] > 0.3


@pytest.mark.parametrize("rescale", [True, False])
def test_fast_topk_has_sae_lens_loss_and_gradients(rescale):
    torch.manual_seed(0)
    sae = S.build_training_sae("topk", 16, 64, k=4, aux_loss_coefficient=0.5)
    sae.cfg.rescale_acts_by_decoder_norm = rescale
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.1)
        sae.W_dec.mul_(torch.rand(64, 1) + 0.5)
    x = torch.randn(50, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::3] = True
    grads = []
    for fast in (True, False):
        sae.zero_grad()
        out = S.training_forward(sae, x, dead, step=0, fast_topk=fast)
        out.loss.backward()
        feats = out.feature_acts.to_dense() if out.feature_acts.is_sparse else out.feature_acts
        grads.append((out.loss.detach(), out.sae_out.detach(), feats,
                      {n: p.grad.clone() for n, p in sae.named_parameters()}))
    (l1, o1, f1, g1), (l2, o2, f2, g2) = grads
    torch.testing.assert_close(f1, f2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(o1, o2, rtol=1e-5, atol=1e-6)
    for name in g2:
        torch.testing.assert_close(g1[name], g2[name], rtol=1e-4, atol=1e-6, msg=name)


def test_auxk_reconstructs_the_residual_with_k_aux_dead_latents():
    """k_aux sets how many dead latents AuxK decodes per token (0 keeps sae-lens' d_in // 2), and only
    those get its gradient."""
    torch.manual_seed(0)
    sae = S.build_training_sae("topk", 16, 64, k=4, aux_loss_coefficient=1.0)
    x = torch.randn(50, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::3] = True                                    # 22 dead latents

    def reference(k_aux):
        with torch.no_grad():
            out = S.topk_training_forward(sae, x, dead)
            pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
            top, pos = pre[:, dead].topk(k_aux, dim=-1)
            idx = dead.nonzero().flatten()[pos]
            recon = torch.einsum("bk,bkd->bd", top, sae.W_dec[idx])
            return min(22 / k_aux, 1.0) * (recon - (x - out.sae_out)).pow(2).sum(-1).mean(), idx

    for k_aux in (3, 0):
        sae.zero_grad()
        out = S.topk_training_forward(sae, x, dead, k_aux=k_aux)
        want, idx = reference(k_aux or 16 // 2)
        torch.testing.assert_close(out.losses["auxiliary_reconstruction_loss"], want, rtol=1e-5, atol=1e-6)
        out.losses["auxiliary_reconstruction_loss"].backward()
        touched = (sae.W_enc.grad.abs().sum(0) > 0).nonzero().flatten()
        assert set(touched.tolist()) == set(idx.flatten().tolist())     # the chosen dead latents alone
    with pytest.raises(ValueError, match="k_aux needs fast_topk"):
        S.TopKConfig(k=4, k_aux=8, fast_topk=False).validate()


def test_auxk_on_rank_score_decodes_the_score_topk_compares():
    """aux_on_rank_score: the chosen dead latents' AuxK activations are their ranking scores (pre x decoder
    norm) decoded through W_dec; sae-lens' AuxK decodes the pre-activation (the norm cancels). They differ
    once decoder rows have unequal norms."""
    torch.manual_seed(0)
    sae = S.build_training_sae("topk", 16, 64, k=4, aux_loss_coefficient=1.0)
    assert sae.cfg.rescale_acts_by_decoder_norm
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(64, 1) * 3 + 0.1)       # decoder rows of unequal norms, as after training
    x = torch.randn(50, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::3] = True                                    # 22 dead latents
    with torch.no_grad():
        residual = x - S.topk_training_forward(sae, x, dead).sae_out
        norm = sae.W_dec.norm(dim=-1)
        score = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc) * norm
        top, pos = score[:, dead].topk(8, dim=-1)
        idx = dead.nonzero().flatten()[pos]

        def aux(acts):
            return (torch.einsum("bk,bkd->bd", acts, sae.W_dec[idx]) - residual).pow(2).sum(-1).mean()

        want_score, want_pre = aux(top), aux(top / norm[idx])
    got = {flag: S.topk_training_forward(sae, x, dead, k_aux=8, aux_on_rank_score=flag)
           .losses["auxiliary_reconstruction_loss"] for flag in (True, False)}
    torch.testing.assert_close(got[True], want_score, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[False], want_pre, rtol=1e-5, atol=1e-6)
    assert abs(float(want_score) - float(want_pre)) > 1e-3 * float(want_pre)   # the two losses differ
    with pytest.raises(ValueError, match="aux_on_rank_score needs fast_topk"):
        S.TopKConfig(k=4, aux_on_rank_score=True, fast_topk=False).validate()


# ---------------------------------------------------------------------------- checkpoints


class Killed(Exception):
    pass


def test_resume_after_crash_ends_at_the_uninterrupted_weights(tmp_path):
    src, _ = source(3000)
    full = T.train_sae(cfg(tmp_path / "a", dead_feature_window=5), activations=src)

    c = cfg(tmp_path / "b", dead_feature_window=5)

    def die(report):
        if report.step == 25:
            raise Killed

    with pytest.raises(Killed):
        T.train_sae(c, activations=src, progress=die)
    assert [p.name for p in T.list_checkpoints(c.out)] == ["step-00000010", "step-00000020"]
    assert not (Path(c.out) / "cfg.json").exists()
    with pytest.raises(T.TrainError, match="--resume"):
        T.train_sae(c, activations=src)
    seen = []
    resumed = T.train_sae(c, activations=src, resume=True, progress=seen.append)
    assert seen[0].step == 21  # continued after the step-20 checkpoint, not from scratch
    a, b = sae_tensors(full), sae_tensors(resumed)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    ma, mb = T.read_metrics(full)["activations"], T.read_metrics(resumed)["activations"]
    assert ma["explained_variance"] == pytest.approx(mb["explained_variance"], abs=1e-6)


def test_resume_with_a_different_config_is_refused(tmp_path):
    src, _ = source(2000)
    c = cfg(tmp_path)

    def die(report):
        if report.step == 12:
            raise Killed

    with pytest.raises(Killed):
        T.train_sae(c, activations=src, progress=die)
    with pytest.raises(T.TrainError, match="lr"):
        T.train_sae(cfg(tmp_path, lr=1e-2), activations=src, resume=True)


class Poisoned:
    """A source whose batches turn bad from batch `at` on."""

    def __init__(self, inner, at, how):
        self.inner, self.at, self.how = inner, at, how
        self.d_in = inner.d_in

    def batches(self, batch_size, seed):
        for i, b in enumerate(self.inner.batches(batch_size, seed)):
            yield self.how(b) if i >= self.at else b

    def held_out(self, n):
        return self.inner.held_out(n)

    def held_out_texts(self, n):
        return []


@pytest.mark.parametrize("how,match", [(lambda b: b * float("nan"), "activations of step 13 hold NaN"),
                                       (lambda b: b * 1e4, "exploded")])
def test_bad_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, how, match):
    src, _ = source(2000)
    c = cfg(tmp_path, checkpoint_every=5)
    with pytest.raises(T.TrainingDiverged, match=match) as e:
        T.train_sae(c, activations=Poisoned(src, 13, how))
    assert "step-00000010" in str(e.value)
    ckpts = T.list_checkpoints(c.out)
    assert ckpts[-1].name == "step-00000010"
    tensors = load_file(str(ckpts[-1] / T.CKPT_TENSORS))
    assert all(torch.isfinite(v).all() for v in tensors.values())
    assert not (Path(c.out) / "cfg.json").exists()


def test_checkpoint_round_trip_restores_optimizer_and_statistics(tmp_path):
    src, _ = source(2000)
    c = cfg(tmp_path)
    state = T.init_state(c, src.d_in)
    batches = src.batches(c.batch_size, c.seed)
    for _ in range(3):
        T.train_step(state, next(batches), c)
    path = T.save_checkpoint(state, c, Path(c.out))
    fresh = T.init_state(c, src.d_in)
    T.load_checkpoint(fresh, c, path)
    assert fresh.step == 3 and fresh.tokens == 3 * c.batch_size
    torch.testing.assert_close(fresh.steps_since_fired_F, state.steps_since_fired_F)
    for p, q in zip(state.sae.parameters(), fresh.sae.parameters()):
        torch.testing.assert_close(p, q)
        torch.testing.assert_close(state.optimizer.state[p]["exp_avg_sq"], fresh.optimizer.state[q]["exp_avg_sq"])
    assert not list(path.glob("*.pt"))


# ---------------------------------------------------------------------------- steps


def test_resampling_reinitialises_dead_latents_and_their_adam_moments(tmp_path):
    src, _ = source(2000)
    c = cfg(tmp_path, sae={"architecture": "standard"}, dead_feature_handling="resample")
    state = T.init_state(c, src.d_in)
    batch = next(src.batches(c.batch_size, 0))
    T.train_step(state, batch, c)
    state.steps_since_fired_F[:10] = c.dead_feature_window + 1
    before = state.sae.W_dec.detach().clone()
    n = T.resample_dead(state, batch, c)
    assert n == 10
    W_dec = state.sae.W_dec.detach()
    torch.testing.assert_close(W_dec[:10].norm(dim=-1), torch.ones(10))
    assert not torch.allclose(W_dec[:10], before[:10]) and torch.equal(W_dec[10:], before[10:])
    assert (state.optimizer.state[state.sae.W_dec]["exp_avg"][:10] == 0).all()
    assert (state.sae.b_enc.detach()[:10] == 0).all()
    assert (state.steps_since_fired_F[:10] == 0).all()


def test_lr_schedule_warms_up_and_decays_to_zero(tmp_path):
    c = cfg(tmp_path, training_tokens=256 * 100, lr=1e-3, lr_warm_up_steps=10, lr_decay_steps=20,
            lr_scheduler="cosine")
    assert T.lr_at(c, 0) == pytest.approx(1e-4)
    assert T.lr_at(c, 9) == pytest.approx(1e-3)
    assert T.lr_at(c, 79) < 1e-3 and T.lr_at(c, 99) < 1e-5


def test_expected_average_norm_is_folded_into_the_saved_sae(tmp_path):
    x_ND, _ = planted(3000)
    src = T.TensorSource(100 * x_ND[:2700], 100 * x_ND[2700:])
    out = T.train_sae(cfg(tmp_path, normalize_activations="expected_average_only_in", training_tokens=256 * 80),
                      activations=src)
    rec = json.loads((out / T.TRAIN_RECORD).read_text())
    assert rec["activation_scale_folded"] == pytest.approx(32 ** 0.5 / 100 / float(x_ND.norm(dim=-1).mean()), rel=0.1)
    assert json.loads((out / "cfg.json").read_text())["normalize_activations"] == "none"
    assert T.read_metrics(out)["activations"]["explained_variance"] > 0.5  # measured on raw inputs


def test_the_geometric_median_ignores_outlier_tokens_that_move_the_mean():
    g = torch.Generator().manual_seed(0)
    centre = torch.full((16,), 3.0)
    x_ND = torch.cat([centre + 0.1 * torch.randn(900, 16, generator=g), 1000 * torch.ones(100, 16)])
    assert (T.geometric_median(x_ND).float() - centre).norm() < 0.1
    assert (x_ND.mean(0) - centre).norm() > 100


def test_median_init_puts_the_decoder_bias_at_the_datas_centre_in_the_scaled_space(tmp_path):
    x_ND, _ = planted(3000)
    offset_D = torch.zeros(32)
    offset_D[0] = 40.0                                   # a residual stream far from the origin
    src = T.TensorSource(x_ND[:2700] + offset_D, x_ND[2700:] + offset_D)
    c = cfg(tmp_path, init_b_dec="median", normalize_activations="expected_average_only_in")
    state = T.init_state(c, 32)
    assert float(state.sae.b_dec.norm()) == 0.0
    state.scale = T.estimate_scale(src, c)
    T.init_b_dec_at_median(state, src, c)
    centre_D = T.geometric_median(x_ND[:2700] + offset_D).float() * state.scale
    assert (state.sae.b_dec.detach() - centre_D).norm() < 0.05 * centre_D.norm()
    zeros = T.train_sae(cfg(tmp_path / "z", training_tokens=256 * 20), activations=src)
    median = T.train_sae(cfg(tmp_path / "m", training_tokens=256 * 20, init_b_dec="median"), activations=src)
    assert T.read_metrics(median)["activations"]["explained_variance"] > \
        T.read_metrics(zeros)["activations"]["explained_variance"]


# ---------------------------------------------------------------------------- config


def test_unknown_config_field_names_the_field(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('architecture = "topk"\nlearning_rate = 0.001\n')
    with pytest.raises(ConfigError, match="learning_rate"):
        T.load_train_config(path)


@pytest.mark.parametrize("bad,match", [({"architecture": "gated"}, "gated"),
                                       ({"architecture": "standard", "dead_feature_handling": "auxk"}, "resample"),
                                       ({"k": 2.5}, "whole k"), ({"training_tokens": 10}, "training_tokens")])
def test_bad_config_values_are_refused_at_load(tmp_path, bad, match):
    path = tmp_path / "t.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in bad.items()))
    with pytest.raises(ConfigError, match=match):
        T.load_train_config(path)


def test_shipped_configs_load_and_the_default_fits_the_embedded_model():
    files = sorted((ROOT / "train").glob("*.toml"))
    assert files
    for f in files:
        T.load_train_config(f)
    default = T.load_train_config(ROOT / "train" / "smollm2-135m-l20-topk.toml")
    assert default.hook == "blocks.20.hook_resid_post" and default.sae.architecture == "topk"
    assert default.model == "smollm2-135m-instruct" and not default.wandb


RECIPE = ("lr", "lr_scheduler", "lr_warm_up_steps", "lr_decay_steps", "batch_size", "normalize_activations",
          "dead_feature_handling", "dead_feature_window", "exclude_first_token", "max_norm_ratio", "dtype",
          "init_b_dec", "training_tokens")
SAE_RECIPE = ("architecture", "expansion_factor", "k", "aux_loss_coefficient", "k_aux", "aux_on_rank_score",
              "fast_topk")


def test_the_three_embedded_models_train_with_one_recipe():
    """No per-model tuning: the three models' configs differ in what the model decides (hook, how many
    documents the LM metrics read) and nothing else; the dictionary is 8x each model's width
    (README "Three models side by side", SAE health)."""
    configs = [T.load_train_config(ROOT / "train" / f) for f in
               ("smollm2-135m-l20-topk.toml", "gemma3-270m-l12-topk.toml", "qwen2.5-1.5b-l18-topk.toml")]
    for name in RECIPE:
        assert len({getattr(c, name) for c in configs}) == 1, name
    for name in SAE_RECIPE:
        assert len({getattr(c.sae, name) for c in configs}) == 1, name
    assert configs[0].batch_size == 1024 and configs[0].dead_feature_window == 10
    assert configs[0].sae.k_aux == 2 * configs[0].sae.k     # AuxK's dead latents per token: 2k, whatever d_in
    assert configs[0].sae.aux_on_rank_score                  # and AuxK fits the ranking score


# ---------------------------------------------------------------------------- real activations


def test_harvest_source_never_trains_on_held_out_documents(tiny_model, small_records, tmp_path):
    hc = H.HarvestConfig(model="tiny", hooks=[HOOK], out=str(tmp_path / "acts"), batch_size=4, docs_per_shard=4)
    acts = H.Activations.open(H.harvest(hc, model=tiny_model, records=small_records))
    src = T.HarvestSource(acts, HOOK, TokenRule(skip_first=1), buffer_tokens=50)
    all_TD = acts.tokens(HOOK)
    docs = torch.cat([d for _, d, _ in acts.iter_shards(HOOK)])
    pos = torch.cat([p for _, _, p in acts.iter_shards(HOOK)])
    held = torch.tensor([r.split == "test" for r in small_records])[docs]
    n_train = int((~held & (pos > 0)).sum())
    batches = src.batches(7, seed=1)
    seen = torch.cat([next(batches) for _ in range(n_train // 7)])
    train_rows = {tuple(r.tolist()) for r in all_TD[~held & (pos > 0)]}
    assert {tuple(r.tolist()) for r in seen} <= train_rows
    held_out = src.held_out(10_000)
    assert held_out.shape[0] == int((held & (pos > 0)).sum())
    assert not ({tuple(r.tolist()) for r in held_out} & train_rows)


def test_norm_rule_leaves_outliers_out_of_training_and_is_stored(tiny_model, small_records, tmp_path):
    hc = H.HarvestConfig(model="tiny", hooks=[HOOK], out=str(tmp_path / "acts"), batch_size=4, docs_per_shard=4)
    acts = H.Activations.open(H.harvest(hc, model=tiny_model, records=small_records))
    norms = torch.cat([a.norm(dim=-1) for a, _, _ in acts.iter_shards(HOOK)])
    ratio = float(norms.max() / norms.median()) * 0.999          # drops exactly the largest norm(s)
    src = T.HarvestSource(acts, HOOK, TokenRule(skip_first=0, max_norm_ratio=ratio), buffer_tokens=50)
    assert src.rule.reference_norm is not None
    kept = src.held_out(10_000).norm(dim=-1)
    assert kept.max() <= ratio * src.rule.reference_norm
    c = cfg(tmp_path, sae={"architecture": "topk", "d_sae": 64, "k": 4}, batch_size=64, training_tokens=64 * 4,
            exclude_first_token=True, max_norm_ratio=50.0)
    out = T.train_sae(c, activations=acts, model=tiny_model)
    stored = json.loads((out / T.METRICS_FILE).read_text())["token_rule"]
    assert stored["skip_first"] == 1 and stored["max_norm_ratio"] == 50.0 and stored["reference_norm"] > 0
    assert json.loads((out / T.TRAIN_RECORD).read_text())["token_rule"] == stored


def test_train_from_tiny_model_streaming_records_lm_metrics(tiny_model, small_records, tmp_path):
    src = T.StreamSource(tiny_model, small_records, HOOK, max_tokens=64, batch_docs=4)
    c = cfg(tmp_path, sae={"architecture": "topk", "d_sae": 128, "k": 8}, batch_size=128, training_tokens=128 * 12,
            lm_metrics=True, eval_docs=3, max_tokens=64)
    out = T.train_sae(c, activations=src, model=tiny_model)
    lm = T.read_metrics(out)["lm"]
    assert lm["texts"] == 2 and lm["predicted_tokens"] > 0  # the two test-split records
    assert lm["loss_sae_with_error"] == pytest.approx(lm["loss_clean"], abs=1e-4)
    assert lm["kl_sae_with_error"] == pytest.approx(0, abs=1e-5) and lm["kl_sae"] > 0
    rec = json.loads((out / T.TRAIN_RECORD).read_text())
    assert rec["seed"] == 0 and rec["versions"]["sae-lens"].startswith("6.54") and rec["config"]["sae"]["k"] == 8


def test_every_file_of_a_trained_sae_follows_the_users_umask(tmp_path):
    import stat

    from saekit.artifacts import FILE_MODE

    torch.manual_seed(0)
    x = torch.randn(4096, 16)

    class Source:
        d_in = 16

        def batches(self, batch_size, seed):
            while True:
                yield x[torch.randint(0, len(x), (batch_size,))]

        def held_out(self, n):
            return x[:n]

        def held_out_texts(self, n):
            return []

    out = T.train_sae(cfg(tmp_path, sae={"architecture": "topk", "d_sae": 32, "k": 2}, batch_size=64,
                          training_tokens=64 * 6, checkpoint_every=2), activations=Source())
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files) and any("checkpoints" in p.parts for p in files)
    assert {p.relative_to(out).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == \
        {p.relative_to(out).as_posix(): oct(FILE_MODE) for p in files}
