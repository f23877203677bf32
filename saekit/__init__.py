"""saekit: find the SAE features of a language model that represent emotion concepts.

The public API is re-exported lazily so `import saekit` stays fast; heavy libraries load on use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "saekit.model",
    "load_hf": "saekit.model",
    "format_chat": "saekit.model",
    "DEFAULT_MODEL": "saekit.model",
    "TINY_MODEL": "saekit.model",
    "ModelLoadError": "saekit.model",
    "load_corpus": "saekit.corpus",
    "load_scenario": "saekit.corpus",
    "Record": "saekit.corpus",
    "CorpusError": "saekit.corpus",
    "HarvestConfig": "saekit.harvest",
    "harvest": "saekit.harvest",
    "Activations": "saekit.activations",
    "HarvestError": "saekit.activations",
    "open_db": "saekit.handle",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'saekit' has no attribute {name!r}")
