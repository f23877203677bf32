"""The `saekit` command line: thin wiring of the library's stages, nothing computed here.

    cli.py          the root group (one error handler), the stages, the database, browse, experiments, study
    cli_config.py   options generated from a stage's config dataclass, and --set
    cli_inputs.py   corpus and model commands
    cli_exports.py  export commands
    cli_console.py  consoles, progress bars, summary tables

A stage's options are its config's fields: a new field is a new option (and a --set key) with no
edit here.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from saekit import cli_config as C
from saekit.cli_console import console, fmt, out_console, print_summary, progress_bar
from saekit.cli_exports import export_app
from saekit.cli_inputs import corpus_app, model_app
from saekit.errors import SaekitError


class _Commands(TyperGroup):
    """The root command group: every error saekit raises on purpose is handled here, once.

    A `SaekitError` (bad input, a failed step) prints its message and exits with code 2; with
    --debug it keeps its traceback. Any other exception is a bug and always shows its traceback.
    """

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (SaekitError, FileNotFoundError) as e:
            if ctx.params.get("debug"):
                raise
            console.print("[bold red]error:[/]", escape(str(e)), soft_wrap=True)
            raise typer.Exit(2) from None


app = typer.Typer(cls=_Commands, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Find, rank and intervene on the SAE features of a language model that represent emotions.")
app.add_typer(corpus_app, name="corpus")
app.add_typer(model_app, name="model")
app.add_typer(export_app, name="export")
SET = Annotated[Optional[list[str]], typer.Option("--set", help=C.SET_HELP)]


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error.")] = False) -> None:
    """Find, rank and intervene on the SAE features of a language model that represent emotions."""


# ---------------------------------------------------------------------------- harvest


HARVEST = C.ConfigOptions("saekit.harvest:HarvestConfig", rename={"hooks": "hook", "dataset_split": "split"}, help={
    "text_column": "Column holding the text.", "label_column": "Column holding the label.",
    "out": "Output folder for shards and manifest.", "batch_size": "Documents per forward pass."})


@app.command(cls=C.config_command(HARVEST))
def harvest(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Option(help="TOML file with HarvestConfig fields.")] = None,
    set_: SET = None,
) -> None:
    """Record residual-stream activations over a corpus into sharded safetensors (resumable)."""
    from saekit.activations import summarize
    from saekit.harvest import HarvestConfig
    from saekit.harvest import harvest as run_harvest

    cfg = C.load(ctx, HarvestConfig, config, set_)
    summary = _run_harvest(cfg, run_harvest)
    print_summary("harvest", summarize(Path(cfg.out)) | summary)


def _run_harvest(cfg, run_harvest) -> dict:
    start = time.perf_counter()
    state = {"tokens": 0}
    with progress_bar() as bar:
        task = bar.add_task("harvest", total=None, rate="")

        def progress(docs, total, tokens):
            state["tokens"] = tokens
            rate = tokens / max(time.perf_counter() - start, 1e-9)
            bar.update(task, completed=docs, total=total, rate=f"{rate:,.0f} tok/s")

        run_harvest(cfg, progress=progress)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 1), "tokens/s (this run)": round(state["tokens"] / max(seconds, 1e-9))}


# ---------------------------------------------------------------------------- SAEs


sae_app = typer.Typer(help="Load published or local SAEs and check them against a model.", no_args_is_help=True)
app.add_typer(sae_app, name="sae")


TRAIN = C.ConfigOptions("saekit.train.config:TrainConfig")


@app.command(cls=C.config_command(TRAIN))
def train(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(help="Training TOML, e.g. train/smollm2-135m-l20-topk.toml.")],
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in the output folder.")] = False,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a config field, key=value (sae.k=64 for the [sae] table); repeatable.")] = None,
) -> None:
    """Train an SAE from a config on harvested (or streamed) activations; saves SAELens format + metrics."""
    from saekit.train import LEGACY_SAE_KEYS, TrainConfig, load_train_config, read_metrics, train_sae

    overrides = C.overrides(ctx, TrainConfig, set_, tuple(LEGACY_SAE_KEYS))
    cfg = load_train_config(config, overrides)
    with progress_bar() as bar:
        task = bar.add_task("train", total=cfg.total_steps, rate="")

        def progress(r) -> None:
            bar.update(task, completed=r.step, rate=f"loss {r.loss:.4g}  L0 {r.l0:.1f}  "
                                                      f"EV {r.explained_variance:.3f}  {r.tokens_per_s:,.0f} tok/s")

        folder = train_sae(cfg, progress=progress, resume=resume)
    metrics = read_metrics(folder)
    act, lm = metrics.get("activations") or {}, metrics.get("lm") or {}
    print_summary(f"SAE saved to {folder}", {
        "explained variance (held out)": fmt(act.get("explained_variance")), "mean L0": fmt(act.get("l0")),
        "reconstruction cosine": fmt(act.get("cosine")), "dead fraction": fmt(act.get("dead_fraction")),
        "dense fraction": fmt(act.get("dense_fraction")), "LM loss recovered": fmt(lm.get("loss_recovered")),
        "LM loss recovered (with error)": fmt(lm.get("loss_recovered_with_error")),
        "KL vs clean model": fmt(lm.get("kl_sae")), "load it": f"sae_lens.SAE.load_from_disk({str(folder)!r})"})


@sae_app.command("load")
def sae_load(
    source: Annotated[str, typer.Argument(help="A local SAELens folder, or a sae-lens registry release.")],
    sae_id: Annotated[Optional[str], typer.Option("--id", help="SAE id within the release.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Check d_in and hook against this model.")] = None,
) -> None:
    """Load an SAE (local folder always; sae-lens registry when the hub is reachable) and describe it."""
    from saekit.model import load_model
    from saekit.sae import describe, load_sae

    m = load_model(model) if model else None
    loaded = load_sae(source, sae_id, model=m)
    print_summary("SAE", describe(loaded) | ({"checked against": model} if model else {}))


# ---------------------------------------------------------------------------- rank and the database


RANK = C.ConfigOptions("saekit.rank:RankConfig", paths=("db", "ratings"))


@app.command(cls=C.config_command(RANK))
def rank(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Option(help="TOML file with RankConfig fields.")] = None,
    set_: SET = None,
) -> None:
    """Rank SAE features by emotion selectivity, build emotion vectors, and store all in the database."""
    from saekit.db import Database
    from saekit.rank import RankConfig, run_rank

    cfg = C.load(ctx, RankConfig, config, set_)
    result = _rank(cfg, Database, run_rank)
    print_summary("rank", result["summary"])


def _rank(cfg, Database, run_rank):
    from saekit.activations import Activations
    from saekit.db import check_database_path
    from saekit.model import load_model

    check_database_path(cfg.db)  # a wrong --db is refused before the model loads
    acts = Activations.open(cfg.activations)
    if cfg.eval_corpus:
        from saekit.rank import preflight

        preflight(cfg)  # so is an eval corpus without labels or emotions in common
    model = load_model(acts.manifest["model"], dtype=acts.manifest["config"].get("dtype", "float32"))  # as harvested
    loaded = None
    if cfg.sae:
        from saekit.sae import load_sae

        loaded = load_sae(cfg.sae, cfg.sae_id, model=model).sae
    with Database(cfg.db) as db:
        with console.status("ranking features and building emotion vectors"):
            return run_rank(cfg, sae=loaded, model=model, tokenizer=model.tokenizer, db=db)


@app.command(context_settings={"ignore_unknown_options": True})   # a statement may start with a -- comment
def query(
    sql: Annotated[str, typer.Argument(help="One read-only SQL statement, a .sql file holding one, or - to read stdin.")],
    db: Annotated[Optional[Path], typer.Option(help="Database file (default artifacts/saekit.duckdb).")] = None,
    csv: Annotated[Optional[Path], typer.Option(help="Write the result as CSV here.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the result as JSON here.")] = None,
    parquet: Annotated[Optional[Path], typer.Option(help="Write the result as Parquet here.")] = None,
    limit: Annotated[int, typer.Option(min=0, help="Rows to print (files get all rows).")] = 50,
    allow_file_reads: Annotated[bool, typer.Option(
        "--allow-file-reads", help="Let the query read other files (read_csv, read_text, glob); writing stays refused.")] = False,
) -> None:
    """Run read-only SQL on the feature database; print a table or write CSV, JSON or Parquet."""
    from saekit.db import head, open_readonly, write_batches

    sql = _statement(sql)
    outputs = {fmt: path for fmt, path in (("csv", csv), ("json", json_out), ("parquet", parquet)) if path}
    with open_readonly(db, allow_files=allow_file_reads) as d:
        if outputs:
            rows = write_batches(d.stream(sql), outputs)
        else:
            table, more = head(d.stream(sql, batch_rows=limit + 1), limit)
    if outputs:
        console.print(f"wrote {rows} rows to {', '.join(map(str, outputs.values()))}", markup=False)
        return
    out = Table(show_lines=False)
    for name in table.column_names:
        out.add_column(name)
    for row in table.to_pylist():
        out.add_row(*[_cell(v) for v in row.values()])
    out_console.print(out)
    if more:
        console.print(f"(more than {limit} rows; --limit N to show more, --csv/--json/--parquet to export all)",
                      soft_wrap=True)


def _statement(arg: str) -> str:
    """The SQL itself: the argument, the contents of the .sql file it names, or stdin for '-'."""
    if arg == "-":
        return sys.stdin.read()
    if arg.strip().lower().endswith(".sql") and "\n" not in arg:
        path = Path(arg.strip())
        if not path.is_file():
            raise SaekitError(f"no SQL file {path}")
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise SaekitError(f"cannot read the SQL file {path}: {e}") from e
    return arg


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list) and len(v) > 8:
        return f"[{len(v)} values]"
    return escape(str(v))


@app.command("db")
def db_tables(db: Annotated[Optional[Path], typer.Option(help="Database file (default artifacts/saekit.duckdb).")] = None) -> None:
    """List the feature database's tables with row counts."""
    from saekit.db import Database

    with Database(db, read_only=True) as d:
        tables = d.tables()
        path = d.path
    out = Table(title=str(path))
    out.add_column("table")
    out.add_column("rows", justify="right")
    for name, n in tables:
        out.add_row(name, str(n))
    out_console.print(out)


@app.command()
def browse(
    db: Annotated[Optional[Path], typer.Option(help="Database file (default artifacts/saekit.duckdb).")] = None,
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8765,
    host: Annotated[str, typer.Option(help="Address to listen on; the default serves this machine only.")] = "127.0.0.1",
    export: Annotated[Optional[Path], typer.Option(help="Write the pages as static files into this folder instead "
                                                        "of serving them.")] = None,
    query_seconds: Annotated[float, typer.Option(min=0.1, help="Time limit of one SQL box query.")] = 30.0,
    query_memory: Annotated[str, typer.Option(help="Memory limit of one SQL box query (DuckDB's, e.g. 1GB).")] = "1GB",
    model: Annotated[Optional[str], typer.Option(help="Load this model (as ranked, e.g. smollm2-135m-instruct) for the "
                                                      "steer page: generations side by side, clean and edited.")] = None,
    steer_out: Annotated[Path, typer.Option(help="Where the steer page saves experiment specs.")] = Path("artifacts/steer"),
    dtype: Annotated[str, typer.Option(help="The steer page's compute dtype (bfloat16: about 2.5x the tokens/s of float32 "
                                            "on a CPU; saved specs record it).")] = "bfloat16",
) -> None:
    """Browse features, emotions and experiments in a web page (read-only), or export the pages."""
    from saekit.browse import export_site, serve
    from saekit.browse.server import Queries

    if export is not None:
        done = export_site(db, export)
        out_console.print(f"wrote {done['pages']} pages ({done['feature_pages']} features) to {done['folder']} "
                          f"in {done['seconds']} s; open {Path(done['folder']) / 'index.html'}", markup=False)
    else:
        playground = None
        if model is not None:   # loaded now: a model or SAE that cannot load is reported at start
            from saekit.browse.steer import open_playground
            from saekit.db import check_database_path

            with console.status(f"loading {model} for the steer page"):
                playground = open_playground(check_database_path(db, must_exist=True), model, steer_out, dtype)
        serve(db, host, port, announce=lambda line: out_console.print(line, markup=False),
              queries=Queries(query_seconds, query_memory), playground=playground)


# ---------------------------------------------------------------------------- experiments


experiment_app = typer.Typer(help="Ablate, clamp and steer features and emotion vectors from a spec.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("run")
def experiment_run(
    spec: Annotated[Path, typer.Argument(help="Experiment spec, e.g. analysis/experiments/emotion_word_probes.toml.")],
    db: Annotated[Optional[Path], typer.Option(help="Database file (default: the spec's, else artifacts/saekit.duckdb).")] = None,
    set_: SET = None,
) -> None:
    """Run an experiment spec and store every measurement in the feature database."""
    from saekit.experiments import ExperimentSpec, run_experiment

    chosen: Path | dict = spec
    if set_:  # the file's table with the assignments on top; the spec's own checks then name any bad value
        from saekit.config import load_toml, set_key

        chosen = load_toml(spec)
        for key, value in C.assignments(ExperimentSpec, set_).items():
            set_key(chosen, key, value)
    with progress_bar() as bar:
        task = bar.add_task("experiment", total=None, rate="")
        exp_id = run_experiment(chosen, db_path=db, progress=lambda done, total, what: bar.update(
            task, completed=done, total=total, rate=what))
    out_console.print(f"experiment {exp_id} stored in {db or 'the database'}; next: saekit experiment report {exp_id}")


@experiment_app.command("store")
def experiment_store(
    file: Annotated[Path, typer.Argument(help="The unstored_results.json a run left when the database stayed locked.")],
    db: Annotated[Optional[Path], typer.Option(help="Database file (default: the one the run was writing to).")] = None,
) -> None:
    """Store the measurements of a run that finished while another process held the database."""
    from saekit.experiments.runner import store_kept

    exp_id = store_kept(file, db)
    out_console.print(f"experiment {exp_id} stored; next: saekit experiment report {exp_id}")


@experiment_app.command("report")
def experiment_report(
    experiment: Annotated[str, typer.Argument(help="Experiment id, run id, or spec name (its latest run).")],
    db: Annotated[Optional[Path], typer.Option(help="Database file (default artifacts/saekit.duckdb).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder for the PNG plots and summary.json.")] = None,
) -> None:
    """Print an experiment's effects with intervals and controls, and save its plots as PNG."""
    from saekit.experiments.summary import report

    summary = report(experiment, db_path=db, out_dir=out)
    table = Table(title=summary["title"])
    for c in summary["columns"]:
        table.add_column(c)
    for row in summary["rows"]:
        table.add_row(*[escape(v) for v in row])
    out_console.print(table)
    for note in summary["notes"]:
        out_console.print(f"note: {note}", markup=False)
    for g in summary["generations"][:12]:
        out_console.print(f"[{g['condition']} {g['strength']}] {g['prompt']!r} -> {g['reply']!r}", markup=False)
    for p in summary["plots"]:
        out_console.print(f"plot: {p}", markup=False)


# ---------------------------------------------------------------------------- comparisons


@app.command()
def compare(
    a: Annotated[str, typer.Argument(help="Side A: MODEL@HOOK (or MODEL@LAYER) with emotion vectors, or an sae_id.")],
    b: Annotated[str, typer.Argument(help="Side B, the same way.")],
    db: Annotated[Optional[Path], typer.Option(help="Database file (default artifacts/saekit.duckdb).")] = None,
    corpus: Annotated[Optional[str], typer.Option(help="Corpus id (default: the one both sides were ranked on).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder for compare.json, compare.md and compare.png "
                                                     "(default artifacts/compare/A__vs__B).")] = None,
    permutations: Annotated[int, typer.Option(min=0, help="Permutations behind each RSA p-value.")] = 10000,
    seed: Annotated[int, typer.Option(help="Seed of the permutations and k-means.")] = 0,
) -> None:
    """Compare two models, layers or SAEs on one corpus, beside a corpus-only lexical baseline; recorded in the database."""
    from saekit.compare import compare as run
    from saekit.compare_page import check_out, default_out, pair_rows, side_rows, write_report

    folder = out or default_out(a, b)
    check_out(folder)
    with console.status("comparing"):
        result = run(db, a, b, corpus_id=corpus, n_permutations=permutations, seed=seed)
        files = write_report(result, folder)
    out_console.print("\n".join(f"{k}: {result.sides[key].label}" for k, key in (("A", "a"), ("B", "b"),
                                                                                 ("baseline", "baseline"))),
                      markup=False, soft_wrap=True)
    for title, (header, rows) in ((f"on corpus {result.corpus_id}", side_rows(result, tags_only=True)),
                                  ("pairs", pair_rows(result))):
        table = Table(title=title)
        for h in header:
            table.add_column(escape(h), overflow="fold")
        for row in rows:
            table.add_row(*[escape(v) for v in row])
        out_console.print(table)
    for note in result.notes:
        out_console.print(f"note: {note}", markup=False)
    out_console.print(f"comparison {result.comparison_id}; wrote {', '.join(map(str, files.values()))}",
                      markup=False, soft_wrap=True)


# ---------------------------------------------------------------------------- study (the main job)


STUDY = C.ConfigOptions("saekit.study:StudyConfig")


@app.command(cls=C.config_command(STUDY))
def study(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(help="Study TOML (see analysis/study.toml).")] = Path("analysis/study.toml"),
    set_: SET = None,
    plan: Annotated[bool, typer.Option("--plan", help="Print each step's tokens, FLOPs, time, memory and disk; run nothing.")] = False,
    device_profile: Annotated[str, typer.Option(help="With --plan: h100, h200 or a100 instead of timing this machine.")] = "",
    gpus: Annotated[int, typer.Option(help="With --plan: processes under torchrun sharing harvest and training.")] = 1,
) -> None:
    """The main job: harvest, train the SAE, rank, run experiments, write the report; finished steps are skipped."""
    from saekit.study import StudyConfig, load_study_config, run_study

    overrides = C.overrides(ctx, StudyConfig, set_)
    if plan:
        from saekit.plan import format_plan, plan_study

        out_console.print(format_plan(plan_study(config, device_profile, gpus, overrides)), markup=False, soft_wrap=True)
        return
    import os

    from saekit.db import check_database_path

    started = time.perf_counter()
    cfg = load_study_config(config, overrides)
    check_database_path(cfg.db)  # before hours of harvesting and training, not at the ranking step
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 draws and prints
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=console, disable=not main) as bar:
        overall = bar.add_task("study", total=None, note="")
        current = {"task": None}

        def on_step(i, n, step, skipped):
            bar.update(overall, total=n, completed=i, description=f"study: step {i + 1}/{n}")
            if current["task"] is not None:
                bar.update(current["task"], completed=100)
            current["task"] = bar.add_task(f"  {step.name}", total=100, note="skipped (unchanged)" if skipped else "")
            if skipped:
                bar.update(current["task"], completed=100)
            task = current["task"]
            return lambda frac, note="": bar.update(task, completed=100 * frac, note=note)

        results = run_study(cfg, on_step=on_step)
        bar.update(overall, completed=bar.tasks[0].total)
    if not main:
        return
    for name, summary in results.items():
        print_summary(name, {k: fmt(v) for k, v in summary.items()} if isinstance(summary, dict) else {"": summary})
    out_console.print(f"\nstudy finished in {time.perf_counter() - started:.0f} s; report: {Path(cfg.out) / 'report.html'}")
    out_console.print("next, ask the feature database your own questions, e.g.:")
    out_console.print(f'  saekit query --db {cfg.db} "SELECT emotion, feature, auroc, cohens_d, q_value '
                      'FROM feature_emotion_stats WHERE selectivity_rank = 1 ORDER BY auroc DESC"', markup=False)
    out_console.print(f'  saekit query --db {cfg.db} "SELECT hook, method, accuracy, chance FROM probe_results"',
                      markup=False)
    out_console.print(f"or look at any feature, emotion and experiment in a web page: saekit browse --db {cfg.db}",
                      markup=False)



def main() -> None:
    app()


if __name__ == "__main__":
    main()
