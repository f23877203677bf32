"""`saekit browse` over a tiny-model study database: the app in-process, then the real server and
its static export driven in Debian's chromium through Playwright (screenshots in artifacts/screenshots)."""

from __future__ import annotations

import html.parser
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import pytest
from starlette.testclient import TestClient
from test_study import write_config, write_impossible_spec
from typer.testing import CliRunner

from saekit.browse import create_app
from saekit.browse.server import Queries
from saekit.cli import app
from saekit.db import Database, read_only_query

pytestmark = pytest.mark.slow  # a real browser (chromium) and a tiny study: left out by `make test-fast`

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
HOSTILE = "<img src=x onerror=alert(1)>"
runner = CliRunner()


LOCAL = "http://127.0.0.1:8765"   # the bound address: other Host headers are refused


def rows(db, sql):
    return read_only_query(sql, db).to_pylist()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A finished tiny study (with two experiments, one the impossible task), one example token made hostile HTML."""
    from test_broad import write_fake_sources

    from saekit import broad

    tmp = tmp_path_factory.mktemp("browse")
    cfg = write_config(tmp, broad_corpus="broad", broad_tokens=3_000)   # with outside examples (tiny stand-in text)
    cfg.write_text(cfg.read_text().replace('experiments = ["', f'experiments = ["{write_impossible_spec(tmp)}", "'))
    sources = write_fake_sources(tmp)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(broad, "data_file", lambda source: sources[source.name])
        result = runner.invoke(app, ["study", str(cfg)])
    assert result.exit_code == 0, result.output
    db = tmp / "study.duckdb"
    with Database(db) as d:
        d.sql("UPDATE feature_examples SET tokens = list_concat([?], tokens[2:]) "
              "WHERE kind = 'story' AND example_rank = 1 AND feature = (SELECT feature FROM feature_emotion_stats "
              "WHERE emotion = 'calm' AND selectivity_rank = 1)", [HOSTILE])
    return {"db": db, "output": result.output, "tmp": tmp}


@pytest.fixture(scope="module")
def client(study):
    return TestClient(create_app(study["db"]), base_url=LOCAL)


def top_feature(db, emotion="calm") -> int:
    return rows(db, f"SELECT feature FROM feature_emotion_stats WHERE emotion = '{emotion}' "
                    "AND selectivity_rank = 1")[0]["feature"]


# ---------------------------------------------------------------------------- without a browser


def test_study_summary_points_to_browse(study):
    assert f"saekit browse --db {study['db']}" in " ".join(study["output"].split())


def test_pages_answer_escape_and_404(study, client):
    home = client.get("/")
    assert home.status_code == 200
    for e in rows(study["db"], "SELECT DISTINCT emotion FROM feature_emotion_stats"):
        assert f'href="emotion/{e["emotion"]}.html"' in home.text
    n = top_feature(study["db"])
    page = client.get(f"/feature/sae/{n}.html")
    assert page.status_code == 200
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text and HOSTILE not in page.text
    for url, words in [("/feature/sae/99999.html", "no feature 99999"), ("/feature/nosae/1.html", "no SAE 'nosae'"),
                       ("/emotion/nope.html", "no emotion 'nope'"), ("/nothing/here", "There is no page")]:
        missing = client.get(url)
        assert missing.status_code == 404 and "Not found" in missing.text and words in html.unescape(missing.text)
        assert "Traceback" not in missing.text


def test_sql_box_runs_the_query_guard_and_csv(study, client):
    before = rows(study["db"], "SELECT count(*) AS n FROM runs")[0]["n"]
    for bad in ["DELETE FROM runs", "INSERT INTO runs (run_id) VALUES ('x')",
                f"COPY runs TO '{study['tmp'] / 'leak.csv'}'", "EXPLAIN ANALYZE COPY runs TO 'x.csv'"]:
        r = client.post("/sql.html", data={"q": bad})
        assert r.status_code == 200 and 'class="error"' in r.text and "refused" in r.text
    assert not (study["tmp"] / "leak.csv").exists()
    assert rows(study["db"], "SELECT count(*) AS n FROM runs")[0]["n"] == before
    ok = client.post("/sql.html", data={"q": "SELECT feature, promoted_tokens FROM features ORDER BY feature LIMIT 3"})
    assert ok.status_code == 200 and 'id="csv"' in ok.text
    csv = client.post("/sql.csv", data={"q": "SELECT feature, promoted_tokens FROM features ORDER BY feature"})
    lines = csv.text.splitlines()
    assert lines[0] == '"feature","promoted_tokens"' and len(lines) == 1 + rows(
        study["db"], "SELECT count(*) AS n FROM features")[0]["n"]
    assert client.post("/sql.csv", data={"q": "DROP TABLE runs"}).status_code == 400


def test_other_hosts_and_cross_site_requests_are_refused(study, client):
    """DNS rebinding sends a foreign Host; a page on another site can POST a form or GET a link."""
    for url in ["/", "/sql.html", "/emotion/calm.html"]:
        assert client.get(url, headers={"Host": "attacker.example.com"}).status_code == 400
    assert client.post("/sql.csv", data={"q": "SELECT 1"}, headers={"Host": "attacker.example.com"}).status_code == 400
    assert client.get("/sql.csv", params={"q": "SELECT 1"}).status_code == 405     # no query from a plain GET
    linked = client.get("/sql.html", params={"q": "SELECT count(*) AS n FROM runs"})  # a link fills the box only
    assert linked.status_code == 200 and "SELECT count(*) AS n FROM runs" in linked.text and 'id="result"' not in linked.text
    for headers in ({"Origin": "http://attacker.example.com"}, {"Sec-Fetch-Site": "cross-site"}):
        for url in ("/sql.html", "/sql.csv"):
            assert client.post(url, data={"q": "SELECT 1 AS x"}, headers=headers).status_code == 403
    same = client.post("/sql.html", data={"q": "SELECT 1 AS x"}, headers={"Origin": LOCAL, "Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 200 and 'id="result"' in same.text
    assert TestClient(create_app(study["db"], host="0.0.0.0"), base_url="http://10.1.2.3:8765").get("/").status_code == 200


HEAVY = "SELECT count(*) FROM range(100000000) a, range(100000000) b WHERE a.range + b.range = -1"


def test_a_query_past_its_time_or_memory_limit_is_stopped_with_a_message(study):
    c = TestClient(create_app(study["db"], queries=Queries(seconds=1.0, memory="64MB")), base_url=LOCAL)
    slow = c.post("/sql.html", data={"q": HEAVY})
    assert slow.status_code == 200 and "ran past the SQL box&#39;s limit of 1 s" in slow.text
    big = c.post("/sql.html", data={"q": "SELECT max(length(l)) FROM (SELECT list(range) AS l FROM range(200000000))"})
    assert "more than the SQL box&#39;s memory limit of 64MB" in big.text
    cut = c.post("/sql.csv", data={"q": HEAVY})
    assert cut.text.rstrip().endswith("ran past the SQL box's limit of 1 s, or the page was left (saekit query has no limit)")


def test_keeps_serving_while_another_process_writes(study):
    """A writer holding the file gets a 503 page with a banner; after it, the pages come back and say it changed."""
    c = TestClient(create_app(study["db"]), base_url=LOCAL)
    assert c.get("/").status_code == 200
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys; from saekit.db import Database; d = Database(sys.argv[1]); "
                               "d.start_run('browse-test'); print('ready', flush=True); sys.stdin.read(); d.close()",
         str(study["db"])], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        busy = c.get("/emotion/calm.html")
        assert busy.status_code == 503 and "being written by another process" in busy.text
        assert 'href="../static/browse.css"' in busy.text
    finally:
        writer.stdin.close()
        assert writer.wait(timeout=60) == 0
    back = c.get("/emotion/calm.html")
    assert back.status_code == 200 and "The database file changed" in back.text


def test_cli_refuses_bad_input_clearly(study, tmp_path):
    missing = runner.invoke(app, ["browse", "--db", str(tmp_path / "none.duckdb")])
    assert missing.exit_code == 2 and "no database at" in missing.output
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    over = runner.invoke(app, ["browse", "--db", str(study["db"]), "--export", str(keep)])
    assert over.exit_code == 2 and "refusing to overwrite" in over.output
    assert (keep / "notes.txt").read_text() == "mine" and len(list(keep.iterdir())) == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = runner.invoke(app, ["browse", "--db", str(study["db"]), "--port", str(port)])
    assert busy.exit_code == 2 and "choose another --port" in busy.output
    bad = runner.invoke(app, ["browse", "--db", str(study["db"]), "--port", "70000"])
    assert bad.exit_code == 2 and "not a port number" in bad.output


def start_server(db, *args) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "saekit", "browse", "--db", str(db), "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
            return proc, port
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.3)


def post_and_hold(port: int, q: str) -> socket.socket:
    """POST a query from a raw socket and leave without reading the answer."""
    body = urllib.parse.urlencode({"q": q}).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /sql.html HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (port, len(body), body))
    return sock


def test_a_query_ends_when_its_client_leaves_and_the_first_sigterm_stops_the_server(study):
    """The query holds the file open while it runs, so a writer can open it only once the query ended."""
    proc, port = start_server(study["db"], "--query-seconds", "600")
    try:
        sock = post_and_hold(port, HEAVY)
        time.sleep(1.5)
        sock.close()    # the client leaves: the cross join (minutes of work) must stop
        with Database(study["db"], wait_s=20):
            pass
        post_and_hold(port, HEAVY)
        time.sleep(1.5)
        proc.terminate()   # one SIGTERM, with a query running and its client still waiting
        assert proc.wait(timeout=30) is not None
    finally:
        proc.kill()
        proc.wait()


def test_reexport_refuses_an_export_holding_files_it_did_not_write(study, tmp_path):
    site = tmp_path / "site"
    assert runner.invoke(app, ["browse", "--db", str(study["db"]), "--export", str(site)]).exit_code == 0
    assert runner.invoke(app, ["browse", "--db", str(study["db"]), "--export", str(site)]).exit_code == 0  # replaced
    (site / "feature" / "notes.txt").write_text("mine")
    again = runner.invoke(app, ["browse", "--db", str(study["db"]), "--export", str(site)])
    assert again.exit_code == 2 and "holds files it did not write (feature/notes.txt)" in again.output
    assert (site / "feature" / "notes.txt").read_text() == "mine" and (site / "index.html").exists()


# ---------------------------------------------------------------------------- in chromium


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(study):
    """`saekit browse` in a subprocess on a free loopback port, polled until it answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "saekit", "browse", "--db", str(study["db"]), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                urllib.request.urlopen(base, timeout=5).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"saekit browse did not answer: {proc.communicate()[0] if proc.poll() else ''}")
                time.sleep(0.1)  # polling interval, not synchronisation: the loop ends when the server answers
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def chromium():
    if not CHROMIUM.exists():
        msg = (f"chromium is not installed at {CHROMIUM}, so the browser tests cannot run "
               "(`make setup` installs it: apt-get install chromium)")
        if os.environ.get("CI"):
            pytest.fail(msg + "; CI requires them")
        pytest.skip(msg)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium):
    """A fresh page; the test fails if the console shows an error or a script raised or opened a dialog."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    pg.problems = problems
    yield pg
    context.close()
    assert problems == []


def shot(pg, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"browse-{name}.png"), full_page=True)


def check_feature_page(pg, db, n: int) -> None:
    """Tokens shaded by the stored activations / the feature's max; bar chart and histogram hold the stored data."""
    f = rows(db, f"SELECT max_activation, hist_counts FROM features WHERE feature = {n}")[0]
    ex = rows(db, f"SELECT tokens, token_activations FROM feature_examples WHERE feature = {n} AND kind = 'window' "
                  "AND example_rank = 1")[0]
    toks = pg.locator('.example[data-kind="window"][data-rank="1"] .tok')
    assert toks.count() == len(ex["tokens"])
    shown = toks.evaluate_all("els => els.map(e => [e.textContent, parseFloat(e.dataset.act), e.title, "
                              "getComputedStyle(e).backgroundColor])")
    for (text, act, title, colour), token, stored in zip(shown, ex["tokens"], ex["token_activations"]):
        assert text == token and act == pytest.approx(stored, rel=1e-9) and title
        alpha = float(re.fullmatch(r"rgba?\((.*)\)", colour).group(1).split(",")[3]) if colour.count(",") == 3 else 1.0
        assert alpha == pytest.approx(min(stored / f["max_activation"], 1.0), abs=0.01)
    assert 0 < max(a for _, a, _, _ in shown) <= f["max_activation"]
    pg.wait_for_selector("#selectivity .main-svg")
    pg.wait_for_selector("#histogram .main-svg")
    bars = pg.evaluate("document.getElementById('selectivity').data[0]")
    stats = rows(db, f"SELECT emotion, auroc FROM feature_emotion_stats WHERE feature = {n} ORDER BY emotion")
    assert bars["x"] == [s["emotion"] for s in stats] and bars["y"] == pytest.approx([s["auroc"] for s in stats])
    assert pg.locator("#selectivity g.point").count() == len(stats)
    hist = pg.evaluate("document.getElementById('histogram').data[0].y")
    assert sum(hist) == sum(f["hist_counts"]) > 0 and pg.locator("#histogram g.point").count() == len(hist)


def test_home_to_emotion_to_feature_in_chromium(server, study, page):
    db = study["db"]
    page.goto(server)
    names = page.locator("#emotions tr td:first-child a").all_text_contents()
    assert names == sorted(r["emotion"] for r in rows(db, "SELECT DISTINCT emotion FROM feature_emotion_stats"))
    page.wait_for_selector("#pca .main-svg")
    style = page.locator("table.style-geometry").first   # the PCs against the stories' style and valence
    assert style.is_visible()
    stored = rows(db, "SELECT DISTINCT target FROM style_geometry WHERE hook = 'blocks.1.hook_resid_post'")
    assert {r["target"] for r in stored} >= {"body_share", "valence_sign"}
    assert style.locator("tr").count() == 1 + len(stored)
    shot(page, "home")
    page.click("#emotions a:text-is('calm')")
    page.wait_for_url("**/emotion/calm.html")
    assert page.locator("h1").text_content() == "calm"
    shot(page, "emotion")
    n = top_feature(db)
    page.click(f".top-features tr:nth-child(2) a:text-is('{n}')")
    page.wait_for_url(f"**/feature/sae/{n}.html")
    check_feature_page(page, db, n)
    assert HOSTILE in page.locator('.example[data-kind="story"][data-rank="1"] .tokens').text_content()
    shot(page, "feature")
    # the top passages from outside text (held-out broad documents), each token shaded by its stored value,
    # on the page of the feature with the strongest one
    best = rows(db, "SELECT feature FROM feature_examples WHERE kind = 'outside' ORDER BY activation DESC, feature LIMIT 1")
    f_out = best[0]["feature"]
    outside = rows(db, f"SELECT story_id, token_activations FROM feature_examples WHERE kind = 'outside' "
                       f"AND feature = {f_out} ORDER BY example_rank")
    page.goto(urljoin(server, f"feature/sae/{f_out}.html"))
    assert page.locator("h3", has_text="Top passages from outside text").is_visible()
    first = page.locator('.example[data-kind="outside"][data-rank="1"]')
    head = first.locator(".example-head").text_content()
    assert outside[0]["story_id"] in head and "None" not in head and "peak" in head
    shown = [float(t) for t in first.locator(".tok").evaluate_all("els => els.map(e => e.dataset.act)")]
    assert shown == pytest.approx(outside[0]["token_activations"], rel=1e-4, abs=1e-6)
    first.scroll_into_view_if_needed()
    shot(page, "feature-outside")
    page.goto(urljoin(server, f"feature/sae/{n}.html"))
    page.click("#next")
    page.wait_for_url(f"**/feature/sae/{n + 1}.html")
    page.fill("#jump input", "0")
    page.click("#jump button")
    page.wait_for_url("**/feature/sae/0.html")


def test_experiments_search_and_sql_in_chromium(server, study, page):
    page.goto(server + "experiments.html")
    page.wait_for_selector(".experiment .main-svg")
    names = " ".join(page.locator(".experiment h2").all_text_contents())
    assert "tiny_probes" in names and "tiny_impossible" in names
    assert page.locator(".experiment .main-svg").count() >= 2   # both effect-vs-strength plots drawn
    assert page.locator("table.effects tr").count() > 1
    shot(page, "experiments")
    page.goto(server + "search.html")
    page.fill("#q", "calm")
    page.click("#search button")
    page.wait_for_selector("#results a")
    assert "emotion calm" in page.locator("#results").text_content()
    token = rows(study["db"], "SELECT trim(promoted_tokens[1]) AS t, feature FROM features "
                              "WHERE length(trim(promoted_tokens[1])) > 2 ORDER BY feature LIMIT 1")[0]
    page.goto(server + f"search.html?q={urllib.request.quote(token['t'])}")
    page.wait_for_selector("#results a")
    assert f"feature {token['feature']} promotes" in page.locator("#results").text_content()
    shot(page, "search")
    page.goto(server + "sql.html")
    page.fill("#sql textarea", "DELETE FROM runs")
    page.click("#sql button")
    page.wait_for_selector(".error")
    assert "refused: DELETE" in page.locator(".error").text_content()
    page.fill("#sql textarea", "SELECT emotion, count(*) AS n FROM stories GROUP BY emotion ORDER BY emotion")
    page.click("#sql button")
    page.wait_for_selector("#result")
    assert page.locator("#result tr").count() == 1 + len(rows(study["db"], "SELECT DISTINCT emotion FROM stories"))
    shot(page, "sql")
    with page.expect_download() as dl:
        page.click("#csv")
    assert Path(dl.value.path()).read_text().startswith('"emotion","n"')


def test_missing_feature_is_a_404_page_in_chromium(server, page):
    resp = page.goto(server + "feature/sae/99999.html")
    assert resp.status == 404 and page.locator("h1").text_content() == "Not found"
    page.problems.remove("console error: Failed to load resource: the server responded with a status of 404 (Not Found)")
    shot(page, "404")
    page.click("text=Back to the home page")
    page.wait_for_selector("#emotions")


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.found += [v for k, v in attrs if k in ("href", "src") and v]


def test_export_opens_from_disk_with_working_links(study, page, tmp_path):
    out = tmp_path / "site"
    result = runner.invoke(app, ["browse", "--db", str(study["db"]), "--export", str(out)])
    assert result.exit_code == 0, result.output
    pages = list(out.rglob("*.html"))
    n = top_feature(study["db"])
    assert (out / "feature" / "sae" / f"{n}.html").exists() and (out / "emotion" / "calm.html").exists()
    for p in pages:  # every relative link and script in every page points at a file of the export
        parser = _Links()
        parser.feed(p.read_text())
        for link in parser.found:
            target = urlparse(link)
            if target.scheme in ("", "file") and target.path:
                assert (p.parent / unquote(target.path)).resolve().exists(), f"{p}: broken link {link}"
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    killed = subprocess.run([sys.executable, "-m", "saekit", "browse", "--db", str(study["db"]), "--export", str(out)],
                            env=dict(os.environ, SAEKIT_FAULT="browse_export_rename"), capture_output=True)
    assert killed.returncode == 137 and any(p.name.startswith(".site.partial-") for p in tmp_path.iterdir())
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # the earlier export is whole
    again = runner.invoke(app, ["browse", "--db", str(study["db"]), "--export", str(out)])
    assert again.exit_code == 0, again.output  # an earlier export is replaced, and the killed one's leftovers cleared
    assert [p.name for p in tmp_path.iterdir()] == ["site"]
    page.goto((out / "index.html").as_uri())
    page.click("#emotions a:text-is('calm')")
    page.wait_for_url("**/emotion/calm.html")
    page.click(f".top-features tr:nth-child(2) a:text-is('{n}')")
    page.wait_for_url(f"**/feature/sae/{n}.html")
    check_feature_page(page, study["db"], n)
    shot(page, "export-feature")
    page.goto(urljoin((out / "search.html").as_uri(), "search.html?q=calm"))
    page.wait_for_selector("#results a")
    page.click("#results a:text-is('emotion calm')")
    page.wait_for_url("**/emotion/calm.html")


@pytest.fixture(scope="module")
def steer_server(study):
    """`saekit browse --model tiny` (the model the tiny study ranked) in a subprocess."""
    proc, port = start_server(study["db"], "--model", "tiny", "--steer-out", str(study["tmp"] / "steer"))
    yield f"http://127.0.0.1:{port}/"
    proc.terminate()
    proc.wait(timeout=30)


def run_steer(page, strength: str, tokens: str = "24") -> dict:
    page.fill("input[name=strength]", strength)
    page.fill("input[name=max_new_tokens]", tokens)
    page.evaluate("document.getElementById('status').dataset.done = ''")
    page.click("#run")
    page.wait_for_function("document.getElementById('status').dataset.done")
    cols = {c: "".join(page.locator(f"#col-{c} .text .tok").all_text_contents()) for c in ("clean", "edited")}
    kls = [float(x) for x in page.locator("#kl tr.kl-row td:nth-child(3)").all_text_contents()]
    ids = page.locator("#status").get_attribute("data-ids")
    return {"text": cols, "kl": kls, "ids": json.loads(ids) if ids else None,
            "status": page.locator("#status").text_content()}


def test_steer_page_streams_compares_limits_and_saves_in_chromium(steer_server, study, page):
    page.goto(steer_server + "emotion/calm.html")
    page.click("a.steer-link")
    page.wait_for_url("**/steer.html?emotion=calm")
    zero = run_steer(page, "0")
    assert zero["status"].startswith("done") and zero["text"]["clean"] == zero["text"]["edited"]
    assert zero["ids"]["clean"] == zero["ids"]["edited"] and zero["kl"] and max(zero["kl"]) == 0.0
    steered = run_steer(page, "2")
    assert steered["ids"]["edited"] != steered["ids"]["clean"] and max(steered["kl"]) > 0
    shot(page, "steer")
    page.fill("input[name=max_new_tokens]", "1000")
    assert page.evaluate("document.querySelector('input[name=max_new_tokens]').checkValidity()") is False   # the form says so
    page.evaluate("document.getElementById('steer').noValidate = true")   # past the form's own max: the server's limit
    too_many = run_steer(page, "0.1", tokens="1000")
    assert "1 to 128 tokens" in too_many["status"]
    # two generations at once: one of them is told the server is busy
    answers = page.evaluate("""() => Promise.all([0, 1].map(() => fetch('steer/stream', {method: 'POST',
        headers: {'Content-Type': 'application/json'}, body: JSON.stringify({prompt: 'Hello there', emotion: 'calm',
        max_new_tokens: 128})}).then(r => r.text().then(t => [r.status, t]))))""")
    assert sorted(a[0] for a in answers) == [200, 409] and "busy" in next(a[1] for a in answers if a[0] == 409)
    page.fill("input[name=strength]", "2")
    page.fill("input[name=max_new_tokens]", "24")
    page.click("#save")
    page.wait_for_selector("#saved[data-path]")
    saved = page.locator("#saved").get_attribute("data-path")
    assert "saekit experiment run" in page.locator("#saved").text_content()
    result = runner.invoke(app, ["experiment", "run", saved])
    assert result.exit_code == 0, result.output
    spec = json.loads(rows(study["db"], "SELECT spec FROM experiments ORDER BY created_at DESC LIMIT 1")[0]["spec"])
    gens = {g["condition"]: g["tokens"] for g in map(json.loads, open(spec["generations_file"]))}
    assert gens["none"] == steered["ids"]["clean"] and gens["steer"] == steered["ids"]["edited"]
    # the expected refusals (a 400 and a 409) are logged by chromium as failed loads; nothing else may be
    page.problems[:] = [p for p in page.problems if "status of 400" not in p and "status of 409" not in p]


def test_study_report_renders_in_chromium(study, page):
    """The report a person reads: its sections, shaded example tokens and figures, as the browser draws them."""
    report = study["tmp"] / "study" / "report.html"
    page.goto(report.as_uri())
    headings = page.locator("h2").all_inner_texts()
    assert {"SAE quality", "Top feature per emotion"} <= set(headings)
    assert any(h.startswith("Logit lens") for h in headings)
    assert any(h.startswith("Style or emotion?") for h in headings)   # PCs against the stories' style
    section = page.locator("h2", has_text="Style or emotion?").locator("xpath=following-sibling::table[1]")
    assert section.locator("tr").count() >= 1 + 5 and "valence_sign" in section.inner_text()
    assert "positions >= 1" in page.locator("p").first.evaluate("() => document.body.innerText")
    spans = page.locator("td span[title]")
    assert spans.count() > 0
    shade = [float(s.get_attribute("title")) for s in spans.all()[:20]]
    assert all(v >= 0 for v in shade) and max(shade) > 0
    head = page.locator("h2", has_text="Top feature per emotion").locator("xpath=following-sibling::table[1] >> tr").first
    assert "top passages from outside text" in head.inner_text()
    images = page.locator("img")
    assert images.count() >= 4
    assert all(w > 100 for w in images.evaluate_all("els => els.map(e => e.naturalWidth)"))
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "study-report.png"), full_page=True)
