"""bfloat16 compute against float32 on the tiny model: a harvest and an experiment, each run both ways.

Tolerances come from bf16's precision, not from the measured differences: its unit roundoff is
u = 2^-8 (8 significand bits), and the tiny model rounds about ROUNDINGS times on the way to a
residual (the embedding, then per block the attention's q/k/v/o and the MLP's gate/up/down outputs,
less one). Relative errors of at most u each, added in the worst case, bound a residual's relative
error by ROUNDINGS x u; a cosine of x and x + e with |e| <= eps|x| is at least sqrt(1 - eps^2).
The lower bounds check that bf16 really ran (float32 alone differs from itself by ~1e-7).
"""

import json
import math

import pytest
import torch
from conftest import rank_tiny
from typer.testing import CliRunner

import saekit.model
from saekit import experiments as X
from saekit.cli import app
from saekit.corpus import load_corpus
from saekit.db import read_only_query
from saekit.harvest import Activations, HarvestConfig, harvest
from saekit.model import load_hf

U = 2.0 ** -8
N_LAYERS = 4   # the tiny model's
ROUNDINGS = 1 + 6 * N_LAYERS
EPS = ROUNDINGS * U
HOOK = "blocks.3.hook_resid_post"


def harvest_both(tmp, hooks, records):
    out = {}
    for d in ("float32", "bfloat16"):
        folder = harvest(HarvestConfig(model="tiny", hooks=hooks, out=str(tmp / d), max_tokens=64, dtype=d),
                         records=records)
        out[d] = Activations.open(folder)
    return out


@pytest.mark.parametrize("hooks", [[HOOK], [HOOK, "blocks.1.ln1.hook_normalized"]], ids=["plain", "bridge"])
def test_bf16_harvest_matches_fp32_within_bf16_precision(tmp_path, hooks):
    records = load_corpus(emotions=["calm", "afraid"])[:10]
    acts = harvest_both(tmp_path, hooks, records)
    assert acts["bfloat16"].manifest["config"]["dtype"] == "bfloat16"
    assert acts["float32"].manifest["config"]["dtype"] == "float32"
    for d in acts:  # stored in float32 either way (store_dtype), so later stages read the same format
        assert acts[d].tokens(HOOK).dtype == torch.float32
    a, b = acts["float32"].tokens(HOOK), acts["bfloat16"].tokens(HOOK)
    rel_T = (a - b).norm(dim=-1) / a.norm(dim=-1)
    assert float(rel_T.max()) <= EPS
    assert float(rel_T.median()) > 1e-4   # computed in bf16, not silently upcast
    cos_N = torch.nn.functional.cosine_similarity(acts["float32"].pooled(HOOK), acts["bfloat16"].pooled(HOOK))
    assert float(cos_N.min()) >= math.sqrt(1 - EPS ** 2)


def test_a_model_passed_to_harvest_is_recorded_in_its_own_dtype(tmp_path):
    """The manifest says what computed the activations, whatever the config asked for."""
    hf, tok = load_hf("tiny", dtype="bfloat16")
    cfg = HarvestConfig(model="tiny", hooks=[HOOK], out=str(tmp_path / "h"), max_tokens=32, dtype="float32")
    acts = Activations.open(harvest(cfg, model=hf, tokenizer=tok, records=load_corpus(emotions=["calm"])[:3]))
    assert acts.manifest["config"]["dtype"] == acts.manifest["identity"]["dtype"] == "bfloat16"


@pytest.fixture(scope="module")
def ranked(tiny_model, tmp_path_factory):
    return rank_tiny(tiny_model, tmp_path_factory.mktemp("bf16"), ["calm", "afraid", "desperate"], HOOK)


def run(ranked, dtype, model=None):
    spec = {"name": "t", "task": "probes", "model": "tiny", "hook": HOOK, "sae": ranked["sae"], "db": ranked["db"],
            "strengths": [2.0], "controls": 0, "n_bootstrap": 50, "norm_texts": 2, "dtype": dtype,
            "out": str(ranked["tmp"] / "out"), "prompts": {"limit": 2},
            "conditions": [{"name": "desperate_up", "kind": "steer", "emotion": "desperate"},
                           {"name": "afraid_clamp", "kind": "clamp", "features": "top 2 selective for afraid"}]}
    exp = X.run_experiment(spec, model=model)
    rows = read_only_query(f"SELECT * FROM intervention_results WHERE experiment_id = '{exp}'", ranked["db"]).to_pylist()
    stored = json.loads(read_only_query(f"SELECT spec FROM experiments WHERE experiment_id = '{exp}'",
                                        ranked["db"]).to_pylist()[0]["spec"])
    return {(r["condition"], r["prompt_id"], r["metric"]): r["value"] for r in rows if r["metric"].startswith("logp")}, stored


def test_bf16_experiment_matches_fp32_within_bf16_precision(ranked):
    """A steer and a clamp (SAE splice on a bf16 residual with the fp32 SAE), the model loaded from the spec's dtype."""
    fp32, s32 = run(ranked, "float32")
    bf16, s16 = run(ranked, "bf16")
    assert s32["spec"]["dtype"] == "float32" and s16["spec"]["dtype"] == "bfloat16"
    assert fp32.keys() == bf16.keys() and {k[0] for k in fp32} == {"none", "desperate_up", "afraid_clamp"}
    # log p = logit - logsumexp moves by at most twice the largest logit error; a logit is the final
    # RMS-normed residual (norm sqrt(d) x its scale) dotted with an unembedding row, relative error <= EPS
    hf, _ = load_hf("tiny")
    scale = math.sqrt(hf.config.hidden_size) * float(hf.model.norm.weight.detach().abs().max())
    bound = 2 * EPS * scale * float(hf.lm_head.weight.detach().norm(dim=1).max())
    diffs = [abs(fp32[k] - bf16[k]) for k in fp32]
    assert max(diffs) <= bound
    assert max(diffs) > 1e-5   # the experiment's model really computed in bf16


def test_a_model_passed_to_an_experiment_is_stored_in_its_own_dtype(ranked, tiny_model):
    _, stored = run(ranked, "bfloat16", model=tiny_model)
    assert stored["spec"]["dtype"] == "float32"


def test_saekit_rank_loads_the_model_in_the_harvests_dtype(tmp_path, monkeypatch):
    """The logit lens (and an eval corpus's harvest) use the model as it computed the activations."""
    folder = harvest(HarvestConfig(model="tiny", hooks=[HOOK], out=str(tmp_path / "h"), max_tokens=32, dtype="bf16"),
                     records=load_corpus(emotions=["calm", "afraid"])[:4])
    asked = {}

    def record(name, **kw):
        asked.update(kw, name=name)
        raise SystemExit(3)

    monkeypatch.setattr(saekit.model, "load_model", record)
    CliRunner().invoke(app, ["rank", "--activations", str(folder), "--db", str(tmp_path / "f.duckdb")])
    assert asked == {"name": "tiny", "dtype": "bfloat16"}
