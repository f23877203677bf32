"""`saekit browse --export DIR`: the browser's pages as static files that open from disk.

Which feature pages: every feature some exported page links to, so every link works on disk: the
TOP_FEATURES most selective of each emotion, the TOP_ALIGNED best aligned with each emotion
vector, and the features experiments intervened on. Every other page is written whole. The
folder is built beside the target and renamed into place, so an interrupted export leaves the
previous one whole (the next export clears what it left); a folder that is not an earlier export
is never overwritten.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Iterator

from saekit.artifacts import OutputError, check_writable, fault_point
from saekit.browse import queries as Q
from saekit.browse.pages import PLOTLY_JS, STATIC, TOP_ALIGNED, TOP_FEATURES, Page, Site
from saekit.browse.server import BrowseError
from saekit.db import SANDBOX, Database, check_database_path
from saekit.db import browse as B

MARKER = ".saekit-browse-export"
RULE = (f"Feature pages: the {TOP_FEATURES} most selective features of each emotion, the {TOP_ALIGNED} best "
        "aligned with each emotion vector, and every feature an experiment intervened on (the features the "
        "other pages link to). Every emotion page, the home, experiments and search pages are included.")


def exported_features(r: B.Reader, saes: list[Q.Sae]) -> dict[str, set[int]]:
    """slug -> the features whose pages the export writes (RULE)."""
    wanted = {(x["sae_id"], x["feature"]) for s in saes for x in B.top_features(r, s.sae_id, TOP_FEATURES)}
    wanted |= {(x["sae_id"], x["feature"]) for x in B.aligned_features_all(r, TOP_ALIGNED)}
    wanted |= Q.experiment_features(B.experiment_specs(r))
    return {s.slug: {f for sae_id, f in wanted if sae_id == s.sae_id and 0 <= f < s.d_sae} for s in saes}


TOP_LEVEL = {"index.html", "experiments.html", "search.html", "sql.html", "search-index.js", "README.txt", "static",
             "emotion", "feature", MARKER}
"""What an export writes at its top; an older export's marker lists no files, so this is its check."""


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir()}


def _check_target(out: Path) -> None:
    """Refuse a file, a folder that is not an earlier export, and an earlier export that now holds
    files it did not write (a user's notes, an SAE trained into it): replacing it would delete them."""
    if out.exists() and not out.is_dir():
        raise BrowseError(f"--export {out} is a file; give a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    marker = out / MARKER
    if not marker.is_file():
        raise BrowseError(f"--export {out} is a folder with other files in it; refusing to overwrite them: "
                          "give a new or empty folder (an earlier export is replaced)")
    try:
        written = set(json.loads(marker.read_text() or "null") or [])
    except (OSError, ValueError) as e:
        raise BrowseError(f"--export {out}: its marker {marker} is unreadable ({e}); give a new or empty folder") from e
    extra = sorted(_files(out) - written - {MARKER}) if written else sorted(
        p.name for p in out.iterdir() if p.name not in TOP_LEVEL)
    if extra:
        raise BrowseError(f"--export {out} is an earlier export that now holds files it did not write "
                          f"({', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}); refusing to replace it: "
                          "move them out, or export to a new folder")


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def export_site(db_path: str | Path | None, out: str | Path) -> dict:
    """Write every page; returns counts and seconds."""
    started = time.perf_counter()
    try:
        out = check_writable(out, "--export")   # absolute: `--export .` has a name and a parent
    except OutputError as e:
        raise BrowseError(str(e)) from e
    _check_target(out)
    path = check_database_path(db_path, must_exist=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.*-*"):  # left by a killed export: .partial-<pid>, .old-<pid>
        if re.fullmatch(rf"\.{re.escape(out.name)}\.(partial|old)-\d+", stale.name):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        with Database(path, read_only=True, config=SANDBOX) as db:
            r = B.Reader(db)
            chosen = exported_features(r, Q.saes(r))
            site = Site(exported=chosen)
            pages = 0
            for rel, page in _pages(r, site, chosen):
                _write(tmp, rel, site.html(r, page))
                pages += 1
            _write(tmp, "search-index.js", site.search_index(r))
        shutil.copytree(STATIC, tmp / "static")
        shutil.copy(PLOTLY_JS, tmp / "static" / "plotly.min.js")
        n_features = sum(len(v) for v in chosen.values())
        _write(tmp, "README.txt", f"saekit feature browser, exported from {path}\nOpen index.html in a browser.\n\n"
                                  f"{RULE}\n{n_features} feature pages, {pages} pages in all.\n")
        _write(tmp, MARKER, json.dumps(sorted(_files(tmp))))   # what a later export may replace
        fault_point("browse_export_rename")
        _replace(tmp, out)
    except OSError as e:   # a full disk, a folder made read-only meanwhile: the earlier export stays whole
        raise BrowseError(f"cannot write the export {out}: {e.strerror or e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"folder": str(out), "pages": pages, "feature_pages": n_features,
            "seconds": round(time.perf_counter() - started, 2)}


def _pages(r: B.Reader, site: Site, chosen: dict[str, set[int]]) -> Iterator[tuple[str, Page]]:
    yield from [("index.html", site.home(r)), ("experiments.html", site.experiments(r)),
                ("search.html", site.search(r)), ("sql.html", Page("sql.html", 0, "SQL", {}))]
    for e in site.emotions(r):
        yield f"emotion/{e['emotion']}.html", site.emotion(r, e["emotion"])
    for slug, ns in chosen.items():
        for n in sorted(ns):
            yield f"feature/{slug}/{n}.html", site.feature(r, slug, n)


def _replace(tmp: Path, out: Path) -> None:
    """Put the finished folder in place of an earlier export (or nothing), one rename each."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
