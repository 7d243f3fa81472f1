"""Win rate: arithmetic, bootstrap, sampling symmetry, KL, judges (gold, reward model, API)."""

import json
import logging
import math
import random

import httpx
import pytest

from editalign.bench import BenchConfig, BenchTask, GoldWinJudge
from editalign.eval.judges import (
    ApiJudge,
    RewardModelJudge,
    outcome,
    parse_preference,
)
from editalign.eval.winrate import (
    bootstrap_interval,
    evaluate_winrate,
    read_prompt_rows,
    seeds_and_prompts_interval,
    sequence_logprobs,
    win_rate,
)
from editalign.generation import SamplingConfig, sample_responses
from editalign.registry import make_judge

# --------------------------------------------------------------------------- arithmetic


def test_win_rate_and_interval_hand_cases():
    assert win_rate([1, 1, 1]) == 1.0
    assert bootstrap_interval([1.0] * 10) == (1.0, 1.0)
    assert win_rate([0.5] * 7) == 0.5
    assert bootstrap_interval([0.5] * 7) == (0.5, 0.5)
    assert win_rate([0, 0]) == 0.0
    assert win_rate([1, 0, 0.5, 1]) == pytest.approx(0.625)
    assert outcome(1.0, 0.0) == 1.0 and outcome(0.0, 1.0) == 0.0 and outcome(0.3, 0.3) == 0.5
    with pytest.raises(ValueError):
        win_rate([])


def test_bootstrap_contains_the_mean_narrows_with_n_and_is_seeded():
    small = [1, 0, 0.5, 1, 1] * 4  # 20 prompts, mean 0.7
    large = small * 50  # 1000 prompts, same mean
    lo_s, hi_s = bootstrap_interval(small, seed=1)
    lo_l, hi_l = bootstrap_interval(large, seed=1)
    assert lo_s <= 0.7 <= hi_s and lo_l <= 0.7 <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 4  # ~ 1/sqrt(50) as wide
    # Close to the normal approximation for large n: mean ± 1.96·sd/√n.
    sd = math.sqrt(sum((x - 0.7) ** 2 for x in large) / len(large))
    assert (hi_l - lo_l) == pytest.approx(2 * 1.96 * sd / math.sqrt(len(large)), rel=0.15)
    assert bootstrap_interval(small, seed=1) == (lo_s, hi_s)
    assert bootstrap_interval(small, seed=2) != (lo_s, hi_s)


def test_seeds_and_prompts_interval_by_hand_and_against_the_prompt_bootstrap():
    # One prompt, two seeds: a resample's mean is seed 0's, the two's average or seed 1's
    # (probabilities 1/4, 1/2, 1/4), so the 2.5% and 97.5% quantiles are the two seeds.
    assert seeds_and_prompts_interval([[0.0], [0.2]], n_resamples=4000) == (0.0, 0.2)
    assert seeds_and_prompts_interval([[0.5, 0.5], [0.5, 0.5]]) == (0.5, 0.5)
    # Every seed alike: resampling seeds changes nothing, so it is the prompt bootstrap
    # (other random draws, the same distribution).
    prompts = [1, 0, 0.5, 1, 1] * 8
    lo_p, hi_p = bootstrap_interval(prompts, n_resamples=4000)
    lo_2, hi_2 = seeds_and_prompts_interval([prompts] * 5, n_resamples=4000)
    assert lo_2 == pytest.approx(lo_p, abs=0.02) and hi_2 == pytest.approx(hi_p, abs=0.02)
    # Seeds that disagree: the prompts alone (their per-prompt means over seeds) give a
    # narrow interval away from 0; with the seeds resampled it is wider and holds 0.
    rng = random.Random(0)
    table = [[shift + rng.choice([-0.5, 0.0, 0.5]) for _ in range(200)]
             for shift in (0.3, -0.2, 0.25, -0.25, 0.1)]
    pooled = [sum(col) / len(col) for col in zip(*table, strict=True)]
    lo_p, hi_p = bootstrap_interval(pooled)
    lo_2, hi_2 = seeds_and_prompts_interval(table)
    assert lo_p > 0 and hi_2 - lo_2 > 3 * (hi_p - lo_p) and lo_2 < 0 < hi_2
    assert seeds_and_prompts_interval(table, seed=1) != (lo_2, hi_2)
    with pytest.raises(ValueError, match="seeds × prompts"):
        seeds_and_prompts_interval([1.0, 2.0])


# --------------------------------------------------------------------------- prompts


@pytest.fixture(scope="module")
def bench_rows():
    return BenchTask.build(BenchConfig(seed=0)).rows("test")[:6]


@pytest.fixture
def prompts_file(tmp_path, bench_rows):
    path = tmp_path / "prompts.test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in bench_rows))
    return path


def test_read_prompt_rows(tmp_path, prompts_file, bench_rows):
    assert read_prompt_rows(prompts_file) == bench_rows
    assert read_prompt_rows(prompts_file, limit=2) == bench_rows[:2]
    as_json = tmp_path / "p.json"
    as_json.write_text(json.dumps({"data": [{"prompt": [{"role": "user", "content": "hi"}]}]}))
    assert read_prompt_rows(as_json)[0]["prompt"][0]["content"] == "hi"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n')
    with pytest.raises(ValueError, match="row 0 has no 'prompt'"):
        read_prompt_rows(bad)


# --------------------------------------------------------------------------- sampling and KL


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One model cache for the module: tiny-bench is built once."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDITALIGN_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


SAMPLING = SamplingConfig(max_new_tokens=10, batch_size=4, seed=3)


def test_same_model_gives_identical_samples_ties_and_zero_kl(cache, bench_rows):
    result = evaluate_winrate("tiny-bench", "tiny-bench", bench_rows, GoldWinJudge(), SAMPLING,
                              n_resamples=200)
    assert result.n == 6 and result.win_rate == 0.5 and result.ties == 6
    assert (result.ci_low, result.ci_high) == (0.5, 0.5)
    assert result.kl == pytest.approx(0.0, abs=1e-5)
    assert result.length_policy == result.length_reference > 0
    assert result.score_policy == result.score_reference


def test_sampling_is_seeded_and_kl_is_the_logprob_gap(cache, bench_rows):
    from editalign.models import load_model, load_tokenizer

    tok = load_tokenizer("tiny-bench")
    a, b = load_model("tiny-bench"), load_model("tiny-bench:1")
    prompts = [r["prompt"] for r in bench_rows]
    first = sample_responses(a, tok, prompts, SAMPLING)
    again = sample_responses(a, tok, prompts, SAMPLING)
    assert [s.response_ids for s in first] == [s.response_ids for s in again]
    other_seed = sample_responses(a, tok, prompts, SamplingConfig(max_new_tokens=10,
                                                                  batch_size=4, seed=4))
    assert [s.response_ids for s in other_seed] != [s.response_ids for s in first]
    # Σ log π over the response, checked against a one-sequence-at-a-time computation.
    import torch

    lp = sequence_logprobs(a, first, batch_size=3)
    s = first[0]
    ids = torch.tensor([s.prompt_ids + s.response_ids])
    with torch.no_grad():
        logits = a(input_ids=ids).logits[0].log_softmax(-1)
    n = len(s.prompt_ids)
    manual = sum(float(logits[n - 1 + j, t]) for j, t in enumerate(s.response_ids))
    assert lp[0] == pytest.approx(manual, abs=1e-4)
    result = evaluate_winrate("tiny-bench", "tiny-bench:1", bench_rows, GoldWinJudge(),
                              SAMPLING, n_resamples=200)
    lp_b = sequence_logprobs(b, first, batch_size=4)
    assert result.kl == pytest.approx(sum(x - y for x, y in zip(lp, lp_b, strict=True)) / 6,
                                      rel=1e-4)
    assert result.ci_low <= result.win_rate <= result.ci_high


def test_cli_writes_json_and_prints_a_table(cache, prompts_file, tmp_path, capsys):
    from editalign.cli import main

    out, samples = tmp_path / "result.json", tmp_path / "samples.jsonl"
    assert main(["eval", "winrate", "--policy", "tiny-bench", "--reference", "tiny-bench:1",
                 "--prompts", str(prompts_file), "--judge", "gold", "--max-new-tokens", "4",
                 "--limit", "3", "--bootstrap", "100", "--out", str(out),
                 "--samples-out", str(samples)]) == 0
    printed = capsys.readouterr().out
    assert "| win rate |" in printed and "tiny-bench:1" in printed
    result = json.loads(out.read_text())
    assert result["n"] == 3 and result["judge"] == "gold"
    assert {"win_rate", "ci_low", "ci_high", "kl", "length_policy", "length_reference",
            "sampling"} <= set(result)
    lines = [json.loads(x) for x in samples.read_text().splitlines()]
    assert len(lines) == 3 and {"policy", "reference", "outcome", "score_policy"} <= set(lines[0])
    assert win_rate([x["outcome"] for x in lines]) == result["win_rate"]


def test_gold_judge_needs_bench_rows():
    with pytest.raises(ValueError, match="no 'bench' object"):
        GoldWinJudge().compare([{"prompt": "hi"}], ["a"], ["b"])


# --------------------------------------------------------------------------- reward model judge


def test_reward_model_judge(cache, tmp_path, bench_rows):
    import torch

    from editalign.models import load_tokenizer
    from editalign.reward_model import RewardModelConfig, TokenRewardModel

    tok = load_tokenizer("tiny-bench")
    rm = TokenRewardModel.from_backbone("tiny-bench", RewardModelConfig(), tokenizer=tok)
    with torch.no_grad():
        rm.head.bias.fill_(0.1)
    rm.save_pretrained(tmp_path / "rm", tokenizer=tok)
    judge = make_judge(f"rm:{tmp_path / 'rm'}")
    assert isinstance(judge, RewardModelJudge)
    rows = bench_rows[:3]
    short, long = ["Yes."] * 3, ["Yes. Yes. Yes. Yes."] * 3
    result = judge.compare(rows, long, short)
    assert result.outcomes == [outcome(a, b) for a, b in
                               zip(result.policy_scores, result.reference_scores, strict=True)]
    # The score is the sum of the response's token rewards.
    from editalign.bench.task import encode_example

    ids, start = encode_example(tok, rows[0]["prompt"], "Yes.")
    with torch.no_grad():
        rewards = rm(input_ids=torch.tensor([ids])).rewards[0, start:]
    assert result.reference_scores[0] == pytest.approx(float(rewards.sum()), abs=1e-4)


# --------------------------------------------------------------------------- API judge


def _chat_transport(decide, seen):
    """A fake OpenAI-compatible endpoint; ``decide(a, b)`` returns the judge's answer."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = json.loads(request.content)
        text = body["messages"][-1]["content"]
        a = text.split("Response A:\n")[1].split("\n\nResponse B:")[0]
        b = text.split("Response B:\n")[1].split("\n\nWhich")[0]
        return httpx.Response(200, json={"choices": [{"message": {"content": decide(a, b)}}]})

    return httpx.MockTransport(handler)


ROWS = [{"prompt": "Tell me about Tessa."}] * 3


def test_api_judge_asks_both_orders(monkeypatch, caplog):
    monkeypatch.setenv("EA_TEST_KEY", "sk-secret-123")
    seen = []
    longer = _chat_transport(lambda a, b: "A" if len(a) > len(b) else "B", seen)
    judge = ApiJudge("http://judge/v1", "m", api_key_env="EA_TEST_KEY", transport=longer)
    with caplog.at_level(logging.DEBUG):
        result = judge.compare(ROWS, ["long answer"] * 3, ["short"] * 3)
    assert result.outcomes == [1.0, 1.0, 1.0]
    assert len(seen) == 6 and str(seen[0].url) == "http://judge/v1/chat/completions"
    assert seen[0].headers["authorization"] == "Bearer sk-secret-123"
    assert "sk-secret" not in caplog.text and "sk-secret" not in judge.name
    # A judge that always picks the first position cancels out to ties.
    first = ApiJudge("http://judge/v1", transport=_chat_transport(lambda a, b: "A", []))
    assert first.compare(ROWS, ["x"] * 3, ["y"] * 3).outcomes == [0.5] * 3
    # One order a tie, the other a win: 0.75.
    mixed = ApiJudge("http://judge/v1", transport=_chat_transport(
        lambda a, b: "tie" if a == "x" else "B", []))
    assert mixed.compare(ROWS[:1], ["x"], ["y"]).outcomes == [0.75]


def test_api_judge_retries_and_fails_clearly():
    calls = []

    def flaky(request):
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(503)
        return httpx.Response(200, json={"choices": [{"message": {"content": "Tie."}}]})

    judge = ApiJudge("http://judge/v1", transport=httpx.MockTransport(flaky))
    assert judge.ask("p", "a", "b") == "Tie."
    denied = ApiJudge("http://judge/v1", transport=httpx.MockTransport(
        lambda r: httpx.Response(401)))
    with pytest.raises(RuntimeError, match="HTTP 401"):
        denied.ask("p", "a", "b")


def test_parse_preference():
    assert parse_preference("A") == "A"
    assert parse_preference(" b\n") == "B"
    assert parse_preference("Tie.") == "tie"
    assert parse_preference("Response B is better") == "B"
    assert parse_preference("neither") is None
    with pytest.raises(ValueError, match="unknown judge"):
        make_judge("llm")


def test_samples_per_prompt_repeats_prompts_and_bootstraps_per_prompt(cache, bench_rows,
                                                                      tmp_path):
    k = 3
    sampling = SamplingConfig(max_new_tokens=10, batch_size=4, seed=3, samples_per_prompt=k)
    samples = tmp_path / "samples.jsonl"
    result = evaluate_winrate("tiny-bench", "tiny-bench:1", bench_rows, GoldWinJudge(),
                              sampling, n_resamples=300, samples_out=samples)
    lines = [json.loads(x) for x in samples.read_text().splitlines()]
    assert result.n == k * len(bench_rows) == len(lines)
    assert [x["sample"] for x in lines[:k]] == list(range(k))
    assert [x["id"] for x in lines[:k]] == [bench_rows[0]["id"]] * k
    outcomes = [x["outcome"] for x in lines]
    assert result.win_rate == pytest.approx(win_rate(outcomes))
    # The interval resamples prompts: it is the bootstrap of the per-prompt means.
    per_prompt = [sum(outcomes[i:i + k]) / k for i in range(0, len(outcomes), k)]
    assert (result.ci_low, result.ci_high) == bootstrap_interval(per_prompt, n_resamples=300,
                                                                 seed=3)
    with pytest.raises(ValueError, match="samples_per_prompt"):
        SamplingConfig(samples_per_prompt=0)


def test_cli_refuses_a_nan_reward_model_judge_naming_the_row(cache, prompts_file, tmp_path,
                                                              capsys):
    import torch

    from editalign.cli import main
    from editalign.models import load_tokenizer
    from editalign.reward_model import RewardModelConfig, TokenRewardModel

    tok = load_tokenizer("tiny-bench")
    rm = TokenRewardModel.from_backbone("tiny-bench", RewardModelConfig(), tokenizer=tok)
    with torch.no_grad():
        rm.head.bias.fill_(float("nan"))
    rm.save_pretrained(tmp_path / "rm", tokenizer=tok)
    out = tmp_path / "result.json"
    code = main(["eval", "winrate", "--policy", "tiny-bench", "--reference", "tiny-bench:1",
                 "--prompts", str(prompts_file), "--judge", f"rm:{tmp_path / 'rm'}",
                 "--max-new-tokens", "4", "--limit", "2", "--bootstrap", "50",
                 "--out", str(out)])
    assert code == 2  # before: 0.000 [0.000, 0.000] and exit 0
    err = capsys.readouterr().err
    assert "NaN or inf rewards for the policy response to prompts row 0" in err
    assert not out.exists()


def test_cli_names_a_corrupt_policy_weights_file(cache, prompts_file, tmp_path, capsys):
    from editalign.cli import main
    from editalign.models import load_model, load_tokenizer

    policy = tmp_path / "policy"
    load_model("tiny-bench").save_pretrained(policy)
    load_tokenizer("tiny-bench").save_pretrained(policy)
    weights = policy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    code = main(["eval", "winrate", "--policy", str(policy), "--reference", "tiny-bench",
                 "--prompts", str(prompts_file), "--max-new-tokens", "4", "--limit", "2"])
    assert code == 2
    assert f"{weights}: unreadable safetensors file" in capsys.readouterr().err
    (policy / "config.json").write_text("{not json")
    code = main(["eval", "winrate", "--policy", str(policy), "--reference", "tiny-bench",
                 "--prompts", str(prompts_file), "--max-new-tokens", "4", "--limit", "2"])
    assert code == 2
    assert f"{policy / 'config.json'}: not valid JSON" in capsys.readouterr().err
