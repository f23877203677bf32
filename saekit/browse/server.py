"""The live browser: a Starlette app served by uvicorn, opening the database read-only per request.

DuckDB lets no process read a file while another one writes it, so the app holds no connection
between requests: each page opens the file read-only (briefly waiting for a writer), and a page
that finds it locked answers 503 with a banner instead of failing. When the file changes the
cached facts are dropped and the pages say so in a banner.
"""

from __future__ import annotations

import datetime as dt
import io
import ipaddress
import json
import socket
import threading
from pathlib import Path
from typing import Callable, Iterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from saekit.browse.pages import PLOTLY_JS, STATIC, NotFound, Page, Site
from saekit.db import SANDBOX, Database, DatabaseBusy, DatabaseError, check_database_path, head, open_readonly
from saekit.db.browse import Reader
from saekit.errors import SaekitError

WAIT_S = 0.5
"""How long a page waits for a writer to let go before answering with the busy banner."""
SQL_ROWS = 500
"""Rows the SQL box shows; the CSV link streams them all."""


class BrowseError(SaekitError, RuntimeError):
    """The browser cannot start or export: a bad port, host or export folder."""


def _stamp(path: Path) -> tuple:
    """What tells that another process wrote the file: size and mtime of it and of its WAL."""
    out: list[tuple[int, int] | None] = []
    for p in (path, path.with_name(path.name + ".wal")):
        try:
            st = p.stat()
            out.append((st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


class Browser:
    """Request handling over one database file; holds only caches, never a connection."""

    def __init__(self, path: str | Path | None):
        self.path = check_database_path(path, must_exist=True)
        self.site = Site()
        self.started = self.seen = _stamp(self.path)
        self.changed_at: str | None = None
        self.lock = threading.Lock()

    def _banner(self) -> str | None:
        """A note once the file differs from when the server started; caches follow the file."""
        now = _stamp(self.path)
        with self.lock:
            if now != self.seen:
                self.seen, self.changed_at = now, dt.datetime.now().strftime("%H:%M:%S")
                self.site.memo.clear()
        if now == self.started:
            return None
        return (f"The database file changed at {self.changed_at or 'some point'} since this browser started "
                "(another process wrote it); the pages show its current contents.")

    def page(self, depth: int, build: Callable[[Reader], Page]) -> HTMLResponse:
        banner = self._banner()
        try:
            with Database(self.path, read_only=True, wait_s=WAIT_S, config=SANDBOX) as db:
                r = Reader(db)
                try:
                    page = build(r)
                except NotFound as e:
                    page = self.site.message("Not found", str(e), 404, depth)
                return HTMLResponse(self.site.html(r, page, banner), page.status)
        except DatabaseBusy as e:
            banner = (f"The database is being written by another process right now, and DuckDB lets no one read "
                      f"it meanwhile: {e} Reload this page when the writer has finished.")
            page = self.site.message("Database busy", "This page will be back when the writer has finished.", 503, depth)
        except DatabaseError as e:
            page = self.site.message("Cannot read the database", str(e), 500, depth)
        return HTMLResponse(self.site.html(None, page, banner), page.status)

    def search_index(self) -> Response:
        self._banner()
        try:
            with Database(self.path, read_only=True, wait_s=WAIT_S, config=SANDBOX) as db:
                body = self.site.search_index(Reader(db))
        except DatabaseError as e:
            body = f"window.SAEKIT_SEARCH = null; console.warn({json.dumps(str(e))});\n"
        return Response(body, media_type="text/javascript")

    def sql_page(self, q: str) -> HTMLResponse:
        ctx = {"q": q, "limit": SQL_ROWS, "table": None, "more": False, "error": None}
        if q:
            try:
                with open_readonly(self.path) as db:
                    table, ctx["more"] = head(db.stream(q), SQL_ROWS)
                columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
                ctx["table"] = {"columns": table.column_names, "rows": list(zip(*columns)) if columns else []}
            except DatabaseError as e:
                ctx["error"] = str(e)
        return HTMLResponse(self.site.html(None, Page("sql.html", 0, "SQL", ctx)))

    def sql_csv(self, q: str) -> Response:
        """Every row of the query as CSV, streamed; list and struct values written as JSON."""
        try:
            db = open_readonly(self.path)
        except DatabaseError as e:
            return PlainTextResponse(f"error: {e}\n", 400)
        try:
            reader = db.stream(q)
        except DatabaseError as e:
            db.close()
            return PlainTextResponse(f"error: {e}\n", 400)
        return StreamingResponse(_csv_chunks(db, reader), media_type="text/csv",
                                 headers={"Content-Disposition": 'attachment; filename="query.csv"'})


def _csv_chunks(db: Database, reader) -> Iterator[bytes]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    buf, writer = io.BytesIO(), None
    try:
        for batch in reader:
            batch = _flat(batch)
            writer = writer or pacsv.CSVWriter(buf, batch.schema)
            writer.write_batch(batch)
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
        if writer is None:
            pacsv.CSVWriter(buf, _flat(pa.RecordBatch.from_pylist([], schema=reader.schema)).schema).close()
        else:
            writer.close()
        yield buf.getvalue()
    finally:
        db.close()


def _flat(batch):
    """Nested columns as JSON text: CSV has no lists."""
    import pyarrow as pa

    cols = [pa.array([None if v is None else json.dumps(v, default=str, ensure_ascii=False) for v in col.to_pylist()], pa.string())
            if pa.types.is_nested(col.type) else col for col in batch.columns]
    return pa.RecordBatch.from_arrays(cols, names=batch.schema.names)


def create_app(path: str | Path | None) -> Starlette:
    """The ASGI app over one database file (tests drive it with Starlette's TestClient)."""
    b = Browser(path)
    site = b.site

    def depth(request: Request) -> int:
        return request.url.path.count("/") - 1

    def feature(request: Request) -> Response:
        p = request.path_params
        return b.page(2, lambda r: site.feature(r, p["slug"], p["n"]))

    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)  # starlette routes status-code handlers only HTTPExceptions
        if exc.status_code != 404:
            return PlainTextResponse(exc.detail, exc.status_code)
        page = site.message("Not found", f"There is no page {request.url.path}.", 404, depth(request))
        return HTMLResponse(site.html(None, page), 404)

    async def failed(request: Request, exc: Exception) -> Response:
        page = site.message("Something went wrong", f"{type(exc).__name__}: {exc}", 500, depth(request))
        return HTMLResponse(site.html(None, page), 500)

    routes = [
        Route("/", lambda request: b.page(0, site.home)),
        Route("/index.html", lambda request: b.page(0, site.home)),
        Route("/emotion/{name}.html", lambda request: b.page(1, lambda r: site.emotion(r, request.path_params["name"]))),
        Route("/feature/{slug}/{n:int}.html", feature),
        Route("/experiments.html", lambda request: b.page(0, site.experiments)),
        Route("/search.html", lambda request: b.page(0, site.search)),
        Route("/search-index.js", lambda request: b.search_index()),
        Route("/sql.html", lambda request: b.sql_page(request.query_params.get("q", "").strip())),
        Route("/sql.csv", lambda request: b.sql_csv(request.query_params.get("q", "").strip())),
        Route("/static/plotly.min.js", lambda request: FileResponse(PLOTLY_JS)),
        Mount("/static", app=StaticFiles(directory=STATIC)),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, Exception: failed})


def check_bind(host: str, port: int) -> None:
    """Refuse a port that is taken or out of range before uvicorn starts (it would only log it)."""
    if not 1 <= port <= 65535:
        raise BrowseError(f"--port {port} is not a port number (1 to 65535)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise BrowseError(f"--host {host!r} is not an address of this machine: {e}") from e
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise BrowseError(f"cannot listen on {host}:{port}: {e.strerror}; choose another --port") from e


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(path: str | Path | None, host: str = "127.0.0.1", port: int = 8765,
          announce: Callable[[str], None] = print) -> None:
    """Serve the browser until interrupted."""
    import uvicorn

    app = create_app(path)
    check_bind(host, port)
    announce(f"saekit browse: http://{host}:{port}/ over {check_database_path(path, must_exist=True)} "
             "(read-only; Ctrl-C to stop)")
    if not is_loopback(host):
        announce(f"warning: listening on {host}: anyone who can reach this machine can read the database")
    uvicorn.run(app, host=host, port=port, log_level="warning")
