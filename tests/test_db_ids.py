"""The one rule naming an SAE and a corpus in the database."""

from saekit.db import corpus_id_of, sae_id_of


def test_sae_id_is_the_folder_or_release_with_its_id():
    assert sae_id_of("artifacts/study/sae") == "artifacts/study/sae"
    assert sae_id_of("gemma-scope-2b-pt-res", "layer_20/width_16k/average_l0_71") == \
        "gemma-scope-2b-pt-res:layer_20/width_16k/average_l0_71"
    assert sae_id_of("release", None) == sae_id_of("release", "") == "release"


def test_corpus_id_keeps_shipped_and_names_other_corpora_by_their_path():
    assert corpus_id_of("shipped") == corpus_id_of(None) == "shipped"
    assert corpus_id_of("data/mine.jsonl") == "data/mine.jsonl"
    assert corpus_id_of("data/folder/") == "data/folder"
    assert corpus_id_of("data/a.jsonl") != corpus_id_of("data/b.jsonl")
