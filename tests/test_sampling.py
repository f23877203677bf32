"""The shared sampler (experiments.sampling): a cached stream under edits gives the full pass's
numbers, sampling is reproducible from its seed, and strength 0 samples the clean model's tokens."""

import pytest
import torch
from test_experiments import HOOK, ranked, spec  # noqa: F401

from saekit.experiments.batches import run_logits
from saekit.experiments.load import load_spec
from saekit.experiments.resolve import resolve
from saekit.experiments.sampling import Stream, sample_columns
from saekit.experiments.targets import Setting, baseline_setting
from saekit.interventions import mean_resid_norm


@pytest.fixture(scope="module")
def res(ranked, tiny_model):  # noqa: F811
    from saekit.db import Database

    with Database(ranked["db"], read_only=True) as db:
        r = resolve(load_spec(spec(ranked, task="side_effects", controls=0,
                                   conditions=[{"name": "up", "kind": "steer", "emotion": "desperate"}])), db)
    r.mean_norms[HOOK] = mean_resid_norm(tiny_model, HOOK, [[1, 2, 3, 4, 5]])
    return r


def steered(res, strength):
    return Setting("up", "steer", res.targets["up"], strength, False)


@pytest.mark.parametrize("strength", [0.0, 3.0])
def test_a_cached_stream_gives_the_full_passs_log_probabilities(res, tiny_model, strength):
    ids = [5, 17, 3, 99, 42, 7, 8]
    stream = Stream(tiny_model, res, [baseline_setting(), steered(res, strength)])   # rows: clean, steered
    cached = [stream.feed([ids[:3]] * 2)] + [stream.feed([[t]] * 2) for t in ids[3:]]
    clean, _ = run_logits(tiny_model, res, baseline_setting(), [ids])
    full, _ = run_logits(tiny_model, res, steered(res, strength), [ids])
    for i, logp in enumerate(cached):   # each row's edits stay in its row
        assert torch.allclose(logp[0], clean[0, i + 2], atol=1e-4), i
        assert torch.allclose(logp[1], full[0, i + 2], atol=1e-4), i


def test_columns_sample_alike_at_strength_zero_and_the_shadow_reads_the_edited_text(res, tiny_model):
    cols = {"clean": baseline_setting(), "edited": steered(res, 0.0)}
    got = list(sample_columns(tiny_model, res, cols, [5, 17, 3], 10, 1.0, 3, shadow="edited"))
    by = {c: [t.id for t in got if t.column == c] for c in cols}
    assert by["clean"] == by["edited"] and len(by["clean"]) >= 1
    edited = [t for t in got if t.column == "edited"]
    assert all(t.clean_V is not None and torch.allclose(t.clean_V, t.logp_V, atol=1e-5) for t in edited)
    strong = list(sample_columns(tiny_model, res, {"clean": baseline_setting(), "edited": steered(res, 50.0)},
                                 [5, 17, 3], 10, 1.0, 3, shadow="edited"))
    assert [t.id for t in strong if t.column == "clean"] == by["clean"]     # the clean column is unchanged
    first = next(t for t in strong if t.column == "edited")
    assert not torch.allclose(first.clean_V, first.logp_V, atol=1e-3)


def test_sampling_is_reproducible_and_strength_zero_is_the_clean_model(res, tiny_model):
    def draw(setting, seed=3):
        return [t.id for t in sample_columns(tiny_model, res, {"one": setting}, [5, 17, 3], 12, 1.0, seed)]

    clean = draw(baseline_setting())
    assert clean == draw(baseline_setting()) and len(clean) >= 1
    assert draw(steered(res, 0.0)) == clean
    assert draw(baseline_setting(), seed=4) != clean or draw(baseline_setting(), seed=5) != clean
    assert draw(steered(res, 50.0)) != clean
