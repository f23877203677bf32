"""The main job: the whole emotion study from one config, as content-hashed, resumable steps.

Steps: harvest -> train (or load) the SAE -> rank features and build emotion vectors ->
experiments -> report. Each step's key hashes its own config and the keys of the steps it
reads, and is recorded in <out>/steps.json when it finishes; a rerun skips steps whose key is
unchanged and whose outputs exist, so a second run takes seconds and a changed config reruns
only what depends on it. Steps write their outputs atomically or resumably, so an interrupted
run continues where it stopped.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from saekit import distributed as D
from saekit.artifacts import atomic_write_json, content_hash
from saekit.config import load_config, to_dict
from saekit.model import DEFAULT_MODEL

STEPS_FILE = "steps.json"


@dataclass
class StudyConfig:
    model: str = DEFAULT_MODEL
    """Model folder, hub name, "smollm2-135m-instruct" (embedded default), "gemma3-270m" (saekit[gemma]),
    "qwen2.5-coder-1.5b-instruct" (saekit[qwen]) or "tiny"."""
    hook: str = "blocks.20.hook_resid_post"
    """Where the SAE reads and the experiments intervene."""
    vector_hooks: list[str] = field(default_factory=lambda: ["blocks.10.hook_resid_post", "blocks.15.hook_resid_post"])
    """Extra layers for emotion vectors (pooled vectors only; per-token activations are kept at `hook`)."""
    corpus: str = "shipped"
    """The labelled stories: what features are ranked on and vectors built from."""
    broad_corpus: str = ""
    """Broad text the SAE also trains on ("broad", "chitchat", "wiki": saekit.broad; analysis/study.toml
    uses "broad"); its held-out part gives each feature's outside examples. Never ranked. Empty: the SAE
    trains on the stories alone."""
    broad_tokens: int = 70_000
    """Tokens of broad text harvested (about one document in seven held out)."""
    broad_share: float = 0.6
    """The broad text's share of every training batch (the stories give the rest)."""
    out: str = "artifacts/study"
    db: str = "artifacts/saekit.duckdb"
    train_config: str = "train/smollm2-135m-l20-topk.toml"
    """SAE training config; its model, hook, activations and out are set by the study."""
    sae: str = ""
    """A pretrained SAE (folder or sae-lens release) to use instead of training one."""
    sae_id: str = ""
    experiments: list[str] = field(default_factory=list)
    """Experiment specs to run (analysis/experiments/*.toml)."""
    ratings: str = ""
    """Optional CSV of human valence/arousal ratings for the geometry check."""
    eval_corpus: str = ""
    """Optional extra labelled corpus (a file or dataset folder) the probes are also scored on (`saekit rank --eval-corpus`)."""
    batch_size: int = 8
    max_tokens: int = 256
    dtype: str = "float32"
    """Model compute dtype of the harvest, the ranking's model and the experiments (float32 or bfloat16)."""
    device: str = "cpu"
    """"cuda" runs every step on the GPU (checked before any weights load)."""
    limit: int = 0
    """Use only the first N corpus records (0 = all), for quick runs."""
    train_tokens: int = 0
    """Override the training config's training_tokens (0 = keep)."""
    seed: int = 0

    def validate(self) -> None:
        for name in ("batch_size", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("limit", "train_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.broad_corpus:
            from saekit.broad import NAMES

            if self.broad_corpus not in NAMES:
                raise ValueError(f"broad_corpus {self.broad_corpus!r} is not one of {NAMES} (or \"\" for none)")
            if self.broad_tokens < 1 or not 0 < self.broad_share < 1:
                raise ValueError(f"broad_tokens must be at least 1 and broad_share between 0 and 1, got "
                                 f"{self.broad_tokens} and {self.broad_share}")
        if self.hook in self.vector_hooks:
            raise ValueError(f"vector_hooks repeats the SAE hook {self.hook}")
        if not self.sae and not Path(self.train_config).is_file():
            raise ValueError(f"train_config {self.train_config} does not exist (or give sae = ...)")
        for spec in self.experiments:
            if not Path(spec).is_file():
                raise ValueError(f"experiment spec {spec} does not exist")
        if self.eval_corpus and not Path(self.eval_corpus).exists():
            raise ValueError(f"eval_corpus {self.eval_corpus} does not exist")


@dataclass
class Step:
    name: str
    key: str
    run: Callable[[Callable[[float, str], None]], dict[str, Any]]
    """Does the work; receives tick(fraction_done, note); returns a summary."""
    outputs: list[Path]
    parallel: bool = False
    """Under torchrun every process runs it (harvest, training: data-parallel); else rank 0 alone."""


STEP_TIMEOUT_MINUTES = 24 * 60
"""How long torchrun's other processes wait at a barrier while rank 0 ranks or runs experiments."""


class StudyRun:
    """Builds the steps of a study and runs those whose key changed."""

    def __init__(self, cfg: StudyConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.record_path = self.out / STEPS_FILE
        self.record: dict[str, Any] = json.loads(self.record_path.read_text()) if self.record_path.exists() else {}

    # ------------------------------------------------------------------ step definitions

    def harvest_config(self):
        from saekit.harvest import HarvestConfig

        c = self.cfg
        return HarvestConfig(model=c.model, hooks=[c.hook, *c.vector_hooks], token_hooks=[c.hook], corpus=c.corpus,
                             out=str(self.out / "activations"), batch_size=c.batch_size, max_tokens=c.max_tokens,
                             dtype=c.dtype, device=c.device, limit=c.limit)

    def broad_config(self):
        """The broad-text harvest: the SAE hook only, in the study's dtype, stored in bfloat16 (it feeds the
        SAE and its outside examples, never the ranking)."""
        from saekit.harvest import HarvestConfig

        c = self.cfg
        return HarvestConfig(model=c.model, hooks=[c.hook], corpus=c.broad_corpus, out=str(self.out / "broad"),
                             batch_size=c.batch_size, max_tokens=c.max_tokens, dtype=c.dtype, store_dtype="bfloat16",
                             device=c.device, max_total_tokens=c.broad_tokens)

    def train_config(self):
        from saekit.train import load_train_config

        overrides = {"model": self.cfg.model, "hook": self.cfg.hook, "activations": str(self.out / "activations"),
                     "out": str(self.out / "sae"), "seed": self.cfg.seed, "device": self.cfg.device}
        if self.cfg.broad_corpus:
            overrides |= {"mix": [self.broad_config().out], "mix_shares": [self.cfg.broad_share]}
        if self.cfg.train_tokens:
            overrides["training_tokens"] = self.cfg.train_tokens
        return load_train_config(self.cfg.train_config, overrides)

    def steps(self) -> list[Step]:
        from saekit.db import corpus_id_of
        from saekit.rank import RankConfig

        c = self.cfg
        hcfg = self.harvest_config()
        k_harvest = content_hash(["harvest", to_dict(hcfg), _corpus_fingerprint(c.corpus)])
        bcfg = self.broad_config() if c.broad_corpus else None
        k_broad = content_hash(["harvest broad", to_dict(bcfg), _corpus_fingerprint(c.broad_corpus)]) if bcfg else ""
        if c.sae:
            sae_path, k_sae = c.sae, content_hash(["sae", c.sae, c.sae_id])
            train_step = None
        else:
            tcfg = self.train_config()
            k_sae = content_hash(["train", to_dict(tcfg), k_harvest] + ([k_broad] if k_broad else []))
            sae_path = tcfg.out
            train_step = Step("train SAE", k_sae, lambda tick: self._train(tcfg, k_sae, tick), [Path(tcfg.out)],
                              parallel=True)
        rcfg = RankConfig(activations=hcfg.out, sae=sae_path, sae_id=c.sae_id or None, db=c.db,
                          ratings=c.ratings or None, seed=c.seed, corpus_id=corpus_id_of(c.corpus),
                          eval_corpus=c.eval_corpus or None)
        k_rank = content_hash(["rank", to_dict(rcfg), k_harvest, k_sae]
                              + ([_corpus_fingerprint(c.eval_corpus)] if c.eval_corpus else []))
        steps = [Step("harvest activations", k_harvest, lambda tick: self._harvest(hcfg, tick), [Path(hcfg.out)],
                      parallel=True)]
        if bcfg:
            steps.append(Step("harvest broad text", k_broad, lambda tick: self._harvest(bcfg, tick), [Path(bcfg.out)],
                              parallel=True))
        if train_step:
            steps.append(train_step)
        steps.append(Step("rank features and vectors", k_rank, lambda tick: self._rank(rcfg, tick),
                          [self.out / "rank_summary.json"]))
        keys = [k_rank]
        if bcfg:
            from saekit.outside import OutsideConfig

            ocfg = OutsideConfig(activations=bcfg.out, sae=sae_path, sae_id=c.sae_id, db=c.db)
            k_outside = content_hash(["outside", to_dict(ocfg), k_broad, k_rank])
            keys.append(k_outside)
            steps.append(Step("outside examples", k_outside, lambda tick: self._outside(ocfg, tick),
                              [self.out / "outside_summary.json"]))
        for spec in c.experiments:
            k_exp = content_hash(["experiment", Path(spec).read_text(), k_rank, c.model, c.hook]
                                 + ([c.dtype] if c.dtype != "float32" else []))  # float32 keys stay as they were
            keys.append(k_exp)
            steps.append(Step(f"experiment {Path(spec).stem}", k_exp,
                              functools.partial(self._experiment, spec, k_exp, sae_path),
                              [self.out / "experiments" / f"{Path(spec).stem}.json"]))
        k_report = content_hash(["report", keys])
        steps.append(Step("write report", k_report, lambda tick: self._report(tick), [self.out / "report.html"]))
        return steps

    # ------------------------------------------------------------------ step bodies

    def _harvest(self, hcfg, tick) -> dict[str, Any]:
        from saekit.activations import summarize
        from saekit.harvest import harvest

        harvest(hcfg, progress=lambda docs, total, tokens: tick(docs / max(total, 1), f"{tokens:,} tokens"))
        return summarize(Path(hcfg.out))

    def _train(self, tcfg, key: str, tick) -> dict[str, Any]:
        from saekit.sae import recover_sae_folder
        from saekit.train import list_checkpoints, read_metrics, train_sae

        out = Path(tcfg.out)
        if D.is_main():  # under torchrun one process tidies the folder, the others wait for it
            recover_sae_folder(out)  # a kill inside save_sae can leave the stamp in its aside folder
            stamp = out / "study_key.json"
            same = stamp.exists() and json.loads(stamp.read_text()).get("key") == key
            if out.exists() and not same:
                shutil.rmtree(out)  # an SAE from another config: retrain from scratch
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(stamp, {"key": key})
        D.barrier()
        resume = bool(list_checkpoints(out))
        train_sae(tcfg, resume=resume, progress=lambda r: tick(r.step / r.total_steps,
                                                               f"L0 {r.l0:.1f}  EV {r.explained_variance:.3f}"))
        act = read_metrics(out).get("activations") or {}
        return {"sae": str(out), "explained_variance": act.get("explained_variance"), "l0": act.get("l0")}

    def _rank(self, rcfg, tick) -> dict[str, Any]:
        from saekit.activations import Activations
        from saekit.db import Database
        from saekit.model import load_model
        from saekit.rank import run_rank
        from saekit.sae import load_sae

        tick(0.05, "loading")
        model = load_model(Activations.open(rcfg.activations).manifest["model"], device=self.cfg.device,
                           dtype=self.cfg.dtype)
        sae = load_sae(rcfg.sae, rcfg.sae_id, model=model).sae
        tick(0.2, "ranking")
        with Database(rcfg.db) as db:
            result = run_rank(rcfg, sae=sae, model=model, tokenizer=model.tokenizer, db=db)
        summary = result["summary"]
        atomic_write_json(self.out / "rank_summary.json", summary)
        return summary

    def _outside(self, ocfg, tick) -> dict[str, Any]:
        from saekit.db import Database
        from saekit.model import load_tokenizer
        from saekit.outside import run_outside
        from saekit.sae import load_sae

        tick(0.1, "encoding held-out broad text")
        sae = load_sae(ocfg.sae, ocfg.sae_id or None).sae
        with Database(ocfg.db) as db:
            summary = run_outside(ocfg, sae, load_tokenizer(self.cfg.model), db)
        atomic_write_json(self.out / "outside_summary.json", summary)
        return summary

    def _experiment(self, spec_path: str, key: str, sae_path: str, tick) -> dict[str, Any]:
        """Run a shipped spec against this study's model, hook, SAE and database, then report it."""
        from saekit.config import load_toml
        from saekit.db import corpus_id_of
        from saekit.experiments import run_experiment
        from saekit.experiments.summary import report
        from saekit.model import load_model

        spec = load_toml(spec_path)
        folder = self.out / "experiments" / Path(spec_path).stem
        spec.update(model=self.cfg.model, hook=self.cfg.hook, db=self.cfg.db, out=str(folder), dtype=self.cfg.dtype,
                    corpus_id=corpus_id_of(self.cfg.corpus))   # the rows this study's ranking wrote
        if spec.get("sae"):
            spec["sae"] = sae_path
        model = (load_model(self.cfg.model, device=self.cfg.device, dtype=self.cfg.dtype)
                 if self.cfg.device != "cpu" else None)
        exp_id = run_experiment(spec, db_path=self.cfg.db, model=model,
                                progress=lambda done, total, what: tick(done / max(total, 1), what))
        summary = report(exp_id, db_path=self.cfg.db, out_dir=folder)
        record = {"experiment_id": exp_id, "task": summary["task"], "figures": summary["plots"],
                  "sentences": {Path(p).name: experiment_sentence(summary) for p in summary["plots"]},
                  "table_html": _table_html(summary)}
        atomic_write_json(self.out / "experiments" / f"{Path(spec_path).stem}.json", record)
        return {"experiment_id": exp_id, "finding": experiment_sentence(summary)}

    def _report(self, tick) -> dict[str, Any]:
        from saekit.study_page import write_report

        paths = write_report(self.cfg, self.out, progress=tick)
        return {"report": str(paths["html"]), "figures": len(paths["png"])}

    # ------------------------------------------------------------------ running

    def is_done(self, step: Step) -> bool:
        rec = self.record.get(step.name)
        return bool(rec and rec["key"] == step.key and all(p.exists() for p in step.outputs))

    def preflight(self) -> None:
        """What can be checked before the first forward pass: every experiment spec (fields, task and
        prompt checks) and the eval corpus's labels against the study corpus's emotions."""
        from saekit.corpus import NEUTRAL, load_corpus
        from saekit.experiments import load_spec
        from saekit.rank import RankConfig, read_eval_corpus

        for spec in self.cfg.experiments:
            load_spec(spec)
        if self.cfg.eval_corpus:
            emotions = sorted({r.emotion for r in load_corpus(self.cfg.corpus) if r.emotion and r.emotion != NEUTRAL})
            read_eval_corpus(RankConfig(eval_corpus=self.cfg.eval_corpus), emotions)

    def run(self, on_step: Callable[[int, int, Step, bool], Callable[[float, str], None]] | None = None) -> dict:
        """Run the steps whose key changed. Under torchrun (WORLD_SIZE > 1) every process runs the
        parallel steps (harvest and training, data-parallel) and rank 0 alone runs the rest and
        writes the record, while the others wait at a barrier; every process decides what to skip
        from the same steps.json, read before the first step."""
        check_device(self.cfg.device)
        D.setup(self.cfg.device, timeout_minutes=STEP_TIMEOUT_MINUTES)
        self.preflight()
        if D.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out / "study_config.json", to_dict(self.cfg))
        D.barrier()
        steps = self.steps()
        results: dict[str, Any] = {}
        for i, step in enumerate(steps):
            skip = self.is_done(step)
            tick = on_step(i, len(steps), step, skip) if on_step else (lambda f, note="": None)
            if skip:
                results[step.name] = dict(self.record[step.name]["summary"], skipped=True)
                continue
            started = time.perf_counter()
            if step.parallel or D.is_main():
                results[step.name] = summary = step.run(tick)
                if D.is_main():
                    self.record[step.name] = {"key": step.key, "summary": summary, "processes": D.world(),
                                              "seconds": round(time.perf_counter() - started, 1),
                                              "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                    atomic_write_json(self.record_path, self.record)
            else:
                results[step.name] = {"run by": "rank 0"}
            D.barrier()
        return results


def experiment_sentence(summary: dict[str, Any]) -> str:
    """One sentence from an experiment report's numbers, worded by the experiment's task."""
    from saekit.experiments.summary import sentence

    return sentence(summary)


def _table_html(summary: dict[str, Any]) -> str:
    import html

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in summary["columns"])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in summary["rows"])
    notes = "".join(f"<p>{html.escape(n)}</p>" for n in summary["notes"])
    return f"<table><tr>{head}</tr>{body}</table>{notes}"


def _corpus_fingerprint(corpus: str) -> str:
    """Content hash of the corpus files, so editing the corpus reruns the harvest."""
    from saekit.artifacts import file_sha256
    from saekit.broad import SOURCES, data_file, is_broad
    from saekit.corpus import corpus_root

    if is_broad(corpus):   # the installed data files it reads
        names = list(SOURCES) if corpus == "broad" else [corpus]
        return content_hash([file_sha256(data_file(SOURCES[n])) for n in names])
    if corpus == "shipped":
        root = corpus_root()
        files = sorted((root / "stories").glob("*.jsonl")) + [root / "neutral.jsonl"]
    else:
        p = Path(corpus)
        files = sorted(p.rglob("*")) if p.is_dir() else [p] if p.exists() else []
    return content_hash([file_sha256(f) for f in files if f.is_file()])


def check_device(device: str) -> None:
    """A CUDA study on a machine without CUDA stops here, before hours of loading and harvesting."""
    import torch

    from saekit.config import ConfigError

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device = {device!r} but torch.cuda.is_available() is False on this machine "
                          f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); "
                          "run on a GPU machine, or set device = \"cpu\" (and see `saekit study CONFIG --plan`)")


def load_study_config(path: str | Path, overrides: dict | None = None) -> StudyConfig:
    return load_config(StudyConfig, path, overrides)


def run_study(cfg: StudyConfig, on_step=None) -> dict:
    return StudyRun(cfg).run(on_step)

