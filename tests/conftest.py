"""Shared fixtures: the tiny random model (seconds) and small corpora built in tmp folders."""

from __future__ import annotations

import json

import pytest

from saekit.corpus import Record


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from threads, and on a busy machine OpenMP waits dominate."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_model():
    from saekit.model import load_model

    return load_model("tiny")


@pytest.fixture
def small_records() -> list[Record]:
    words = "the cat sat on a mat while rain fell over quiet hills and small boats drifted home".split()
    out = []
    for i in range(14):
        n = 6 + 5 * i  # lengths 6..71 words: some shorter, some longer than the pooling offset
        text = " ".join(words[(i + j) % len(words)] for j in range(n))
        out.append(Record(id=f"doc-{i:02d}", text=text, emotion=["calm", "afraid"][i % 2],
                          split="test" if i % 5 == 4 else "train"))
    return out


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """A finished study on the tiny model (harvest, trained SAE, ranking, one experiment), built once per
    session for the tests that read a real database and its folders. Returns the study's folder."""
    from test_study import write_config

    from saekit.study import load_study_config, run_study

    tmp = tmp_path_factory.mktemp("tiny_study")
    run_study(load_study_config(write_config(tmp)))
    return tmp


def rank_tiny(tiny_model, tmp, emotions: list[str], hook: str = "blocks.2.hook_resid_post", with_sae: bool = True) -> dict:
    """A ranked tiny database for experiment tests: the corpus's stories of `emotions` (and two neutral
    texts) harvested at `hook`, an untrained seeded TopK SAE there unless `with_sae` is False, ranked.
    Returns {"db", "sae" (None without one), "tmp"}."""
    import torch

    from saekit.corpus import load_corpus
    from saekit.db import Database
    from saekit.harvest import HarvestConfig, harvest
    from saekit.rank import RankConfig, run_rank
    from saekit.sae import build_training_sae, load_sae, save_sae

    records = [r for r in load_corpus(emotions=emotions) if r.emotion != "neutral" or r.id.endswith(("1", "2"))]
    acts = harvest(HarvestConfig(model="tiny", hooks=[hook], out=str(tmp / "acts"), max_tokens=64, batch_size=16),
                   model=tiny_model, records=records)
    folder, sae = None, None
    if with_sae:
        torch.manual_seed(0)
        built = build_training_sae("topk", 64, 128, k=8, metadata={"hook_name": hook, "model_name": "tiny"})
        folder = save_sae(built, tmp / "sae")
        sae = load_sae(folder).sae
    cfg = RankConfig(activations=str(acts), sae=str(folder) if folder else None, db=str(tmp / "f.duckdb"), kmeans_k=2)
    with Database(cfg.db) as db:
        run_rank(cfg, sae=sae, model=tiny_model, tokenizer=tiny_model.tokenizer, db=db)
    return {"db": cfg.db, "sae": str(folder) if folder else None, "tmp": tmp}


@pytest.fixture
def no_forward(tiny_model):
    """Counts forward passes of the tiny model (a hook on its first block's input)."""
    calls: list[int] = []
    point = tiny_model.hook_dict["blocks.0.hook_resid_pre"]
    point.add_hook(lambda a, hook: calls.append(1))
    yield calls
    point.remove_hooks()


@pytest.fixture(scope="session")
def shipped_records():
    """The shipped corpus, read once (stories and neutral texts)."""
    from saekit.corpus import load_corpus

    return load_corpus()


@pytest.fixture(scope="session")
def shipped_stories(shipped_records):
    from saekit.corpus import NEUTRAL

    return [r for r in shipped_records if r.emotion != NEUTRAL]

