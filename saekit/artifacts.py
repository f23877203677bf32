"""Where things live on disk: the cache, the artifacts folder, file names, atomic writes.

File names are constants here so every stage agrees on them (as sae_lens/constants.py does).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
POOLED = "pooled.safetensors"
SHARD_PATTERN = "shard-{:05d}.safetensors"
RUN_CONFIG = "config.json"


def cache_dir() -> Path:
    """Converted models and other derived files that are costly to rebuild ($SAEKIT_CACHE)."""
    root = os.environ.get("SAEKIT_CACHE") or Path.home() / ".cache" / "saekit"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def artifacts_dir() -> Path:
    """Outputs of runs: activations, SAEs, the database, reports ($SAEKIT_ARTIFACTS)."""
    path = Path(os.environ.get("SAEKIT_ARTIFACTS", "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def fault_point(name: str) -> None:
    """Die like kill -9 here when $SAEKIT_FAULT names this point: crash tests without timing races."""
    if name in os.environ.get("SAEKIT_FAULT", "").split(","):
        os._exit(137)


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def tmp_path_for(path: Path) -> Path:
    """The name a file is written under before its atomic rename; never a finished file's name."""
    return path.with_name(f".{path.name}.partial")


def content_hash(obj: Any, n: int = 12) -> str:
    """A short stable hash of JSON-able content, used for run ids and cache keys."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
