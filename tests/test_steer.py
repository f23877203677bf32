"""The steer page of `saekit browse --model`: streaming, strength 0 equals clean, a steered column
differs with a positive KL, limits, the busy answer, and a saved spec that `saekit experiment run`
reproduces token for token. In-process (Starlette's TestClient) on the tiny study; the chromium
walk-through is in test_browse.py."""

import json

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from saekit.browse import create_app
from saekit.browse.steer import NO_MODEL, open_playground
from saekit.cli import app

LOCAL = "http://127.0.0.1:8765"
runner = CliRunner()


@pytest.fixture(scope="module")
def play(tiny_study, tmp_path_factory):
    return open_playground(tiny_study / "study.duckdb", "tiny", tmp_path_factory.mktemp("steer"))


@pytest.fixture(scope="module")
def client(tiny_study, play):
    return TestClient(create_app(tiny_study / "study.duckdb", playground=play), base_url=LOCAL)


def stream(client, **form):
    body = {"prompt": "How was your day?", "emotion": "calm", "strength": 0.0, "max_new_tokens": 12, "seed": 1} | form
    r = client.post("/steer/stream", json=body)
    assert r.status_code == 200, r.text
    events = [json.loads(line) for line in r.text.splitlines()]
    assert events[0]["event"] == "start" and events[-1]["event"] == "done"
    return events


def column(events, name):
    return [e["id"] for e in events if e["event"] == "token" and e["column"] == name]


def test_strength_zero_streams_the_clean_tokens_with_zero_kl(client):
    events = stream(client)
    assert column(events, "clean") == column(events, "edited") == events[-1]["ids"]["clean"]
    assert len(column(events, "clean")) >= 1
    kls = [e["kl"] for e in events if e.get("column") == "edited"]
    assert kls and max(kls) == 0.0
    top = next(e["top"] for e in events if e.get("column") == "edited")
    assert len(top) == 5 and all(t["change"] == 0.0 for t in top)


def test_a_steered_column_differs_with_a_positive_kl_and_a_control_column(client):
    events = stream(client, strength=2.0, control=True, max_new_tokens=16)
    assert events[0]["columns"] == ["clean", "edited", "control"]
    assert column(events, "edited") != column(events, "clean")
    assert min(e["kl"] for e in events if e.get("column") == "edited") > 0
    assert column(events, "control")


@pytest.mark.parametrize("kind", ["steer_feature", "clamp", "ablate"])
def test_feature_interventions_stream(client, kind):
    events = stream(client, emotion=None, feature=3, kind=kind, strength=0.5)
    assert events[0]["setting"]["kind"] == kind and column(events, "edited")


@pytest.mark.parametrize("form,words", [
    ({"max_new_tokens": 1000}, "1 to 128 tokens"), ({"strength": 50.0}, "beyond the page's limit of +-2 for steer"),
    ({"prompt": "  "}, "the prompt is empty"), ({"prompt": "word " * 300}, "more than prompts.max_prompt_tokens = 256"),
    ({"temperature": 0}, "temperature above 0"), ({"emotion": "nope"}, "unknown emotion"), ({"colour": 1}, "unknown field"),
])
def test_limits_and_bad_requests_are_clear_400s(client, form, words):
    body = {"prompt": "Hi", "emotion": "calm", "strength": 0.1} | form
    r = client.post("/steer/stream", json=body)
    assert r.status_code == 400 and words in r.json()["error"], r.text


def test_a_second_generation_while_one_runs_is_told_busy(client, play):
    with play.lock:
        r = client.post("/steer/stream", json={"prompt": "Hi", "emotion": "calm"})
    assert r.status_code == 409 and r.json()["error"].startswith("busy")
    assert client.post("/steer/stream", json={"prompt": "Hi", "emotion": "calm", "max_new_tokens": 2}).status_code == 200


def test_cross_site_requests_are_refused(client):
    r = client.post("/steer/stream", json={"prompt": "Hi", "emotion": "calm"}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403


@pytest.mark.parametrize("form", [{"strength": 1.5}, {"kind": "clamp", "emotion": None, "feature": 3, "strength": 4.0}])
def test_a_saved_spec_reproduces_the_columns_through_experiment_run(client, tiny_study, form, tmp_path):
    body = {"prompt": "Tell me something.", "emotion": "calm", "max_new_tokens": 10, "seed": 7,
            "temperature": 0.9} | form
    events = [json.loads(x) for x in client.post("/steer/stream", json=body).text.splitlines()]
    saved = client.post("/steer/save", json=body).json()
    assert saved["command"].startswith("saekit experiment run ") and saved["path"].endswith(".toml")
    result = runner.invoke(app, ["experiment", "run", saved["path"]])
    assert result.exit_code == 0, result.output
    from saekit.db import read_only_query

    exp = read_only_query("SELECT spec FROM experiments ORDER BY created_at DESC LIMIT 1", tiny_study / "study.duckdb")
    gens = [json.loads(x) for x in open(json.loads(exp.to_pylist()[0]["spec"])["generations_file"])]
    by = {g["condition"]: g["tokens"] for g in gens}
    assert by["none"] == column(events, "clean") and by[form.get("kind", "steer")] == column(events, "edited")


def test_without_a_model_the_page_and_links_say_how_to_start_one(tiny_study):
    c = TestClient(create_app(tiny_study / "study.duckdb"), base_url=LOCAL)
    assert "saekit browse --model" in c.get("/steer.html", params={"emotion": "calm"}).text
    assert "saekit browse --model MODEL" in c.get("/emotion/calm.html").text
    r = c.post("/steer/stream", json={"prompt": "Hi", "emotion": "calm"})
    assert r.status_code == 409 and r.json()["error"] == NO_MODEL


def test_a_model_without_vectors_in_the_database_fails_at_start(tiny_study):
    result = runner.invoke(app, ["browse", "--db", str(tiny_study / "study.duckdb"), "--model", "smollm2-135m-instruct"])
    assert result.exit_code == 2 and "holds no emotion vectors of that model" in result.output


def test_a_client_that_leaves_stops_the_generation(tiny_study, play, monkeypatch):
    """A real server (uvicorn in a thread), each step slowed down; the client reads one line and leaves."""
    import socket
    import threading
    import time

    import uvicorn

    from saekit.experiments import sampling

    feed = sampling.Stream.feed
    monkeypatch.setattr(sampling.Stream, "feed", lambda self, ids: (time.sleep(0.05), feed(self, ids))[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(tiny_study / "study.duckdb", playground=play), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        body = json.dumps({"prompt": "Hi", "emotion": "calm", "max_new_tokens": 128}).encode()
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /steer/stream HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (port, len(body), body))
        got = b""
        while b'"event": "token"' not in got:
            got += sock.recv(4096)
        sock.close()
        deadline = time.monotonic() + 20
        while not play.lock.acquire(blocking=False):   # freed when the generation stops, not after 128 steps
            assert time.monotonic() < deadline, "the generation went on after its client left"
            time.sleep(0.05)
        play.lock.release()
        assert play.last["finished"] is False and 0 < play.last["tokens"] < 2 * 128
    finally:
        server.should_exit = True
        thread.join(timeout=30)
