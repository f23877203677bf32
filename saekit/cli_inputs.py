"""The commands about saekit's inputs: the story corpus (stats, check, validate, generate) and models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from saekit import cli_config as C
from saekit.cli_console import MODEL_HELP, console, out_console, print_summary, progress_bar

corpus_app = typer.Typer(help="The shipped emotion story corpus and scenario sets.", no_args_is_help=True)
model_app = typer.Typer(help="Load models and check them.", no_args_is_help=True)


# ---------------------------------------------------------------------------- corpus


@corpus_app.command("stats")
def corpus_stats(
    source: Annotated[str, typer.Argument(help="'shipped' or a corpus file/folder.")] = "shipped",
    text_column: str = "text", label_column: str = "emotion",
) -> None:
    """Counts per emotion, split and narration, and a length histogram."""
    from saekit.corpus import load_corpus, stats

    records = load_corpus(source, text_column=text_column, label_column=label_column)
    s = stats(records)
    table = Table(title=f"corpus {source}: {s['records']} records, {s['topics']} topics")
    table.add_column("emotion")
    table.add_column("records", justify="right")
    table.add_column("train", justify="right")
    table.add_column("test", justify="right")
    for emo, n in s["emotions"].items():
        tr = sum(1 for r in records if r.emotion == emo and r.split == "train")
        table.add_row(emo or "(none)", str(n), str(tr), str(n - tr))
    out_console.print(table)
    for k in ("splits", "narration", "length_histogram", "words_min_mean_max"):
        out_console.print(f"{k}: {s[k]}")


@corpus_app.command("check")
def corpus_check(
    source: Annotated[str, typer.Argument(help="'shipped' or a corpus file/folder.")] = "shipped",
    text_column: str = "text", label_column: str = "emotion",
    body_words: Annotated[Optional[Path], typer.Option(help="Body-part word list (default saekit/corpus/style/body_words.txt).")] = None,
    cognition_words: Annotated[Optional[Path], typer.Option(help="Cognition verb list (default .../cognition_words.txt).")] = None,
    db: Annotated[Optional[Path], typer.Option(help="Database with emotion vectors of this corpus: correlate their "
                                                    "principal components with the style statistics and valence.")] = None,
    model: Annotated[Optional[str], typer.Option(help="With --db: only this model's vectors (default: every model).")] = None,
    ratings: Annotated[Optional[Path], typer.Option(help="With --db: CSV of human valence ratings (word, valence, arousal).")] = None,
    corpus_id: Annotated[Optional[str], typer.Option(help="With --db: the corpus id the vectors were ranked under "
                                                          "(default: the source as given, 'shipped' for the shipped one).")] = None,
    tokenizer: Annotated[str, typer.Option(help="Whose tokenizer counts tokens per story: a model name or folder "
                                                "(no weights are loaded), or 'none'.")] = "smollm2-135m-instruct",
) -> None:
    """Style statistics per emotion and how unequal they are; with --db, whether the vectors' principal
    components track style rather than valence (stored in the database, warned about when they do)."""
    from saekit.corpus import load_corpus
    from saekit.corpus_style import (
        WordLists,
        balance_problems,
        check_database,
        check_labels,
        mode_of,
        style_report,
        token_counts,
    )

    lists = WordLists.load(body_words, cognition_words)   # a bad word list fails before the corpus is read
    records = load_corpus(source, text_column=text_column, label_column=label_column)
    check_labels(records, source, label_column)
    counts = None
    if tokenizer.lower() != "none":
        from saekit.plan import plan_tokenizer

        tok, tok_note = plan_tokenizer(tokenizer)
        counts = token_counts(records, tok)
    rep = style_report(records, lists, counts)
    table = Table(title=f"corpus {source}: style per emotion (shares pooled over its stories"
                        + (f"; tokens: {tok_note})" if counts else ")"))
    for col in ("emotion", "stories", "tokens", "words", "body %", "quoted %", "cognition %", "first person", "topics", "modes"):
        table.add_column(col, justify="left" if col in ("emotion", "modes") else "right")
    for r in rep.rows:
        table.add_row(r.emotion, str(r.stories), "-" if r.tokens is None else f"{r.tokens:.0f}", f"{r.words:.0f}",
                      f"{100 * r.body_share:.2f}", f"{100 * r.quote_share:.1f}",
                      f"{100 * r.cognition_share:.2f}", f"{r.first_person:.0%}", str(r.topics),
                      " ".join(f"{m}:{n}" for m, n in sorted(r.modes.items())) or "-")
    out_console.print(table)
    for stat, spread in rep.inequality.items():
        out_console.print(f"{stat}: corpus mean {rep.corpus_mean[stat]:.4g}; emotions range {spread['min']:.4g}-"
                          f"{spread['max']:.4g} ({spread['max_over_min']:.2f}x), CV {spread['cv']:.3f}, furthest "
                          f"{spread['max_rel_dev']:.0%} from the mean", markup=False)
    if any(mode_of(r) for r in records):
        problems = balance_problems(records, lists)
        out_console.print("balance (modes 15-30%, shares within 25% of the mean, first/third person): "
                          + ("ok" if not problems else f"{len(problems)} problem(s)"), markup=False)
        for p in problems:
            out_console.print(f"  {p}", markup=False)
    if db is None:
        return
    from saekit.db import corpus_id_of
    from saekit.rank import read_ratings

    rated = {w: v for w, (v, _) in read_ratings(str(ratings) if ratings else None).items()}
    warned = False
    train = [r for r in records if r.split == "train"]   # the stories the vectors were built from, as rank measures
    rep_train = style_report(train, lists, counts) if any(r.emotion for r in train) else rep
    for check in check_database(db, corpus_id or corpus_id_of(source), rep_train, rated or None, model, records):
        grid = Table(title=f"{check.model_id} @ {check.hook}: Pearson r of each principal component over the emotions")
        grid.add_column("target")
        pcs = list(dict.fromkeys(r["predictor"] for r in check.rows))
        for pc in pcs:
            var = next(r["explained_variance"] for r in check.rows if r["predictor"] == pc)
            grid.add_column(f"{pc} ({var:.0%})", justify="right")
        for target in dict.fromkeys(r["target"] for r in check.rows):
            cells = {r["predictor"]: r for r in check.rows if r["target"] == target}
            grid.add_row(target, *[f"{cells[pc]['r']:+.2f}" if pc in cells and cells[pc]["r"] == cells[pc]["r"] else "-"
                                   for pc in pcs])
        out_console.print(grid)
        for w in check.warnings:
            warned = True
            console.print(f"[yellow]warning:[/] {escape(w)}", soft_wrap=True)
    out_console.print(f"stored in the style_geometry table of {db}"
                      + (" (warnings above)" if warned else "; no style statistic tracks a PC more than valence does"),
                      markup=False)


@corpus_app.command("validate")
def corpus_validate(
    source: Annotated[str, typer.Argument(help="'shipped' or a corpus file.")] = "shipped",
    text_column: str = "text", label_column: str = "emotion",
) -> None:
    """Check counts, lengths, topics, forbidden words and near-duplicates; exit 1 on problems."""
    from saekit.corpus import load_corpus, validate

    records = load_corpus(source, text_column=text_column, label_column=label_column)
    problems = validate(records)
    for p in problems:
        out_console.print(p, markup=False)
    if problems:
        console.print(f"[red]{len(problems)} problem(s)[/] in {len(records)} records")
        raise typer.Exit(1)
    console.print(f"[green]ok[/]: {len(records)} records, no problems")


GENERATE = C.ConfigOptions("saekit.generate:GenerateConfig", rename={"emotions": "emotion"},
                           types={"emotions": list[str], "topics": int},
                           help={"out": "Output jsonl (a .replies log and .report.json go beside it)."})


@corpus_app.command("generate", cls=C.config_command(GENERATE))
def corpus_generate(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Option(help="TOML file with GenerateConfig fields.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help=C.SET_HELP)] = None,
) -> None:
    """Generate a story corpus with the paper's protocol (emotion x topic prompts, parsed, validated, de-duplicated)."""
    from saekit.generate import GenerateConfig, generate_corpus, output_paths

    cfg = C.load(ctx, GenerateConfig, config, set_)
    with progress_bar() as bar:
        task = bar.add_task("generate", total=None, rate="")
        report = generate_corpus(cfg, progress=lambda done, total: bar.update(task, completed=done, total=total))
    records, _, report_path = output_paths(cfg.out)
    out_console.print(f"Wrote {report['accepted']} stories ({report['splits']}) to {records}; "
                      f"{report['rejected_total']} of {report['candidates']} candidates rejected: {report['rejected']}")
    if report.get("forbidden_words"):
        top = sorted(report["forbidden_words"].items(), key=lambda kv: -kv[1])[:5]
        out_console.print(f"commonest forbidden words: {top}")
    out_console.print(f"report: {report_path}")


# ---------------------------------------------------------------------------- model


@model_app.command("info")
def model_info(name: Annotated[str, typer.Argument(
        help=MODEL_HELP)] = "smollm2-135m-instruct") -> None:
    """Load a model and print its size and residual-stream hook names."""
    from saekit.model import d_model, d_vocab, hook_names, load_model, n_layers

    m = load_model(name)
    print_summary(name, {"layers": n_layers(m), "d_model": d_model(m), "vocab": d_vocab(m),
                          "hooks": f"blocks.{{0..{n_layers(m) - 1}}}.hook_resid_post (and {len(hook_names(m))} others)"})


@model_app.command("chat")
def model_chat(
    message: Annotated[str, typer.Argument(help="The user's message.")],
    model: str = "smollm2-135m-instruct",
    max_new_tokens: int = 60,
) -> None:
    """Answer one user message greedily, formatted with saekit's chat formatting."""
    from saekit.model import format_chat, generate, load_model

    m = load_model(model)
    prompt = format_chat(m.tokenizer, [{"role": "user", "content": message}])
    out_console.print(generate(m, m.tokenizer, prompt, max_new_tokens=max_new_tokens))
