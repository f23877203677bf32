"""dose_response: trend statistics on planted signals and noise, readings on the tiny model, bad input."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from test_experiments import HOOK, ranked, results, spec  # noqa: F401  (ranked is a fixture)

from saekit import experiments as X
from saekit.config import ConfigError
from saekit.corpus import load_scenario
from saekit.db import Database
from saekit.experiments.stats import spearman_bootstrap_ci, spearman_permutation
from saekit.experiments.summary import report
from saekit.experiments.tasks.dose_response import dose_sentence, dose_stats

DRUGS = load_scenario("dose_response")["drugs"]


# ---------------------------------------------------------------------------- the statistics layer


def test_a_planted_monotone_trend_is_significant_and_noise_is_not():
    rng = np.random.default_rng(0)
    x = np.arange(12.0)
    rho, p, used, exact = spearman_permutation(x, x + rng.normal(0, 0.5, 12), n_perm=2000, seed=1)
    assert rho > 0.9 and p < 0.01 and used == 2000 and not exact
    lo, hi = spearman_bootstrap_ci(x, x + rng.normal(0, 0.5, 12), n_boot=500, seed=1)
    assert 0 < lo < hi <= 1
    rho, p, _, _ = spearman_permutation(x, rng.normal(size=12), n_perm=2000, seed=1)
    assert p > 0.05
    # a falling trend is as significant as a rising one (two-sided)
    assert spearman_permutation(x, -x, n_perm=2000, seed=1)[1] < 0.01


def test_small_samples_are_enumerated_exactly():
    x, y = [1, 2, 3, 4, 5], [2.0, 1.0, 4.0, 3.0, 5.0]
    rho, p, used, exact = spearman_permutation(x, y, n_perm=10_000)
    assert exact and used == 120
    import itertools
    null = [spearmanr(perm, y).statistic for perm in itertools.permutations(x)]
    assert p == pytest.approx(np.mean([abs(r) >= abs(rho) - 1e-12 for r in null]))
    # a perfect order of 5 points: 2 of 120 orderings (the order and its reverse) are as extreme
    assert spearman_permutation(x, x)[1] == pytest.approx(2 / 120)


def test_monte_carlo_p_agrees_with_scipy_for_many_points():
    rng = np.random.default_rng(3)
    x = rng.normal(size=80)
    y = 0.25 * x + rng.normal(size=80)
    _, p, _, _ = spearman_permutation(x, y, n_perm=20_000, seed=0)
    ref = spearmanr(x, y).pvalue
    assert 0.005 < ref < 0.2  # a p-value in the range where the check means something
    assert p == pytest.approx(ref, rel=0.35)
    # the same seed gives the same p; another seed a slightly different one
    assert spearman_permutation(x, y, n_perm=20_000, seed=0)[1] == p


def test_groups_shuffle_within_each_group():
    # the reading follows the group's level, not x inside the group: pooled rho is high, but within
    # every group the order is random, so the stratified null keeps it as it is
    rng = np.random.default_rng(1)
    groups = [g for g in range(4) for _ in range(8)]
    x = [g + 0.1 * i for g in range(4) for i in range(8)]
    y = [10 * g + rng.normal() for g in range(4) for _ in range(8)]
    assert spearman_permutation(x, y, n_perm=2000)[1] < 0.01
    assert spearman_permutation(x, y, n_perm=2000, groups=groups)[1] > 0.05
    lo, hi = spearman_bootstrap_ci(x, y, n_boot=300, groups=groups)
    assert lo > 0.5  # every resample keeps the groups' sizes, so the levels stay apart


# ---------------------------------------------------------------------------- the report's statistics


def synthetic_rows(reading, n_controls=10, control=None, seed=0):
    """Stored rows as the task writes them: reading(drug index, dose ratio, rng) per emotion."""
    rng = np.random.default_rng(seed)
    rows = []
    for di, d in enumerate(DRUGS):
        for dose in d["doses_mg"]:
            pid, ratio = f"{d['drug']}/{dose}mg", dose / d["safe_limit_mg"]
            base = {"condition": "dose_response", "target": d["drug"], "strength": None, "is_control": False,
                    "prompt_id": pid}
            for e, f in reading.items():
                rows.append(dict(base, metric=f"vec:{e}", value=float(f(di, ratio, rng))))
            rows += [dict(base, metric="dose_mg", value=float(dose)), dict(base, metric="dose_ratio", value=ratio)]
            for k in range(n_controls):
                v = control(di, ratio, rng) if control else rng.normal()
                rows.append(dict(base, condition=f"dose_response:control{k}", is_control=True, metric="vec:random",
                                 value=float(v)))
    return rows


def test_a_planted_rise_is_found_and_noise_reported_as_a_null():
    rows = synthetic_rows({"afraid": lambda d, r, g: d + math.log(r) + g.normal(0, 0.2),
                           "calm": lambda d, r, g: g.normal()})
    stats = dose_stats(rows, n_perm=2000, n_boot=300)
    by = {(s["metric"], s["scope"]): s for s in stats}
    assert {s["scope"] for s in stats} == {*(d["drug"] for d in DRUGS), "pooled"}
    pooled = by[("vec:afraid", "pooled")]
    assert pooled["rho"] > 0.6 and pooled["p"] < 0.01 and pooled["lo"] > 0 and pooled["verdict"] == "rises"
    assert pooled["n_controls"] == 10 and pooled["ctl_strong"] == 0
    assert all(by[("vec:afraid", d["drug"])]["verdict"] == "rises" for d in DRUGS)
    assert by[("vec:calm", "pooled")]["verdict"] == "no trend"
    text = dose_sentence(stats)
    assert f"afraid rises with dose for {len(DRUGS)} of {len(DRUGS)} drugs (pooled rho +0." in text
    assert "calm shows no monotonic trend with dose, a null" in text
    assert "0 of 10 as strong" in text


def test_a_difference_between_drugs_is_not_a_dose_effect():
    # each drug's reading sits at its own level, larger for drugs whose doses reach further past the limit
    reach = {di: max(d["doses_mg"]) / d["safe_limit_mg"] for di, d in enumerate(DRUGS)}
    stats = dose_stats(synthetic_rows({"afraid": lambda d, r, g: 10 * reach[d] + g.normal()}), n_perm=1000, n_boot=200)
    assert next(s for s in stats if s["scope"] == "pooled")["verdict"] == "no trend"


def test_a_trend_random_directions_share_is_not_credited_to_the_emotion():
    trend = lambda d, r, g: math.log(r) + g.normal(0, 0.1)  # noqa: E731
    stats = dose_stats(synthetic_rows({"afraid": trend}, control=trend), n_perm=1000, n_boot=200)
    pooled = next(s for s in stats if s["scope"] == "pooled")
    assert pooled["verdict"].startswith("rises, as do random directions")
    assert "no more than random directions do" in dose_sentence(stats)


def test_a_falling_reading_is_worded_as_falling():
    stats = dose_stats(synthetic_rows({"calm": lambda d, r, g: -math.log(r) + g.normal(0, 0.2)}), n_perm=1000,
                       n_boot=200)
    assert dose_sentence(stats).startswith(f"calm falls with dose for {len(DRUGS)} of {len(DRUGS)} drugs")


# ---------------------------------------------------------------------------- on the tiny model


def dose_spec(ranked, **prompts):  # noqa: F811
    return spec(ranked, name="dose", task="dose_response", conditions=[], controls=3, n_bootstrap=100,
                prompts=dict({"drugs": ["Tylenol", "Benadryl"], "dose_permutations": 500}, **prompts))


def test_readings_are_projections_at_the_assistant_turn_start(ranked, tiny_model, tmp_path):  # noqa: F811
    exp = X.run_experiment(dose_spec(ranked), model=tiny_model)
    rows = results(ranked["db"], exp)
    main = [r for r in rows if not r["is_control"]]
    assert {r["target"] for r in main} == {"Tylenol", "Benadryl"}
    assert {r["metric"] for r in main} == {"vec:afraid", "vec:calm", "feat:afraid", "feat:calm", "dose_mg",
                                           "dose_ratio"}
    assert len({r["prompt_id"] for r in main}) == 10 + 8
    # dose as a fraction of the label's daily limit (Benadryl: 300 mg)
    assert next(r["value"] for r in main if r["prompt_id"] == "Benadryl/300mg" and r["metric"] == "dose_ratio") == 1.0
    assert {r["condition"] for r in rows if r["is_control"]} == {f"dose_response:control{k}" for k in range(3)}
    # the reading is the projection of the clean activation at the last prompt token (the assistant's turn start)
    text = load_scenario("dose_response")["template"].format(dose=8000, drug="Tylenol", reason="headache")
    ids = X.chat_ids(tiny_model.tokenizer, [{"role": "user", "content": text}])
    acts = X.read_acts(tiny_model, HOOK, ids)
    with Database(ranked["db"], read_only=True) as db:
        vec = torch.tensor(db.scalar("SELECT vector FROM emotion_vectors WHERE emotion = 'calm' AND hook = ?", [HOOK]))
    got = next(r["value"] for r in main if r["prompt_id"] == "Tylenol/8000mg" and r["metric"] == "vec:calm")
    assert got == pytest.approx(float(acts[-1] @ (vec / vec.norm())), rel=1e-4, abs=1e-4)
    # the report: a row per drug and pooled for each reading, the figure, the sentence first among the notes
    out = report(exp, db_path=ranked["db"], out_dir=tmp_path / "rep")
    assert [(r[0], r[1]) for r in out["rows"][:3]] == [("vec:afraid", "Tylenol"), ("vec:afraid", "Benadryl"),
                                                      ("vec:afraid", "pooled")]
    assert len(out["rows"]) == 4 * 3 and all(r[7].startswith("[") for r in out["rows"] if r[0].startswith("vec:"))
    assert [p.rsplit("/", 1)[1] for p in out["plots"]] == ["dose_response.png"]
    assert open(out["plots"][0], "rb").read(4) == b"\x89PNG"
    assert X.TASKS["dose_response"].sentence(out) == out["notes"][0] and out["notes"][0].startswith("afraid ")
    assert "assistant_start" in out["notes"][1] and "500 seeded permutations" in out["notes"][1]


def test_user_end_reads_the_last_token_of_the_message(ranked, tiny_model):  # noqa: F811
    exp = X.run_experiment(dose_spec(ranked, drugs=["aspirin"], dose_read_at="user_end"), model=tiny_model)
    got = next(r["value"] for r in results(ranked["db"], exp)
               if r["prompt_id"] == "aspirin/2000mg" and r["metric"] == "vec:afraid" and not r["is_control"])
    tok = tiny_model.tokenizer
    text = load_scenario("dose_response")["template"].format(dose=2000, drug="aspirin", reason="headache")
    ids = X.chat_ids(tok, [{"role": "user", "content": text}])
    acts = X.read_acts(tiny_model, HOOK, ids)
    with Database(ranked["db"], read_only=True) as db:
        vec = torch.tensor(db.scalar("SELECT vector FROM emotion_vectors WHERE emotion = 'afraid' AND hook = ?", [HOOK]))
    reads = (acts @ (vec / vec.norm())).tolist()
    pos = reads.index(min(reads, key=lambda v: abs(v - got)))
    assert got == pytest.approx(reads[pos], rel=1e-4, abs=1e-4)
    assert tok.decode(ids[:pos + 1]).endswith(text)


@pytest.mark.parametrize("change, error, message", [
    ({"prompts": {"drugs": ["Tylenol", "warfarin"]}}, ConfigError,
     r"prompts.drugs \['warfarin'\] not in .*dose_response.json \(field 'drugs'\)"),
    ({"prompts": {"emotions": ["afraid", "sleepy"]}}, X.ExperimentError,
     r"prompts.emotions \['sleepy'\]: no emotion vector .* in .*f.duckdb"),
    ({"conditions": [{"name": "x", "kind": "steer", "emotion": "calm"}]}, ConfigError, "takes no conditions"),
    ({"prompts": {"dose_permutations": 0}}, ConfigError, "dose_permutations must be at least 1"),
])
def test_bad_input_fails_before_any_forward_pass(ranked, tiny_model, change, error, message):  # noqa: F811
    calls = []
    point = tiny_model.hook_dict["blocks.0.hook_resid_pre"]
    point.add_hook(lambda a, hook: calls.append(1))
    try:
        s = dict(dose_spec(ranked), **change)
        with pytest.raises(error, match=message):
            X.run_experiment(s, model=tiny_model)
    finally:
        point.remove_hooks()
    assert calls == []
