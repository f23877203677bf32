"""The command line's consoles, progress bars and summary tables (shared by every command module)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(stderr=True)
"""Messages, warnings and progress: stderr."""
out_console = Console()
"""Results: stdout."""
MODEL_HELP = ("Model folder, hub name, or an embedded name: 'smollm2-135m-instruct' (default), 'gemma3-270m' (saekit[gemma]), "
              "'qwen2.5-coder-1.5b-instruct' (saekit[qwen]), 'tiny'.")


def progress_bar() -> Progress:
    """A progress bar; under torchrun only rank 0 draws it."""
    from saekit.distributed import is_main

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console, disable=not is_main())


def print_summary(title: str, summary: dict) -> None:
    from saekit.distributed import is_main

    if not is_main():
        return
    table = Table(title=title, show_header=False)
    for k, v in summary.items():
        table.add_row(str(k), str(v))
    out_console.print(table)


def fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
