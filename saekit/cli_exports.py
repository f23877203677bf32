"""The export commands: the database's emotion vectors and features in the formats other tools read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from saekit.cli_console import out_console

export_app = typer.Typer(help="Write emotion vectors and features in the formats other tools read.", no_args_is_help=True)


@export_app.command("vectors")
def export_vectors(
    out: Annotated[Path, typer.Argument(help="A .safetensors file (safetensors), or a folder (gguf, steering-vectors).")],
    format: Annotated[str, typer.Option("--format", help="safetensors (+ JSON index), gguf (llama.cpp --control-vector, "
                                                         "repeng) or steering-vectors.")] = "safetensors",
    emotion: Annotated[Optional[list[str]], typer.Option(help="Emotion to export (repeatable; default all).")] = None,
    hook: Annotated[Optional[list[str]], typer.Option(help="Hook to export (repeatable; default all).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Model id, when the database holds several.")] = None,
    corpus: Annotated[Optional[str], typer.Option(help="Corpus id, when the database holds several.")] = None,
    db: Annotated[Optional[Path], typer.Option(help="Database file (default artifacts/saekit.duckdb).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace files that exist.")] = False,
) -> None:
    """Export the paper's emotion vectors (neutral PCs removed) from the database."""
    from saekit.export import export_vectors as run

    written = run(out, format, db, emotion or [], hook or [], model, corpus, force)
    out_console.print(f"wrote {len(written)} file(s): {', '.join(map(str, written))}", markup=False, soft_wrap=True)


@export_app.command("features")
def export_features(
    out: Annotated[Path, typer.Argument(help="Folder for batch-0.json (Neuronpedia / SAE-Dashboard) and saekit_features.json.")],
    feature: Annotated[Optional[list[int]], typer.Option(help="Feature index (repeatable; default the top ones per emotion).")] = None,
    emotion: Annotated[Optional[list[str]], typer.Option(help="Emotion whose top features to export (repeatable; default all).")] = None,
    top: Annotated[int, typer.Option(help="Features per emotion when none are named.")] = 5,
    sae: Annotated[Optional[str], typer.Option(help="SAE id, when the database holds several.")] = None,
    db: Annotated[Optional[Path], typer.Option(help="Database file (default artifacts/saekit.duckdb).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace files that exist.")] = False,
) -> None:
    """Export SAE features as the dashboard JSON that Neuronpedia's uploader and SAE-Dashboard read."""
    from saekit.export import export_features as run

    written = run(out, db, feature or [], emotion or [], top, sae, force)
    out_console.print(f"wrote {', '.join(map(str, written))}", markup=False, soft_wrap=True)
