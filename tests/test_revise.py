"""Reviser pieces without a server: templates, filters, cache, back-off, field mapping.

The orchestration tests answer through ``httpx.MockTransport`` to make filter paths
(strict retry, reward filter, missing reference) deterministic; everything that needs
a real server is in test_revise_server.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from editalign.cli import main
from editalign.data.pairs import EditPair, load_pairs
from editalign.eval.judges import ApiJudge
from editalign.llm.cache import RequestCache, request_key
from editalign.llm.client import (
    ANSWER_BYTES_PER_TOKEN,
    MIN_ANSWER_BYTES,
    ChatClient,
    ClientConfig,
    RequestFailed,
    parse_answer,
    redact,
)
from editalign.revise import (
    ReviseOptions,
    TemplateError,
    check_completion,
    clean_completion,
    edit_ratio,
    load_template,
    revise_pairs,
    reward_filter,
    shipped_templates,
)
from editalign.revise.prompts import parse_template
from editalign.revise.reviser import revise_fields
from editalign.revise.scorer import reward_model_scorer

# --------------------------------------------------------------------------- templates


def test_shipped_templates_render_and_placeholders_are_not_reexpanded():
    assert {"minimal", "minimal-reference", "strict"} <= set(shipped_templates())
    minimal = load_template("minimal")
    assert not minimal.needs_reference
    messages = minimal.render("Say {{response}}", "It is {{prompt}} here", None)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert "Say {{response}}" in user and "It is {{prompt}} here" in user
    assert "keep everything else verbatim" in user
    reference = load_template("minimal-reference")
    assert reference.needs_reference
    assert "THE REF" in reference.render("p", "r", "THE REF")[1]["content"]


def test_user_template_file_and_template_errors(tmp_path):
    own = tmp_path / "mine.txt"
    own.write_text("# comment\n[user]\nFix: {{ response }} for {{prompt}}\n")
    template = load_template(str(own))
    assert template.name == "mine" and template.system == ""
    assert template.render("P", "R") == [{"role": "user", "content": "Fix: R for P"}]
    with pytest.raises(TemplateError, match="unknown placeholder"):
        parse_template("[user]\n{{response}} {{answer}}", "x")
    with pytest.raises(TemplateError, match=r"\[user\]"):
        parse_template("[system]\nhi {{response}}", "x")
    with pytest.raises(TemplateError, match="never shows the response"):
        parse_template("[user]\n{{prompt}}", "x")
    with pytest.raises(TemplateError, match="before the first"):
        parse_template("stray\n[user]\n{{response}}", "x")
    with pytest.raises(TemplateError, match="unknown template"):
        load_template("nope")


# --------------------------------------------------------------------------- filters


def test_edit_ratio_is_word_level_and_normalised():
    assert edit_ratio("a b c d", "a b c d") == 0
    assert edit_ratio("The capital is Berlin.", "The capital is Paris.") == pytest.approx(1 / 5)
    assert edit_ratio("one two", "three four five six") == 1
    assert edit_ratio("", "") == 0


def test_clean_completion_and_completion_filter():
    assert clean_completion("  ```\nFixed text.\n```  ") == "Fixed text."
    assert clean_completion("Corrected response: Paris is the capital.") == (
        "Paris is the capital.")
    assert clean_completion("Keep: this label") == "Keep: this label"
    assert not check_completion("cut off", "length").kept
    assert "truncated" in check_completion("cut off", "length").reason
    assert not check_completion("  ", "stop").kept
    assert check_completion("ok", "stop").kept


def test_reward_filter_margin_and_scores():
    def scorer(prompts, responses):  # a toy reward: fewer "bad" words is better
        return [-r.count("bad") for r in responses]

    verdicts = reward_filter(scorer, ["p", "p", "p"], ["bad bad", "bad", "good"],
                             ["bad", "bad", "bad"], margin=0.5)
    assert [d.kept for d, _ in verdicts] == [True, False, False]
    assert verdicts[0][1] == {"original": -2.0, "revised": -1.0, "delta": 1.0}
    assert "margin 0.5" in verdicts[1][0].reason
    with pytest.raises(ValueError, match="scores"):
        reward_filter(lambda p, r: [0.0], ["a", "b"], ["x", "y"], ["x", "y"])


def test_reward_model_scorer_from_a_saved_token_reward_model(tmp_path, monkeypatch):
    rm = pytest.importorskip("editalign.reward_model")
    if not hasattr(rm, "TokenRewardModel"):
        with pytest.raises(ValueError, match="--reward-scorer"):
            reward_model_scorer("some/dir")
        return
    from editalign.models import load_tokenizer

    monkeypatch.setenv("EDITALIGN_CACHE", str(tmp_path / "cache"))
    tokenizer = load_tokenizer("tiny")
    rm.TokenRewardModel.from_backbone("tiny", tokenizer=tokenizer).save_pretrained(
        tmp_path / "rm", tokenizer=tokenizer)
    scorer = reward_model_scorer(str(tmp_path / "rm"))
    scores = scorer(["Capital of France?", "Capital of France?", "2+2?"],
                    ["It is Paris.", "It is Berlin.", "4"])
    assert len(scores) == 3 and all(isinstance(x, float) for x in scores)
    assert scores[0] != scores[1]  # different responses, different rewards
    assert scorer(["2+2?"], ["4"]) == pytest.approx([scores[2]], abs=1e-5)  # batch-independent
    verdicts = reward_filter(scorer, ["Capital of France?"], ["It is Berlin."],
                             ["It is Paris."], margin=0.0)
    assert verdicts[0][1]["delta"] == pytest.approx(scores[0] - scores[1], abs=1e-5)


# --------------------------------------------------------------------------- client pieces


def test_request_key_ignores_the_api_key_and_cache_survives_reopen(tmp_path):
    messages = [{"role": "user", "content": "hi"}]
    a = request_key("http://h/v1/", "m", messages, {"temperature": 0})
    assert a == request_key("http://h/v1", "m", messages, {"temperature": 0})
    assert a != request_key("http://h/v1", "m", messages, {"temperature": 1})
    assert a != request_key("http://h/v1", "m2", messages, {"temperature": 0})
    config = ClientConfig("http://h/v1", "m", api_key="sk-secret")
    assert "sk-secret" not in repr(config)
    path = tmp_path / "c.sqlite"
    with RequestCache(path) as cache:
        cache.put(a, {"text": "é", "finish_reason": "stop"})
        cache.put(a, {"text": "second", "finish_reason": "stop"})  # first answer wins
    with RequestCache(path) as cache:
        assert cache.get(a) == {"text": "é", "finish_reason": "stop"} and len(cache) == 1
        assert cache.get("missing") is None


def test_backoff_is_exponential_with_full_jitter_and_honours_retry_after():
    client_config = ClientConfig("http://h/v1", "m", backoff_base=1.0, backoff_max=8.0)

    async def delays():
        async with ChatClient(client_config, rng=random.Random(0)) as client:
            return ([client.backoff(n) for n in range(1, 7) for _ in range(50)],
                    client.backoff(1, retry_after=5.0), client.backoff(1, retry_after=100))

    values, after, capped = asyncio.run(delays())
    per_attempt = [values[i * 50:(i + 1) * 50] for i in range(6)]
    for n, group in enumerate(per_attempt, 1):
        assert all(0 <= d <= min(8.0, 2 ** (n - 1)) for d in group)
    assert len({round(d, 6) for d in per_attempt[3]}) > 40  # jittered, not fixed
    assert after >= 5.0 and capped == 8.0


def test_parse_answer_rejects_malformed_bodies():
    ok = parse_answer(b'{"choices":[{"message":{"content":"x"},"finish_reason":"stop"}]}')
    assert ok["text"] == "x" and ok["finish_reason"] == "stop"
    # only the usage counts and a short finish_reason are kept; nothing else a server sends
    odd = parse_answer(json.dumps({"choices": [{"message": {"content": "x"},
                                                "finish_reason": {"nested": "x" * 100}}],
                                   "usage": {"prompt_tokens": "many", "completion_tokens": 3,
                                             "secret": "x" * 1000}}).encode())
    assert odd == {"text": "x", "finish_reason": None, "usage": {"completion_tokens": 3}}
    assert len(parse_answer(json.dumps({"choices": [{"message": {"content": "x"},
                                                     "finish_reason": "y" * 500}]}).encode()
                            )["finish_reason"]) == 64
    for body in (b"", b"{", b"[]", b'{"choices": []}', b'{"choices": [{"message": 3}]}',
                 b'{"choices":[{"message":{"content":7}}]}',
                 b'{"choices":[{"message":{"content":"a\\ud800"}}]}'):
        with pytest.raises(ValueError, match="malformed"):
            parse_answer(body)


def test_config_validation():
    with pytest.raises(ValueError, match="concurrency"):
        ClientConfig("http://h", "m", concurrency=0)
    with pytest.raises(ValueError, match="http"):
        ClientConfig("h:80", "m")


# --------------------------------------------------------------------------- orchestration


def _mock(answers):
    """A transport answering from ``answers(user_text) -> (text, finish_reason)``."""
    calls = []

    def handle(request: httpx.Request) -> httpx.Response:
        payload = json.loads(request.content)
        user = payload["messages"][-1]["content"]
        calls.append(user)
        text, finish = answers(user)
        return httpx.Response(200, json={"choices": [{"message": {"content": text},
                                                      "finish_reason": finish}]})

    return httpx.MockTransport(handle), calls


def _run(pairs, transport, template="minimal", options=None, scorer=None, cache=None):
    config = ClientConfig("http://mock/v1", "mock-model", backoff_base=0.01)
    return revise_pairs(pairs, lambda: ChatClient(config, cache, transport=transport),
                        load_template(template), options, scorer=scorer)


PAIRS = [EditPair("Capital of France?", "It is Berlin.", "It is Berlin.", "a"),
         EditPair("Spider legs?", "Spiders have six legs.", "Spiders have six legs.", "b"),
         EditPair("Sky colour?", "The sky is green.", "The sky is green.", "c", {"k": 1})]


def test_filters_record_why_rows_are_dropped_and_meta_records_decisions():
    def answers(user):
        if "Berlin" in user:
            return "It is Paris.", "stop"
        if "six legs" in user:
            return "Spiders", "length"
        return "Completely different words about weather patterns today entirely.", "stop"

    transport, _ = _mock(answers)
    result = _run(PAIRS, transport, options=ReviseOptions(max_edit_ratio=0.5))
    assert [o.status for o in result.outcomes] == ["kept", "dropped", "dropped"]
    kept = result.kept[0]
    assert (kept.id, kept.original, kept.revised) == ("a", "It is Berlin.", "It is Paris.")
    revise = kept.meta["revise"]
    assert revise["model"] == "mock-model" and revise["template"] == "minimal"
    assert revise["edit_ratio"] == pytest.approx(0.25)
    assert [f["kept"] for f in revise["filters"]] == [True, True]
    assert "truncated" in result.outcomes[1].reason
    assert "a rewrite, not a minimal edit" in result.outcomes[2].reason
    record = result.outcomes[2].record()
    assert record["candidate"].startswith("Completely") and record["pair"]["meta"] == {"k": 1}
    assert "dropped, truncated completion: 1" in result.summary()


def test_strict_retry_once_then_keep_or_drop():
    def answers(user):
        strict = "previous correction rewrote too much" in user
        if "Berlin" in user:
            return ("It is Paris.", "stop") if strict else ("Paris, the city of light.", "stop")
        return "Totally new words about something else here.", "stop"

    transport, calls = _mock(answers)
    options = ReviseOptions(max_edit_ratio=0.5, strict_template=load_template("strict"))
    result = _run(PAIRS[:2], transport, options=options)
    assert len(calls) == 4
    assert result.outcomes[0].status == "kept"
    assert result.kept[0].meta["revise"]["template"] == "strict"
    assert [f["kept"] for f in result.kept[0].meta["revise"]["filters"]] == [True, False,
                                                                             True, True]
    assert result.outcomes[1].status == "dropped"
    assert result.outcomes[1].reason.endswith("after a retry with the strict template")


def test_reward_filter_in_the_pipeline_and_reference_template():
    transport, calls = _mock(lambda user: ("It is Paris." if "Berlin" in user else
                                           "Spiders have eight legs.", "stop"))
    pairs = [PAIRS[0], EditPair("Spider legs?", "Spiders have six legs.", "Eight.", "b"),
             EditPair("x?", "no reference here", "no reference here", "c")]

    def scorer(prompts, responses):
        return [1.0 if "Paris" in r else 0.0 for r in responses]

    result = _run(pairs, transport, "minimal-reference",
                  ReviseOptions(max_edit_ratio=None, reward_margin=0.5), scorer=scorer)
    assert [o.status for o in result.outcomes] == ["dropped", "dropped", "dropped"]
    # row a has no reference (revised == original), row b's reference is its revised text
    assert "no reference answer" in result.outcomes[0].reason
    assert len(calls) == 1 and "Eight." in calls[0]
    assert "reward gain +0.0000 < margin 0.5" in result.outcomes[1].reason
    result = _run(pairs[1:2], transport, "minimal-reference",
                  ReviseOptions(max_edit_ratio=None, reward_margin=-1), scorer=scorer)
    kept = result.kept[0]
    assert kept.meta["revise"]["reward"] == {"original": 0.0, "revised": 0.0, "delta": 0.0}
    assert kept.meta["input_revised"] == "Eight."


def test_fatal_status_stops_the_run(tmp_path):
    transport = httpx.MockTransport(lambda request: httpx.Response(401, json={}))
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    from editalign.llm.client import FatalRequestError

    with pytest.raises(FatalRequestError, match="API key"):
        _run(load_pairs(data, fields=revise_fields(["response=response"]))[0], transport)


# --------------------------------------------------------------------------- input mapping


def test_prompt_and_response_only_rows_and_preference_rows(tmp_path):
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"q": "Q?", "answer": "A."}) + "\n")
    pairs, _ = load_pairs(plain, fields=revise_fields(["prompt=q", "response=answer"]))
    assert (pairs[0].prompt, pairs[0].original, pairs[0].revised) == ("Q?", "A.", "A.")
    pref = tmp_path / "pref.jsonl"
    pref.write_text(json.dumps({"prompt": "P", "chosen": "good", "rejected": "bad"}) + "\n")
    pairs, _ = load_pairs(pref)
    assert pairs[0].original == "bad"  # the rejected reply is what gets revised


def test_cli_requires_arguments_and_reports_bad_templates(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--api-base, --model, --out required"):
        main(["revise", "--data", "x.jsonl"])
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    rc = main(["revise", "--data", str(data), "--field", "response=response", "--api-base",
               "http://127.0.0.1:9/v1", "--model", "m", "--out", str(tmp_path / "o.jsonl"),
               "--template", "nope"])
    assert rc == 2 and "unknown template 'nope'" in capsys.readouterr().err


def test_cli_reward_scorer_must_name_a_callable(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    base = ["revise", "--data", str(data), "--field", "response=response", "--api-base",
            "http://127.0.0.1:9/v1", "--model", "m", "--out", str(tmp_path / "o.jsonl")]
    for spec, message in (("nocolon", "expected MODULE:FUNCTION"),
                          ("json:nothing_here", "has no attribute"),
                          ("json:__doc__", "not callable")):
        assert main([*base, "--reward-scorer", spec]) == 2
        assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- hostile servers


@contextlib.contextmanager
def loopback_server(respond):
    """An HTTP server on 127.0.0.1 answering POSTs with ``respond(handler, body)``.

    Handler threads are daemons and every scripted response ends by itself, so nothing
    outlives the test.
    """

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with contextlib.suppress(OSError):  # the client gave up: fine
                respond(self, body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def trickle(handler, body, seconds=8.0, interval=0.25):
    """A 200 that announces a body and sends one byte per ``interval``: never idle for long."""
    body = b'{"choices": [{"message": {"content": "' + b"x" * int(seconds / interval) + b'"}}]}'
    body = body[:int(seconds / interval)]
    handler.send_response(200)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(body)))
    handler.end_headers()
    for byte in body:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        time.sleep(interval)


def send(handler, status, body=b"{}", headers=None, length=True):
    handler.send_response(status)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    if length:
        handler.send_header("content-length", str(len(body)))
    else:
        handler.send_header("connection", "close")
        handler.close_connection = True
    handler.end_headers()
    handler.wfile.write(body)


def answer_body(text):
    return json.dumps({"choices": [{"message": {"content": text},
                                    "finish_reason": "stop"}]}).encode()


def _complete(config):
    async def run():
        async with ChatClient(config) as client:
            return await client.complete([{"role": "user", "content": "hi"}])

    return asyncio.run(run())


def test_timeout_is_a_total_deadline_not_an_idle_timeout():
    with loopback_server(trickle) as base:
        started = time.monotonic()
        with pytest.raises(RequestFailed, match="timeout"):
            _complete(ClientConfig(base, "m", timeout=1.0, max_retries=0))
        assert time.monotonic() - started < 3.5
        # The API judge goes through the same client.
        judge = ApiJudge(base, timeout=1.0, max_retries=0)
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="timeout"):
            judge.ask("p", "a", "b")
        assert time.monotonic() - started < 3.5


def test_answer_byte_limit_is_derived_from_max_tokens():
    assert ClientConfig("http://h/v1", "m", max_tokens=16).answer_byte_limit == MIN_ANSWER_BYTES
    assert ClientConfig("http://h/v1", "m", max_tokens=4096).answer_byte_limit == (
        4096 * ANSWER_BYTES_PER_TOKEN)
    assert ClientConfig("http://h/v1", "m", max_answer_bytes=10).answer_byte_limit == 10


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "until-close"])
def test_oversized_answer_is_dropped_with_a_reason_and_not_cached(tmp_path, capsys, announced):
    huge = answer_body("word " * 1_000_000)  # ~5 MB, far over the 64 KiB limit
    with loopback_server(lambda h, _: send(h, 200, huge, length=announced)) as base:
        data = tmp_path / "d.jsonl"
        data.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
        out, cache = tmp_path / "o.jsonl", tmp_path / "c.sqlite"
        rc = main(["revise", "--data", str(data), "--field", "response=response",
                   "--api-base", base, "--model", "m", "--out", str(out), "--cache", str(cache),
                   "--max-tokens", "16", "--max-retries", "0", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert out.read_text() == ""
    dropped = out.with_name("o.dropped.jsonl")
    assert dropped.stat().st_size < 2000
    record = json.loads(dropped.read_text())
    assert record["status"] == "dropped" and record["reason"].startswith("answer too large")
    assert record["candidate"] is None and len(record["answer_prefix"]) <= 200
    assert "dropped, answer too large: 1" in capsys.readouterr().out
    with RequestCache(cache) as opened:
        assert len(opened) == 0


SECRET = "sk-echo-DO-NOT-LEAK-31337"


def test_api_key_echoed_by_the_server_is_redacted_everywhere(tmp_path, capsys, monkeypatch,
                                                             caplog):
    monkeypatch.setenv("EA_ECHO_KEY", SECRET)

    def echo(handler, body):
        auth = handler.headers.get("authorization", "")
        if b"echo-error" in body:
            send(handler, 400, json.dumps({"error": f"bad request with key {auth}"}).encode())
        else:
            send(handler, 200, answer_body(f"It is Paris. (your key: {auth[7:]})"))

    with loopback_server(echo) as base:
        data = tmp_path / "d.jsonl"
        data.write_text("".join(json.dumps({"id": f"r{i}", "prompt": "p", "response": text})
                                + "\n" for i, text in enumerate(["It is Berlin.",
                                                                 "echo-error please"])))
        out, cache = tmp_path / "o.jsonl", tmp_path / "c.sqlite"
        with caplog.at_level(logging.DEBUG):
            rc = main(["-v", "revise", "--data", str(data), "--field", "response=response",
                       "--api-base", base, "--model", "m", "--out", str(out), "--cache",
                       str(cache), "--api-key-env", "EA_ECHO_KEY", "--max-retries", "0",
                       "--max-edit-ratio", "1", "--no-progress"])
        judge = ApiJudge(base, api_key_env="EA_ECHO_KEY", max_retries=0)
        with pytest.raises(RuntimeError) as judged:
            judge.ask("p", "echo-error", "b")
    assert rc == 1  # the 400 row failed
    printed = capsys.readouterr()
    written = [out.read_text(), out.with_name("o.dropped.jsonl").read_text(),
               *(p.read_bytes().decode("utf-8", "replace") for p in tmp_path.glob("c.sqlite*"))]
    assert "It is Paris. (your key: [REDACTED])" in written[0]
    assert "HTTP 400" in written[1] and "[REDACTED]" in written[1]
    assert "HTTP 400" in str(judged.value) and "[REDACTED]" in str(judged.value)
    for text in (*written, printed.out, printed.err, caplog.text, str(judged.value)):
        assert SECRET not in text


def test_redirect_is_reported_as_a_redirect_not_a_malformed_answer(tmp_path, capsys,
                                                                  monkeypatch):
    monkeypatch.setenv("EA_REDIRECT_KEY", SECRET)
    moved = {"location": f"https://elsewhere.example/v1/chat/completions?key={SECRET}"}
    with loopback_server(lambda h, _: send(h, 307, b"", moved)) as base:
        data = tmp_path / "d.jsonl"
        data.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
        rc = main(["revise", "--data", str(data), "--field", "response=response",
                   "--api-base", base, "--model", "m", "--out", str(tmp_path / "o.jsonl"),
                   "--cache", str(tmp_path / "c.sqlite"), "--api-key-env", "EA_REDIRECT_KEY",
                   "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and "HTTP 307 (a redirect to https://elsewhere.example/" in err
        assert "malformed" not in err and SECRET not in err and "key=[REDACTED]" in err
        with pytest.raises(RuntimeError, match=r"HTTP 307 \(a redirect"):
            ApiJudge(base).ask("p", "a", "b")


def test_redact_replaces_plain_and_json_escaped_forms():
    assert redact('key "k/1" and k/1', ["k/1", None, ""]) == 'key "[REDACTED]" and [REDACTED]'
    assert redact(json.dumps({"e": 'a"b'}), ['a"b']) == '{"e": "[REDACTED]"}'


def test_a_large_error_body_is_cut_not_treated_as_an_answer():
    calls = []

    def handle(request):
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(503, content=b"x" * 1_000_000)
        return httpx.Response(200, content=answer_body("fine"))

    async def run():
        config = ClientConfig("http://mock/v1", "m", backoff_base=0.01, max_tokens=8)
        async with ChatClient(config, transport=httpx.MockTransport(handle)) as client:
            return await client.complete([{"role": "user", "content": "hi"}]), client.stats

    completion, stats = asyncio.run(run())
    assert completion.text == "fine" and stats.retries == {"http 503": 1}
