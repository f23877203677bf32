"""The trainer's activation source, chosen from its config: a harvest folder when one is named,
otherwise activations streamed from the model (the sources themselves live in saekit.activations)."""

from __future__ import annotations

from pathlib import Path

from saekit.activations import Activations, ActivationSource, HarvestSource, MixedSource, StreamSource
from saekit.broad import corpus_records
from saekit.model import embedded, load_model
from saekit.train.config import TrainConfig, token_rule
from saekit.train.errors import TrainError


def open_source(cfg: TrainConfig, activations=None, model=None) -> ActivationSource:
    """The activation source a config asks for: given, a harvest folder, or streamed from the model."""
    if activations is not None and not isinstance(activations, (str, Path, Activations)):
        return activations
    folder = activations if activations is not None else (cfg.activations or None)
    if folder is not None:
        main = _harvest_source(cfg, folder)
        if not cfg.mix:
            return main
        parts: dict[str, ActivationSource] = {_name(main): main}
        for path in cfg.mix:
            part = _harvest_source(cfg, path)
            parts[_name(part, taken=parts)] = part
        shares = dict(zip(parts, [1 - sum(cfg.mix_shares), *cfg.mix_shares]))
        return MixedSource(parts, shares)
    model = model if model is not None else load_model(cfg.model, device=cfg.device)
    return StreamSource(model, corpus_records(cfg.corpus), cfg.hook, cfg.max_tokens, cfg.stream_batch_size,
                        token_rule(cfg), cfg.shuffle_buffer_tokens, corpus=cfg.corpus)


def _harvest_source(cfg: TrainConfig, folder) -> HarvestSource:
    acts = folder if isinstance(folder, Activations) else Activations.open(folder)

    def same(name):
        known = embedded(name)
        return known.name if known is not None else str(name)
    if acts.manifest.get("model") is not None and same(acts.manifest["model"]) != same(cfg.model):
        raise TrainError(f"{acts.path} was harvested from model {acts.manifest.get('model')!r}, "
                         f"but the config trains on {cfg.model!r}")
    return HarvestSource(acts, cfg.hook, token_rule(cfg), cfg.shuffle_buffer_tokens)


def _name(source: HarvestSource, taken=()) -> str:
    """A part's name in a mix: its corpus ("shipped", "broad"), numbered when two share one."""
    name = str(source.acts.manifest.get("config", {}).get("corpus") or source.acts.path.name)
    n = 2
    base = name
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name

