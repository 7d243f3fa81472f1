"""Reviser pieces without a server: templates, filters, cache, back-off, field mapping.

The orchestration tests answer through ``httpx.MockTransport`` to make filter paths
(strict retry, reward filter, missing reference) deterministic; everything that needs
a real server is in test_revise_server.py.
"""

from __future__ import annotations

import asyncio
import json
import random

import httpx
import pytest

from editalign.cli import main
from editalign.data.pairs import EditPair, load_pairs
from editalign.revise import (
    ChatClient,
    ClientConfig,
    RequestCache,
    ReviseOptions,
    TemplateError,
    check_completion,
    clean_completion,
    edit_ratio,
    load_template,
    request_key,
    revise_pairs,
    reward_filter,
    shipped_templates,
)
from editalign.revise.client import parse_answer
from editalign.revise.command import revise_fields, reward_model_scorer
from editalign.revise.prompts import parse_template

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
    for body in (b"", b"{", b"[]", b'{"choices": []}', b'{"choices": [{"message": 3}]}',
                 b'{"choices":[{"message":{"content":7}}]}'):
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
    from editalign.revise.client import FatalRequestError

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
