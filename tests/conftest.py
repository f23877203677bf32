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
