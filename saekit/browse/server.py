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
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from saekit.browse.pages import PLOTLY_JS, STATIC, NotFound, Page, Site
from saekit.browse.steer import NO_MODEL, Busy, Playground, SteerError
from saekit.browse.steer import Request as Request_  # the steer form (not Starlette's Request)
from saekit.db import SANDBOX, Database, DatabaseBusy, DatabaseError, check_database_path, head, open_readonly
from saekit.db.browse import Reader
from saekit.errors import SaekitError

WAIT_S = 0.5
"""How long a page waits for a writer to let go before answering with the busy banner."""
SQL_ROWS = 500
"""Rows the SQL box shows; the CSV link streams them all."""
QUERY_SECONDS = 30.0
"""How long one SQL box query (or CSV download) may run before it is interrupted."""
QUERY_MEMORY = "1GB"
"""DuckDB's memory limit for the SQL box's connections."""


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
        self.queries = Queries()

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
            with Database(self.path, read_only=True, wait_s=WAIT_S, config=self.queries.config) as db:
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
            with Database(self.path, read_only=True, wait_s=WAIT_S, config=self.queries.config) as db:
                body = self.site.search_index(Reader(db))
        except DatabaseError as e:
            body = f"window.SAEKIT_SEARCH = null; console.warn({json.dumps(str(e))});\n"
        return Response(body, media_type="text/javascript")

    def sql_page(self, q: str, run: bool = True, opened: Callable[[Database], None] = lambda db: None) -> HTMLResponse:
        """The SQL box; `run` False only fills it in (a GET link shows a query, a POST runs it).
        `opened` is told the handle, so a client that goes away can interrupt its query."""
        ctx = {"q": q, "limit": SQL_ROWS, "table": None, "more": False, "error": None,
               "seconds": f"{self.queries.seconds:g}", "memory": self.queries.memory}
        if q and run:
            try:
                with self.guarded() as db:
                    opened(db)
                    table, ctx["more"] = head(db.stream(q), SQL_ROWS)
                columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
                ctx["table"] = {"columns": table.column_names, "rows": list(zip(*columns)) if columns else []}
            except DatabaseError as e:
                ctx["error"] = self.queries.explain(e)
        return HTMLResponse(self.site.html(None, Page("sql.html", 0, "SQL", ctx)))

    @contextmanager
    def guarded(self) -> Iterator[Database]:
        """A read-only handle for one user query, under the time and memory limits, interruptible."""
        db = open_readonly(self.path, memory_limit=self.queries.memory)
        try:
            with self.queries.running(db):
                yield db
        finally:
            db.close()

    def sql_csv(self, q: str) -> Response:
        """Every row of the query as CSV, streamed; list and struct values written as JSON."""
        try:
            db = open_readonly(self.path, memory_limit=self.queries.memory)
        except DatabaseError as e:
            return PlainTextResponse(f"error: {e}\n", 400)
        try:
            with self.queries.running(db):
                reader = db.stream(q)
        except DatabaseError as e:
            db.close()
            return PlainTextResponse(f"error: {self.queries.explain(e)}\n", 400)
        return StreamingResponse(_csv_stream(db, reader, self.queries), media_type="text/csv",
                                 headers={"Content-Disposition": 'attachment; filename="query.csv"'})


class Queries:
    """The SQL box's running queries: each under a time limit, interrupted on a client's disconnect
    or the server's shutdown (DuckDB's interrupt stops a query between vectors)."""

    def __init__(self, seconds: float = QUERY_SECONDS, memory: str = QUERY_MEMORY):
        self.seconds, self.memory = seconds, memory
        self.active: set[Database] = set()
        self.lock = threading.Lock()

    @property
    def config(self) -> dict:
        """The settings of every handle the server opens: DuckDB refuses a second handle on a file
        with other settings than one already open in the process, so pages and queries share them."""
        return dict(SANDBOX, memory_limit=self.memory)

    @contextmanager
    def running(self, db: Database) -> Iterator[None]:
        timer = threading.Timer(self.seconds, db.interrupt)
        timer.daemon = True
        with self.lock:
            self.active.add(db)
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            with self.lock:
                self.active.discard(db)

    def interrupt_all(self) -> None:
        """Stop every running query (the server's shutdown)."""
        with self.lock:
            for db in self.active:
                db.interrupt()

    def explain(self, e: Exception) -> str:
        if "INTERRUPT" in str(e).upper():
            return (f"query stopped: it ran past the SQL box's limit of {self.seconds:g} s, or the page was left "
                    "(saekit query has no limit)")
        if "out of memory" in str(e).lower():
            return (f"query stopped: it needed more than the SQL box's memory limit of {self.memory} "
                    "(saekit query has no limit)")
        return str(e)


def _csv_chunks(db: Database, reader, queries: Queries) -> Iterator[bytes]:
    """CSV text batch by batch; a failure part-way ends the file with an error line, never a bare cut."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    buf, writer = io.BytesIO(), None
    try:
        with queries.running(db):
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
    except DatabaseError as e:
        yield f"\n# error: the result is incomplete: {queries.explain(e)}\n".encode()
    finally:
        db.close()


async def _csv_stream(db: Database, reader, queries: Queries):
    """_csv_chunks from a worker thread; a download cancelled by its client interrupts the query, and
    the generator, left to the thread, closes the handle when that batch returns."""
    chunks = _csv_chunks(db, reader, queries)
    try:
        while (chunk := await anyio.to_thread.run_sync(next, chunks, None, abandon_on_cancel=True)) is not None:
            yield chunk
    finally:
        db.interrupt()


async def _ndjson(first: dict, events: Iterator[dict]):
    """Events as JSON lines, each step in a worker thread. When the client goes away Starlette cancels
    this generator between steps, and closing `events` ends the generation and frees the server."""
    try:
        yield (json.dumps(first) + "\n").encode()
        while True:
            try:
                event = await anyio.to_thread.run_sync(next, events, None)
            except SteerError as e:
                event = {"event": "error", "message": str(e)}
            if event is None:
                return
            yield (json.dumps(event) + "\n").encode()
            if event["event"] == "error":
                return
    finally:
        await anyio.to_thread.run_sync(events.close)   # type: ignore[attr-defined]


def _flat(batch):
    """Nested columns as JSON text: CSV has no lists."""
    import pyarrow as pa

    cols = [pa.array([None if v is None else json.dumps(v, default=str, ensure_ascii=False) for v in col.to_pylist()], pa.string())
            if pa.types.is_nested(col.type) else col for col in batch.columns]
    return pa.RecordBatch.from_arrays(cols, names=batch.schema.names)


def allowed_hosts(host: str) -> list[str]:
    """The Host headers the server answers: the address it listens on and, for loopback, localhost.
    A page on another site that resolves its own name to this address (DNS rebinding) is refused."""
    names = {host, "localhost", "127.0.0.1", "::1", "[::1]"} if is_loopback(host) else {host}
    if host in ("0.0.0.0", "::", ""):   # every interface: this machine's names and any IP literal
        names |= {socket.gethostname(), socket.getfqdn(), "localhost"}
    return sorted(names)


def _ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return False


def same_origin(request: Request) -> bool:
    """A POST from the browser's own pages: its Origin (sent by every browser on POST) names the same
    host and port as the request; clients that send no Origin (curl, scripts) are not cross-site."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host", "")


def create_app(path: str | Path | None, host: str = "127.0.0.1", queries: Queries | None = None,
               playground: Playground | None = None) -> Starlette:
    """The ASGI app over one database file (tests drive it with Starlette's TestClient and a base_url
    on the bound host: other Host headers are refused). With a `playground` (browse --model), the
    steer page samples with its model."""
    b = Browser(path)
    b.queries = queries or b.queries
    site = b.site
    site.steer_model = playground.model_id if playground is not None else None
    names = allowed_hosts(host)
    wildcard = host in ("0.0.0.0", "::", "")

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

    async def posted_query(request: Request) -> str | Response:
        if not same_origin(request):
            return PlainTextResponse("refused: a query must come from this browser's own pages", 403)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))   # the pages post url-encoded forms
        return form.get("q", [""])[0].strip()

    async def sql_page(request: Request) -> Response:
        if request.method == "GET":   # a link fills the box in; only the page's own POST runs a query
            return b.sql_page(request.query_params.get("q", "").strip(), run=False)
        q = await posted_query(request)
        if isinstance(q, Response):
            return q
        return await _run_cancellable(request, lambda opened: b.sql_page(q, opened=opened))

    async def sql_csv(request: Request) -> Response:
        q = await posted_query(request)
        if isinstance(q, Response):
            return q
        return await anyio.to_thread.run_sync(b.sql_csv, q)   # its rows stream from _csv_stream

    async def steer_request(request: Request) -> Request_ | Response:
        if not same_origin(request):
            return JSONResponse({"error": "refused: requests must come from this browser's own pages"}, 403)
        if playground is None:
            return JSONResponse({"error": NO_MODEL}, 409)
        try:
            body = json.loads(await request.body() or b"{}")
            return Request_.parse(body if isinstance(body, dict) else {})
        except (ValueError, SteerError) as e:
            return JSONResponse({"error": f"bad request: {e}"}, 400)

    async def steer_stream(request: Request) -> Response:
        req = await steer_request(request)
        if isinstance(req, Response):
            return req
        assert playground is not None
        events = playground.stream(req)
        try:   # the first event: a bad request or a busy server is answered now, not mid-stream
            first = await anyio.to_thread.run_sync(next, events)
        except SteerError as e:
            return JSONResponse({"error": str(e)}, 400)
        except Busy as e:
            return JSONResponse({"error": str(e)}, 409)
        return StreamingResponse(_ndjson(first, events), media_type="application/x-ndjson",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def steer_save(request: Request) -> Response:
        req = await steer_request(request)
        if isinstance(req, Response):
            return req
        assert playground is not None
        try:
            return JSONResponse(await anyio.to_thread.run_sync(playground.save, req))
        except SteerError as e:
            return JSONResponse({"error": str(e)}, 400)

    def steer_page(request: Request) -> Response:
        q = request.query_params
        return b.page(0, lambda r: site.steer(r, q.get("emotion"), q.get("sae"), q.get("feature"),
                                              playground.hook if playground else None))

    routes = [
        Route("/", lambda request: b.page(0, site.home)),
        Route("/steer.html", steer_page),
        Route("/steer/stream", steer_stream, methods=["POST"]),
        Route("/steer/save", steer_save, methods=["POST"]),
        Route("/index.html", lambda request: b.page(0, site.home)),
        Route("/emotion/{name}.html", lambda request: b.page(1, lambda r: site.emotion(r, request.path_params["name"]))),
        Route("/feature/{slug}/{n:int}.html", feature),
        Route("/experiments.html", lambda request: b.page(0, site.experiments)),
        Route("/search.html", lambda request: b.page(0, site.search)),
        Route("/search-index.js", lambda request: b.search_index()),
        Route("/sql.html", sql_page, methods=["GET", "POST"]),
        Route("/sql.csv", sql_csv, methods=["POST"]),
        Route("/static/plotly.min.js", lambda request: FileResponse(PLOTLY_JS)),
        Mount("/static", app=StaticFiles(directory=STATIC)),
    ]
    hosts = Middleware(_HostCheck, names=names, ip_literals=wildcard)
    return Starlette(routes=routes, middleware=[hosts], exception_handlers={404: not_found, Exception: failed})


class _HostCheck(TrustedHostMiddleware):
    """Starlette's Host check, answering any IP literal too when the server listens on every interface."""

    def __init__(self, app, names: list[str], ip_literals: bool) -> None:
        super().__init__(app, allowed_hosts=names, www_redirect=False)
        self.ip_literals = ip_literals

    async def __call__(self, scope, receive, send) -> None:
        if self.ip_literals and scope["type"] in ("http", "websocket"):
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if _ip_literal(host.rsplit(":", 1)[0] if host.count(":") == 1 else host.rsplit("]:", 1)[0]):
                await self.app(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


async def _run_cancellable(request: Request, work: Callable[[Callable[[Database], None]], Response]) -> Response:
    """Run a query's page in a worker thread; when the client goes away, interrupt its query."""
    result: list[Response] = []
    handles: list[Database] = []

    async def run() -> None:
        result.append(await anyio.to_thread.run_sync(work, handles.append))
        tg.cancel_scope.cancel()

    async def watch() -> None:
        while not await request.is_disconnected():
            await anyio.sleep(0.2)
        for db in handles:
            db.interrupt()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        tg.start_soon(watch)
    return result[0] if result else PlainTextResponse("the client went away", 499)


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
          announce: Callable[[str], None] = print, queries: Queries | None = None,
          playground: Playground | None = None) -> None:
    """Serve the browser until interrupted; the first SIGTERM or Ctrl-C stops it, running queries included."""
    import uvicorn

    limits = queries or Queries()
    app = create_app(path, host, limits, playground)
    check_bind(host, port)
    try:   # a bad --query-memory is found now, not at the first query
        open_readonly(path, memory_limit=limits.memory).close()
    except DatabaseError as e:
        raise BrowseError(f"--query-memory {limits.memory!r}: {e}") from e
    announce(f"saekit browse: http://{host}:{port}/ over {check_database_path(path, must_exist=True)} "
             f"(read-only; SQL box queries stop after {limits.seconds:g} s or {limits.memory}; Ctrl-C to stop)")
    if not is_loopback(host):
        announce(f"warning: listening on {host}: anyone who can reach this machine can read the database"
                 + (" and run the model" if playground else ""))
    if playground is not None:
        announce(f"steer page: {playground.model_id} at {playground.hook}; one generation at a time")

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:   # uvicorn waits for open requests: end their queries first
            limits.interrupt_all()
            super().handle_exit(sig, frame)

    Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)).run()
