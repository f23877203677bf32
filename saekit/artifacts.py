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

from saekit.errors import SaekitError

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


def _read_umask() -> int:
    """The process umask, from /proc where it can be read without changing it (os.umask can only set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


FILE_MODE = 0o666 & ~_read_umask()
"""Permissions of every file saekit writes: what the user's umask gives a new file (mkstemp gives 0600)."""


def match_umask(*paths: Path) -> None:
    """Give files a library wrote (safetensors' save_file, sae-lens: 0600) the user's usual permissions."""
    for path in paths:
        os.chmod(path, FILE_MODE)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file.

    Fault points (see fault_point): "write:<name>" with the bytes in the temporary file, not yet
    renamed; "written:<name>" just after the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        fault_point(f"write:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fault_point(f"written:{path.name}")


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


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


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages that shape results, stored with every run and SAE."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("saekit", "torch", "sae-lens", "transformer-lens", "transformers", "safetensors", "duckdb"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


WINDOW_MARK = "#w"
"""A long text split into windows gets document ids `<story id>#w<window>`."""


def window_id(story_id: str, window: int) -> str:
    return f"{story_id}{WINDOW_MARK}{window}"


def story_of(doc_id: str) -> str:
    """The corpus record a harvested document (or one window of it) came from."""
    return doc_id.split(WINDOW_MARK)[0]


class OutputError(SaekitError, OSError):
    """An output path that cannot be written: under a file, on a read-only filesystem, not permitted."""


def check_writable(path: str | Path, what: str) -> Path:
    """`path` (a file or folder to create or replace), refused before any work when it cannot be
    written: its nearest existing folder is a file, read-only, or not ours to write."""
    path = Path(path).expanduser().absolute()
    ancestor = next(p for p in [path, *path.parents] if p.exists() or p == p.parent)
    if ancestor != path and not ancestor.is_dir():
        raise OutputError(f"{what} {path}: {ancestor} is a file, so nothing can be created under it")
    folder = ancestor if ancestor.is_dir() else ancestor.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path}: cannot write in {folder} (a read-only filesystem or no permission)")
    return path

