"""The steer page of `saekit browse --model M`: type a prompt, pick an intervention, read the clean and
the edited generations side by side as they are sampled.

Nothing here re-implements an experiment. A request becomes an experiment spec (task side_effects,
one generate prompt, one condition at one strength), checked by `load_spec` and resolved against
the database by `resolve`, exactly as `saekit experiment run` would; the columns are sampled by
experiments.sampling, which side_effects samples with too. So "save as experiment" writes that
spec, and running it reproduces the clean and edited columns token for token.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from saekit.artifacts import atomic_write_text, content_hash
from saekit.db import Database
from saekit.errors import SaekitError

if TYPE_CHECKING:   # the model side is imported when a playground is made: a plain browser needs no torch
    import torch

    from saekit.experiments.spec import ExperimentSpec

MAX_NEW_TOKENS = 128
"""Tokens one request may ask for (each column)."""
MAX_PROMPT_TOKENS = 256
"""The longest prompt the page takes, in tokens (after the chat format)."""
MAX_STRENGTH = {"steer": 2.0, "steer_feature": 2.0, "clamp": 20.0}
"""The largest |strength| per kind: steering in units of the layer's mean residual norm (1.0 already
drowns the residual stream), clamps in multiples of the feature's counted maximum."""
TOP_TOKENS = 5
NO_MODEL = ("steering needs a model: start the browser with one, e.g. saekit browse --model smollm2-135m-instruct "
            "(the model the database's vectors were ranked on)")
KINDS_ON_PAGE = ("steer", "steer_feature", "clamp", "ablate")


class SteerError(SaekitError, ValueError):
    """A steer request the page cannot run: the message says what to change."""


class Busy(SaekitError, RuntimeError):
    """Another generation is running; the page runs one at a time."""


@dataclass
class Request:
    """What the page's form sends."""
    prompt: str
    kind: str = "steer"
    emotion: str | None = None
    feature: int | None = None
    strength: float = 0.1
    seed: int = 0
    temperature: float = 0.7
    max_new_tokens: int = 40
    chat: bool = True
    control: bool = False

    @classmethod
    def parse(cls, body: dict[str, Any]) -> "Request":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(body) - known)
        if unknown:
            raise SteerError(f"unknown field(s) {unknown}; the page sends {sorted(known)}")
        try:
            req = cls(**body)
            req.strength, req.temperature = float(req.strength), float(req.temperature)
            req.seed, req.max_new_tokens = int(req.seed), int(req.max_new_tokens)
            req.feature = None if req.feature in (None, "") else int(req.feature)
        except (TypeError, ValueError) as e:
            raise SteerError(f"a field has the wrong type: {e}") from e
        return req


@dataclass
class Playground:
    """The model and the database the steer page samples with; one generation at a time."""
    model: Any
    model_id: str
    db_path: Path
    sae_path: str | None
    hook: str
    out: Path = Path("artifacts/steer")
    dtype: str = "float32"
    """The model's compute dtype, written into saved specs (bfloat16 samples about twice as fast on a CPU)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    norms: dict[str, float] = field(default_factory=dict)
    loaded_sae: Any = None
    last: dict[str, Any] = field(default_factory=dict)
    """How the last generation ended: tokens streamed, and whether it finished or was stopped (a cancel)."""

    # ------------------------------------------------------------------ the spec

    def spec(self, req: Request) -> ExperimentSpec:
        """The experiment spec that this request is, checked as `saekit experiment run` checks it, plus the
        page's own limits."""
        from saekit.experiments.load import load_spec
        if req.kind not in KINDS_ON_PAGE:
            raise SteerError(f"intervention {req.kind!r} is not one of {list(KINDS_ON_PAGE)}")
        if not req.prompt.strip():
            raise SteerError("the prompt is empty")
        if not 1 <= req.max_new_tokens <= MAX_NEW_TOKENS:
            raise SteerError(f"tokens = {req.max_new_tokens}: the page generates 1 to {MAX_NEW_TOKENS} tokens per column")
        limit = MAX_STRENGTH.get(req.kind)
        if limit is not None and abs(req.strength) > limit:
            raise SteerError(f"strength {req.strength:g} is beyond the page's limit of +-{limit:g} for {req.kind}")
        if req.kind == "steer" and not req.emotion:
            raise SteerError("steering with an emotion vector needs an emotion")
        if req.kind != "steer" and req.feature is None:
            raise SteerError(f"{req.kind} edits a feature: give its index")
        if req.kind != "steer" and not self.sae_path:
            raise SteerError("this database has no SAE the page could load: feature interventions are off")
        condition: dict[str, Any] = {"name": req.kind, "kind": req.kind}
        if req.kind == "steer":
            condition["emotion"] = req.emotion
        else:
            condition["features"] = [req.feature]
        what = req.emotion if req.kind == "steer" else f"f{req.feature}"
        body = {"name": f"steer-{req.kind}-{what}", "task": "side_effects", "model": self.model_id, "hook": self.hook,
                "dtype": self.dtype,
                "sae": self.sae_path, "db": str(self.db_path), "strengths": [req.strength],
                "controls": 1 if req.control else 0, "seed": req.seed, "metrics": ["generations"],
                "prompts": {"generate": [req.prompt], "generate_chat": req.chat, "max_new_tokens": req.max_new_tokens,
                            "temperature": req.temperature, "max_prompt_tokens": MAX_PROMPT_TOKENS, "limit": 1},
                "conditions": [condition], "out": str(self.out / "runs")}
        if not self.sae_path:
            body.pop("sae")
        try:
            return load_spec(body)
        except (ValueError, SaekitError) as e:
            raise SteerError(str(e)) from e

    def save(self, req: Request) -> dict[str, str]:
        """Write the request's spec as TOML (what `saekit experiment run` takes); returns its path and command."""
        spec = self.spec(req)
        text = spec_toml(spec)
        path = self.out / f"{spec.name}-{content_hash(text, 8)}.toml"
        atomic_write_text(path, text)
        return {"path": str(path), "command": f"saekit experiment run {path} --db {self.db_path}"}

    # ------------------------------------------------------------------ sampling

    def stream(self, req: Request) -> Iterator[dict[str, Any]]:
        """Events: start, token (per column, in step), done. Raises Busy when a generation runs; a
        bad request raises SteerError before any forward pass."""
        spec = self.spec(req)
        if not self.lock.acquire(blocking=False):
            raise Busy("busy: another generation is running on this server; try again when it has finished")
        self.last = {"tokens": 0, "finished": False}
        try:
            for event in self._stream(spec):
                self.last["tokens"] += event["event"] == "token"
                self.last["finished"] = event["event"] == "done"
                yield event
        finally:
            self.lock.release()

    def _stream(self, spec: ExperimentSpec) -> Iterator[dict[str, Any]]:
        from saekit.experiments.resolve import resolve
        from saekit.experiments.runner import check_model, neutral_ids, scale_hooks
        from saekit.experiments.sampling import sample_columns
        from saekit.experiments.spec import ExperimentError
        from saekit.experiments.tasks.side_effects import generate_ids, generation_columns, strongest
        from saekit.interventions import mean_resid_norm

        started = time.perf_counter()
        with Database(self.db_path, read_only=True) as db:
            try:
                res = resolve(spec, db, sae=self.sae)
            except (ExperimentError, ValueError) as e:
                raise SteerError(str(e)) from e
        check_model(self.model, res)
        for h in scale_hooks(spec):   # measured once per hook, as the experiment measures it
            if h not in self.norms:
                self.norms[h] = mean_resid_norm(self.model, h, neutral_ids(self.model.tokenizer, max(spec.norm_texts, 1)),
                                                res.token_rule)
            res.mean_norms[h] = self.norms[h]
        p, tok = spec.prompts, self.model.tokenizer
        ids = generate_ids(tok, p.generate[0], p.generate_chat)
        if len(ids) > p.max_prompt_tokens:
            raise SteerError(f"the prompt is {len(ids)} tokens, beyond the page's limit of {p.max_prompt_tokens}")
        c = spec.conditions[0]
        columns = generation_columns(res, c, strongest(res, c.name))
        tokens = sample_columns(self.model, res, columns, ids, p.max_new_tokens, p.temperature, spec.seed, shadow="edited")
        yield {"event": "start", "columns": list(columns), "prompt_tokens": len(ids),
               "setting": {"kind": c.kind, "target": res.targets[c.name].label, "strength": columns["edited"].strength},
               "spec": spec_toml(spec)}
        texts: dict[str, list[int]] = {name: [] for name in columns}
        n = 0
        for t in tokens:   # side_effects seeds message i with seed + i; the page has one message
            texts[t.column].append(t.id)
            event = {"event": "token", "column": t.column, "step": t.step, "id": t.id, "text": _piece(tok, texts[t.column])}
            if t.clean_V is not None:
                event.update(_compare(tok, t.clean_V, t.logp_V))
            n += 1
            yield event
        yield {"event": "done", "seconds": round(time.perf_counter() - started, 3), "tokens": n,
               "text": {name: tok.decode(t, skip_special_tokens=True) for name, t in texts.items()},
               "ids": texts}

    @property
    def sae(self):
        """The SAE, loaded (and checked against the model) on first use; `open_playground` loads it at start."""
        if self.sae_path and self.loaded_sae is None:
            from saekit.sae import load_sae

            self.loaded_sae = load_sae(self.sae_path, model=self.model).sae
        return self.loaded_sae


def open_playground(db_path: Path, model_name: str, out: Path = Path("artifacts/steer"),
                    dtype: str = "float32") -> Playground:
    """Load the model (and the database's SAE) now, so a model that cannot load is reported at start;
    the model must be one the database holds emotion vectors of."""
    from saekit.browse import queries as Q
    from saekit.db import browse as B
    from saekit.model import load_model

    with Database(db_path, read_only=True) as db:
        r = B.Reader(db)
        hooks = B.vector_hooks(r, model_name)
        saes = [s for s in Q.saes(r) if s.model_id == model_name]
        models = B.vector_models(r)
    if not hooks:
        raise SteerError(f"--model {model_name!r}: {db_path} holds no emotion vectors of that model; it holds "
                         f"{models or 'none'} (give the model id as ranked)")
    sae = next((s for s in saes if Path(s.sae_id).is_dir()), None)
    hook = sae.hook if sae is not None and sae.hook in hooks else hooks[-1]
    from saekit.model import parse_dtype

    try:
        parse_dtype(dtype)
    except ValueError as e:
        raise SteerError(f"--dtype: {e}") from e
    model = load_model(model_name, dtype=dtype)
    play = Playground(model, model_name, Path(db_path), sae.sae_id if sae is not None else None, hook, out=out,
                      dtype=dtype)
    _ = play.sae   # a broken SAE folder fails here, at start
    return play


def _piece(tok, ids: list[int]) -> str:
    """The text the last token adds (decoding the whole column keeps multi-byte characters whole)."""
    return tok.decode(ids, skip_special_tokens=True)[len(tok.decode(ids[:-1], skip_special_tokens=True)):]


def _compare(tok, clean_V: torch.Tensor, edited_V: torch.Tensor) -> dict[str, Any]:
    """KL(clean || edited) of the next-token distributions on the edited prefix, and the edited model's
    top tokens with their log-probability change."""
    kl = float((clean_V.exp() * (clean_V - edited_V)).sum().clamp(min=0.0))
    top = edited_V.topk(TOP_TOKENS)
    return {"kl": round(kl, 5), "top": [{"token": tok.decode([int(i)]), "logp": round(float(lp), 3),
                                         "change": round(float(lp - clean_V[int(i)]), 3)}
                                        for lp, i in zip(top.values, top.indices)]}


def spec_toml(spec: ExperimentSpec) -> str:
    """The spec as TOML that `saekit experiment run` reads back to the same spec (defaults left out)."""
    import json

    d = {"name": spec.name, "task": spec.task, "model": spec.model, "hook": spec.hook, "dtype": spec.dtype,
         "sae": spec.sae, "db": spec.db,
         "strengths": spec.strengths, "controls": spec.controls, "seed": spec.seed, "metrics": spec.metrics,
         "out": spec.out}
    lines = ["# written by the steer page of saekit browse: run it with saekit experiment run <this file>"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in d.items() if v is not None]
    p = spec.prompts
    lines += ["", "[prompts]", f"generate = {json.dumps(p.generate, ensure_ascii=False)}",
              f"generate_chat = {json.dumps(p.generate_chat)}", f"max_new_tokens = {p.max_new_tokens}",
              f"temperature = {json.dumps(p.temperature)}", f"max_prompt_tokens = {p.max_prompt_tokens}", "limit = 1"]
    for c in spec.conditions:
        lines += ["", "[[conditions]]", f"name = {json.dumps(c.name)}", f"kind = {json.dumps(c.kind)}"]
        if c.emotion:
            lines.append(f"emotion = {json.dumps(c.emotion)}")
        if c.features is not None:
            lines.append(f"features = {json.dumps(c.features)}")
    return "\n".join(lines) + "\n"
