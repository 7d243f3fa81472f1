"""The annotation tool over real HTTP: API round trip, export, concurrency, limits, escaping."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import httpx
import pytest

from editalign.annotate.server import MAX_BODY, MIN_TOKEN_LENGTH, AnnotateServer
from editalign.annotate.store import AnnotationStore, Invalid
from editalign.cli import main
from editalign.data.pairs import EditPair, load_pairs

XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
PAIRS = [EditPair(f"Question {i} {XSS}", f"The answer {i} is Berlin {XSS}.", f"The answer {i} "
                  f"is Berlin {XSS}.", f"q{i}", {"source": "test"}) for i in range(12)]


@contextlib.contextmanager
def serve(tmp_path, token=None, pairs=PAIRS):
    store = AnnotationStore(tmp_path / "ann.sqlite")
    store.import_pairs(pairs)
    server = AnnotateServer(store, "127.0.0.1", 0, token=token,
                            export_path=tmp_path / "edits.jsonl")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _save(base, position, annotator, revised, version, spans=(), **kw):
    return httpx.post(f"{base}/api/items/{position}", timeout=60, **kw,
                      json={"annotator": annotator, "revised": revised, "spans": list(spans),
                            "version": version})


def test_round_trip_save_reload_export_and_label(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITALIGN_CACHE", str(tmp_path / "cache"))
    with serve(tmp_path) as (_, base):
        item = httpx.get(f"{base}/api/items/1?annotator=ann").json()
        assert item["id"] == "q1" and item["count"] == 12 and item["annotation"] is None
        assert item["original"] == PAIRS[1].original
        start = item["original"].index("Berlin")
        span = {"start": start, "end": start + 6, "type": "factual", "explanation": "wrong"}
        fixed = item["original"].replace("Berlin", "Paris")
        assert _save(base, 1, "ann", fixed, 0, [span]).json() == {"version": 1}
        again = httpx.get(f"{base}/api/items/1?annotator=ann").json()["annotation"]
        assert again["revised"] == fixed and again["spans"] == [span] and again["version"] == 1
        assert httpx.get(f"{base}/api/items/1?annotator=other").json()["annotation"] is None
        exported = httpx.post(f"{base}/api/export", json={}).json()
        assert exported == {"count": 1, "path": str(tmp_path / "edits.jsonl")}
        download = httpx.get(f"{base}/api/export.jsonl")
        assert download.text == (tmp_path / "edits.jsonl").read_text()
    pairs, report = load_pairs(tmp_path / "edits.jsonl")
    assert report.preset == "default" and len(pairs) == 1
    pair = pairs[0]
    assert (pair.id, pair.original, pair.revised) == ("q1", PAIRS[1].original, fixed)
    assert pair.meta["annotator"] == "ann" and pair.meta["error_spans"] == [span]
    assert pair.meta["source"] == "annotate"
    # `editalign label` reads the export
    assert main(["label", "--data", str(tmp_path / "edits.jsonl"), "--model", "tiny",
                 "--out", str(tmp_path / "labels")]) == 0
    assert (tmp_path / "labels" / "stats.json").is_file()


def test_export_command_and_restart_keeps_work(tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "prompt": "p", "response": f"r {i}"})
                            + "\n" for i in range(3)))
    db = tmp_path / "rows.annotate.sqlite"
    args = ["annotate", "--data", str(data), "--field", "response=response", "--export"]
    assert main(args) == 0
    assert "3 items (3 new)" in capsys.readouterr().out
    AnnotationStore(db).save(2, "a", "r two", [], 0)
    assert main(args) == 0  # importing again adds nothing and keeps the annotation
    out = capsys.readouterr().out
    assert "3 items (0 new)" in out and "wrote 1 edited pairs" in out
    pairs, _ = load_pairs(tmp_path / "rows.edits.jsonl")
    assert [(p.id, p.original, p.revised) for p in pairs] == [("r2", "r 2", "r two")]


def test_many_annotators_at_once_lose_no_writes(tmp_path):
    annotators = [f"annotator {k}" for k in range(6)]
    rounds = 3
    with serve(tmp_path) as (server, base):

        def work(name):
            with httpx.Client(timeout=120) as client:
                for position in range(len(PAIRS)):
                    version = 0
                    for r in range(rounds):
                        text = f"{name} item {position} round {r}"
                        reply = client.post(f"{base}/api/items/{position}", json={
                            "annotator": name, "revised": text, "spans": [],
                            "version": version})
                        assert reply.status_code == 200, reply.text
                        version = reply.json()["version"]
            return name

        with ThreadPoolExecutor(len(annotators)) as pool:
            assert sorted(pool.map(work, annotators)) == annotators
        exported = server.store.export_pairs()
    assert len(exported) == len(annotators) * len(PAIRS)
    for pair in exported:
        item_id, name = pair.id.split("@")
        assert pair.revised == f"{name} item {item_id[1:]} round {rounds - 1}"
        assert pair.meta["version"] == rounds


def test_stale_concurrent_saves_conflict_instead_of_overwriting(tmp_path):
    with serve(tmp_path) as (server, base):
        for attempt in range(5):
            barrier = threading.Barrier(4)

            def racer(k, version, barrier=barrier, attempt=attempt):
                barrier.wait()
                return _save(base, 0, "same", f"tab {k} attempt {attempt}", version)

            with ThreadPoolExecutor(4) as pool:
                replies = list(pool.map(racer, range(4), [attempt] * 4))
            codes = sorted(r.status_code for r in replies)
            assert codes == [200, 409, 409, 409]  # exactly one of the tabs wins
            winner = next(r for r in replies if r.status_code == 200)
            assert winner.json()["version"] == attempt + 1
            loser = next(r for r in replies if r.status_code == 409).json()
            assert loser["current"]["version"] == attempt + 1
        stored = server.store.annotation("q0", "same")
        assert stored["version"] == 5 and stored["revised"].endswith("attempt 4")


def test_input_limits_and_validation(tmp_path):
    with serve(tmp_path) as (_, base):
        big = "x" * (MAX_BODY + 10)
        reply = httpx.post(f"{base}/api/items/0", content=big,
                           headers={"content-type": "application/json"})
        assert reply.status_code == 413
        assert httpx.post(f"{base}/api/items/0", content="annotator=a",
                          headers={"content-type": "application/x-www-form-urlencoded"}
                          ).status_code == 415
        assert httpx.post(f"{base}/api/items/0", content="{",
                          headers={"content-type": "application/json"}).status_code == 400
        assert _save(base, 0, "a", "x" * 200_001, 0).status_code == 400
        assert _save(base, 0, "<b>", "ok", 0).status_code == 400
        assert _save(base, 0, "", "ok", 0).status_code == 400
        length = len(PAIRS[0].original)
        for span in ({"start": 5, "end": 5}, {"start": -1, "end": 3},
                     {"start": 0, "end": length + 1}, {"start": 0, "end": 2, "type": "<x>"},
                     {"start": "0", "end": 2}):
            assert _save(base, 0, "a", "ok", 0, [span]).status_code == 400, span
        assert _save(base, 0, "a", "ok", 0, [{"start": 0, "end": 1}] * 501).status_code == 400
        assert _save(base, 99, "a", "ok", 0).status_code == 404
        assert httpx.get(f"{base}/api/items/99").status_code == 404
        assert httpx.get(f"{base}/../../etc/passwd").status_code == 404
        assert httpx.get(f"{base}/static/../store.py").status_code == 404


def test_token_host_check_and_non_loopback_binding(tmp_path):
    store = AnnotationStore(tmp_path / "t.sqlite")
    with pytest.raises(ValueError, match="needs a token"):
        AnnotateServer(store, "0.0.0.0", 0)  # refused before anything is bound
    with serve(tmp_path, token="s3cret") as (server, base):
        assert server.url.endswith("?token=s3cret")
        assert httpx.get(f"{base}/").status_code == 200  # the page holds no data
        assert httpx.get(f"{base}/api/info").status_code == 401
        assert httpx.get(f"{base}/api/info", headers={"X-Token": "wrong"}).status_code == 401
        assert httpx.get(f"{base}/api/info", headers={"X-Token": "s3cret"}).json()["count"] == 12
        assert httpx.get(f"{base}/api/info",
                         headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert _save(base, 0, "a", "x", 0).status_code == 401
        # DNS rebinding: a foreign Host header is refused even with the token
        assert httpx.get(f"{base}/api/info", headers={"X-Token": "s3cret",
                                                      "Host": "evil.example"}).status_code == 403
        assert httpx.get(f"{base}/", headers={"Host": "localhost:1"}).status_code == 200


def test_data_is_escaped_everywhere(tmp_path):
    with serve(tmp_path) as (_, base):
        page = httpx.get(f"{base}/")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "Berlin" not in page.text and "Question" not in page.text  # no data in HTML
        reply = httpx.get(f"{base}/api/items/0")
        assert reply.headers["content-type"].startswith("application/json")
        assert "<" not in reply.text  # even raw JSON holds no tag
        assert reply.json()["prompt"] == PAIRS[0].prompt  # ... yet the text is intact
    static = resources.files("editalign.annotate") / "static"
    for name in ("app.js", "diff.js"):
        code = (static / name).read_text()
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(",
                             code), name
    html = (static / "index.html").read_text()
    assert not re.search(r"<script>|\son\w+=", html)  # no inline code for the CSP to allow


def _raw_post(base, body: bytes):
    return httpx.post(f"{base}/api/items/0", content=body, timeout=30,
                      headers={"content-type": "application/json"})


def test_body_shape_is_checked_and_a_400_names_the_field(tmp_path):
    ok = {"annotator": "a", "revised": "ok", "spans": [], "version": 0}
    cases = [
        ({**ok, "spans": 5}, "'spans'"), ({**ok, "spans": True}, "'spans'"),
        ({**ok, "spans": "0-3"}, "'spans'"), ({**ok, "spans": {"start": 0}}, "'spans'"),
        ({**ok, "spans": [5]}, "'spans[0]'"), ({**ok, "spans": None}, "'spans'"),
        ({**ok, "spans": [{"start": 0, "end": 1, "type": ["error"]}]}, "'spans[0].type'"),
        ({**ok, "spans": [{"start": 0, "end": 1, "explanation": 7}]}, "'spans[0].explanation'"),
        ({**ok, "spans": [{"start": 0, "end": 1, "explanation": "\ud800"}]},
         "'spans[0].explanation'"),
        ({**ok, "revised": "\ud800 unpaired surrogate"}, "'revised'"),
        ({**ok, "revised": ["list"]}, "'revised'"), ({**ok, "version": True}, "'version'"),
        ({**ok, "version": 1.0}, "'version'"), ({**ok, "annotator": {"n": 1}}, "'annotator'"),
        ({**ok, "annotator": "a\n"}, "'annotator'"), ({"revised": "ok"}, "'annotator'"),
    ]
    with serve(tmp_path) as (server, base):
        for body, field in cases:
            reply = _raw_post(base, json.dumps(body).encode())
            assert reply.status_code == 400 and field in reply.json()["error"], (body, reply.text)
        for raw in (b"[" * 100_000 + b"]" * 100_000,
                    json.dumps({**ok, "spans": "PLACEHOLDER"}).encode().replace(
                        b'"PLACEHOLDER"', b"[" * 50_000 + b"]" * 50_000)):
            reply = _raw_post(base, raw)
            assert reply.status_code == 400 and "nested too deeply" in reply.json()["error"]
        for raw in (b"[]", b"5", b"null", b'"text"'):
            assert _raw_post(base, raw).status_code == 400
        # nothing was stored, and the server still answers
        assert server.store.export_pairs() == []
        assert _raw_post(base, json.dumps(ok).encode()).json() == {"version": 1}
    store = AnnotationStore(tmp_path / "direct.sqlite")
    store.import_pairs(PAIRS[:1])
    with pytest.raises(Invalid, match="'annotator'"):
        store.save(0, "name\n", "ok", [], 0)  # "$" would have matched before the newline


def test_a_slow_or_short_body_does_not_hold_a_thread(tmp_path):
    store = AnnotationStore(tmp_path / "slow.sqlite")
    store.import_pairs(PAIRS[:1])
    server = AnnotateServer(store, "127.0.0.1", 0, read_timeout=1.0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    head = (b"POST /api/items/0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    try:
        for trickle in (False, True):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                started = time.monotonic()
                sock.sendall(head + b"{\"")
                reply = b""
                while trickle and time.monotonic() - started < 4 and not reply:
                    # one byte every 0.3 s: no single read waits a whole second
                    with contextlib.suppress(OSError):
                        sock.sendall(b" ")
                    sock.settimeout(0.3)
                    with contextlib.suppress(TimeoutError):
                        reply = sock.recv(4096)
                sock.settimeout(10)
                reply = reply or sock.recv(4096)
                assert reply.startswith(b"HTTP/1.1 408"), (trickle, reply[:80])
                assert time.monotonic() - started < 3
    finally:
        server.shutdown()
        server.server_close()


def test_trickled_headers_do_not_hold_a_thread(tmp_path):
    """Each header byte comes within the per-read timeout, but the headers as a whole must
    arrive within read_timeout: the server closes the connection."""
    store = AnnotationStore(tmp_path / "slow-headers.sqlite")
    store.import_pairs(PAIRS[:1])
    server = AnnotateServer(store, "127.0.0.1", 0, read_timeout=1.0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /api/items HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            closed = False
            while time.monotonic() - started < 6 and not closed:
                try:
                    sock.sendall(b"X")  # one byte every 0.3 s: no single read waits 1 s
                    sock.settimeout(0.3)
                    closed = sock.recv(4096) == b""
                except TimeoutError:
                    continue
                except OSError:  # reset by the server: closed too
                    closed = True
            assert closed and time.monotonic() - started < 4
        # the server still answers a normal request
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
    finally:
        server.shutdown()
        server.server_close()


def test_a_token_off_loopback_must_be_long(tmp_path, capsys):
    store = AnnotationStore(tmp_path / "t.sqlite")
    with pytest.raises(ValueError, match=f"at least {MIN_TOKEN_LENGTH} characters"):
        AnnotateServer(store, "0.0.0.0", 0, token="a")  # refused before anything is bound
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    assert main(["annotate", "--data", str(data), "--field", "response=response",
                 "--host", "0.0.0.0", "--port", "0", "--token", "short"]) == 2
    assert f"at least {MIN_TOKEN_LENGTH} characters" in capsys.readouterr().err
