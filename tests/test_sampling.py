"""The shared sampler (experiments.sampling): a cached stream under edits gives the full pass's
numbers, sampling is reproducible from its seed, and strength 0 samples the clean model's tokens."""

import pytest
import torch
from test_experiments import HOOK, ranked, spec  # noqa: F401

from saekit.experiments.base import Setting, baseline_setting
from saekit.experiments.batches import run_logits
from saekit.experiments.resolve import resolve
from saekit.experiments.sampling import Stream, sample_stream
from saekit.experiments.spec import load_spec
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
    stream = Stream(tiny_model, res, steered(res, strength))
    cached = [stream.feed(ids[:3])] + [stream.feed([t]) for t in ids[3:]]
    full, _ = run_logits(tiny_model, res, steered(res, strength), [ids])
    for i, logp in enumerate(cached):
        assert torch.allclose(logp, full[0, i + 2], atol=1e-4), i


def test_sampling_is_reproducible_and_strength_zero_is_the_clean_model(res, tiny_model):
    def draw(setting, seed=3):
        return [t.id for t in sample_stream(tiny_model, res, setting, [5, 17, 3], 12, 1.0, seed)]

    clean = draw(baseline_setting())
    assert clean == draw(baseline_setting()) and len(clean) >= 1
    assert draw(steered(res, 0.0)) == clean
    assert draw(baseline_setting(), seed=4) != clean or draw(baseline_setting(), seed=5) != clean
    assert draw(steered(res, 50.0)) != clean
