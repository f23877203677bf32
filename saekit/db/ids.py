"""How the database names an SAE and a corpus: one rule each, used by every writer and reader."""

from __future__ import annotations

from pathlib import Path

SHIPPED = "shipped"


def sae_id_of(sae: str | Path, release_id: str | None = None) -> str:
    """An SAE's id: its folder (as given) or sae-lens release, with `:<id>` for an SAE within a release."""
    return f"{sae}:{release_id}" if release_id else str(sae)


def corpus_id_of(corpus: str | Path | None) -> str:
    """A corpus's id: "shipped" for the shipped corpus, else the file, folder or dataset name as given
    (a trailing slash dropped), so rankings of two corpora never share rows."""
    corpus = str(corpus or SHIPPED)
    return SHIPPED if corpus == SHIPPED else corpus.rstrip("/") or corpus
