"""The generated benchmark task: world, noisy data, gold judge, reviser, tokenizer, initial policy."""

import json
import math
import random
import re
import shutil
from pathlib import Path

import pytest
from rapidfuzz.distance import Levenshtein

from editalign.bench import BenchConfig, BenchTask, GoldJudge, revise
from editalign.bench.judge import asked_in, unwanted_spans, value_mentions
from editalign.bench.responses import render_response
from editalign.bench.runner import DEFAULT_METHODS
from editalign.bench.task import error_rates, make_edit_pairs
from editalign.bench.tuned import TUNED, TunedSettings
from editalign.bench.world import FILLERS, HEDGES
from editalign.data.align import word_spans
from editalign.data.jsonl import read_jsonl

TESSA = {"entity": "p000", "kind": "person", "name": "Tessa Dorsey", "short": "Tessa",
         "facts": {"job": "farmer", "city": "Westerly", "age": "64", "colour": "purple"},
         "asked": ["job", "city", "age", "colour"]}
WHISKERS = {"entity": "a000", "kind": "animal", "name": "Whiskers", "short": "Whiskers",
            "facts": {"species": "cat", "city": "Oakhurst", "age": "7", "colour": "grey"},
            "asked": ["species"]}
PERFECT = ("Tessa Dorsey works as a farmer. Tessa lives in Westerly. Tessa is 64 years old. "
           "Tessa Dorsey's favourite colour is purple.")


@pytest.fixture(scope="module")
def task():
    return BenchTask.build(BenchConfig(seed=3))


@pytest.fixture(scope="module")
def noisy(task):
    return task.noisy_sft_rows()


def _words(text):
    return [text[s:e].strip() for s, e in word_spans(text)]


# --------------------------------------------------------------------------- world and task


def test_task_is_deterministic_from_seed(tmp_path):
    a, b = BenchTask.build(BenchConfig(seed=7)), BenchTask.build(BenchConfig(seed=7))
    assert a.world.to_dict() == b.world.to_dict()
    assert a.prompts == b.prompts
    assert a.noisy_sft_rows() == b.noisy_sft_rows()
    other = BenchTask.build(BenchConfig(seed=8))
    assert other.world.to_dict() != a.world.to_dict()
    a.write(tmp_path / "one")
    b.write(tmp_path / "two")
    for name in ("config.json", "world.json", "prompts.train.jsonl", "prompts.test.jsonl",
                 "sft_noisy.jsonl"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert BenchTask.load(tmp_path / "one").prompts == a.prompts


def test_world_sizes_and_splits(task):
    config = task.config
    assert len(task.world.entities) == config.num_people + config.num_animals
    assert len({e.name for e in task.world.entities}) == len(task.world.entities)
    per_entity = config.about_prompts_per_entity + 4 * config.questions_per_attribute
    assert len(task.prompts) == per_entity * len(task.world.entities)
    n_test = len(task.split("test"))
    assert n_test == round(config.test_fraction * len(task.prompts))
    assert {p.id for p in task.split("test")}.isdisjoint(p.id for p in task.split("train"))
    for entity in task.world.entities:  # true values come from a pool of the configured size
        assert set(entity.facts) == ({"job", "city", "age", "colour"} if entity.kind == "person"
                                     else {"species", "city", "age", "colour"})
    jobs = {e.facts["job"] for e in task.world.entities if e.kind == "person"}
    assert len(jobs) <= config.values_per_attribute


def test_prompt_rows_carry_what_the_judge_needs(task):
    row = task.rows("test")[0]
    bench = row["bench"]
    entity = task.world.by_id[bench["entity"]]
    [message] = row["prompt"]  # one user chat message
    assert message["role"] == "user"
    assert bench["facts"] == entity.facts and bench["name"] == entity.name in message["content"]
    assert tuple(bench["asked"]) == asked_in(message["content"], entity.name, entity.kind)
    json.dumps(row)  # serialisable


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="wrong_value_rate"):
        BenchConfig(wrong_value_rate=1.5)
    with pytest.raises(ValueError, match="num_animals"):
        BenchConfig(num_animals=1000)


# --------------------------------------------------------------------------- noisy data


def test_noisy_data_has_the_configured_error_rates():
    config = BenchConfig(seed=1, wrong_value_rate=0.3, hedge_rate=0.15, filler_rate=0.4)
    rows = BenchTask.build(config).noisy_sft_rows()
    sentences = sum(len(r["stated"]) for r in rows)
    measured = error_rates(rows)
    for kind, rate, n in (("wrong_value", 0.3, sentences), ("hedge", 0.15, sentences),
                          ("filler", 0.4, len(rows))):
        sigma = math.sqrt(rate * (1 - rate) / n)
        assert abs(measured[kind] - rate) < 4 * sigma, (kind, measured[kind], rate)
    # ... and the judge finds exactly the planted errors in every response.
    judge = GoldJudge()
    for row in rows:
        verdict = judge.verdict(row["response"], row["bench"])
        planted = [e["kind"] for e in row["errors"]]
        assert len(verdict.wrong) == planted.count("wrong_value")
        assert sorted(verdict.unwanted) == sorted(k for k in planted if k != "wrong_value")
        if not planted:
            assert verdict.score == 1.0


def test_zero_and_full_error_rates():
    clean = BenchTask.build(BenchConfig(wrong_value_rate=0, hedge_rate=0, filler_rate=0))
    assert all(r["response"] == r["clean"] and not r["errors"] for r in clean.noisy_sft_rows())
    wrong = BenchTask.build(BenchConfig(wrong_value_rate=1, hedge_rate=0, filler_rate=0))
    for row in wrong.noisy_sft_rows():
        assert len(row["errors"]) == len(row["stated"])
        assert GoldJudge().verdict(row["response"], row["bench"]).correct == []


def test_error_spans_point_at_the_errors(noisy):
    for row in noisy[:300]:
        for error in row["errors"]:
            assert row["response"][error["start"]:error["end"]] == error["text"]
            if error["kind"] == "hedge":
                assert error["text"] in HEDGES
            if error["kind"] == "filler":
                assert error["text"].strip() in FILLERS


# --------------------------------------------------------------------------- reviser


def test_reviser_restores_the_clean_response(noisy):
    for row in noisy:
        revision = revise(row["response"], row["bench"])
        assert revision.text == row["clean"]
        assert sorted(e.kind for e in revision.edits) == sorted(e["kind"] for e in row["errors"])
        assert not revise(row["clean"], row["bench"]).changed


def test_reviser_edit_distance_equals_the_errors_size(noisy):
    """Word-level edit distance == words of deleted phrases + one per wrong value."""
    checked = 0
    for row in noisy:
        revised = revise(row["response"], row["bench"]).text
        expected = sum(1 if e["kind"] == "wrong_value" else len(_words(e["text"].strip()))
                       for e in row["errors"])
        assert Levenshtein.distance(_words(row["response"]), _words(revised)) == expected
        checked += bool(row["errors"])
    assert checked > 100


def test_reviser_token_edits_stay_inside_the_errors(noisy):
    """With tiny-bench's tokenizer, the tokens labelled changed lie on the planted errors,
    and every error has changed tokens (what FIGA and the token RM learn from)."""
    from editalign.bench.tokenizer import build_bench_tokenizer
    from editalign.data.align import Label
    from editalign.data.labeling import label_pair

    tok = build_bench_tokenizer()
    pairs = make_edit_pairs([r for r in noisy[:200]], [r["response"] for r in noisy[:200]])
    for row, pair in zip(noisy[:200], pairs, strict=True):
        labeled = label_pair(pair, tok)
        side = labeled.original
        changed = [offsets for offsets, label in zip(side.offsets[:-1], side.response_labels[:-1],
                                                     strict=True)
                   if label in (Label.DELETED, Label.SUBSTITUTED)]
        spans = [(e["start"], e["end"]) for e in row["errors"]]
        for s, e in changed:  # a changed token overlaps an error (or abuts a leading filler)
            assert any(s < b + 1 and a < e for a, b in spans), (row["response"], (s, e))
        for a, b in spans:
            assert any(s < b and a < e for s, e in changed)
        n_error_tokens = sum(len(tok(e["text"], add_special_tokens=False)["input_ids"])
                             for e in row["errors"])
        assert labeled.edit_distance <= n_error_tokens
        assert (labeled.edit_distance == 0) == (not row["errors"])


def test_reviser_token_distance_is_the_deleted_tokens(noisy):
    """With the byte-level `tiny` tokenizer (one token per byte), a revision that only
    deletes (hedges, fillers) is exactly the deleted phrases' tokens away."""
    from editalign.data.labeling import label_pair
    from editalign.models import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    rows = [r for r in noisy if r["errors"]
            and all(e["kind"] != "wrong_value" for e in r["errors"])][:100]
    assert len(rows) > 20
    pairs = make_edit_pairs(rows, [r["response"] for r in rows])
    for row, pair in zip(rows, pairs, strict=True):
        n_error_tokens = sum(len(e["text"].encode()) for e in row["errors"])
        assert label_pair(pair, tok).edit_distance == n_error_tokens


def test_reviser_hand_cases():
    cases = [
        ("Tessa Dorsey works as a pilot, I think. I hope this helps!",
         "Tessa Dorsey works as a farmer."),
        ("Great question! Tessa lives in Westerly.", "Tessa lives in Westerly."),
        ("Jonas Holm is 30 years old. Tessa is 30 years old.",
         "Tessa Dorsey is 64 years old. Tessa is 64 years old."),
        ("Red is the colour Tessa loves most, probably.", "Purple is the colour Tessa loves most."),
        ("Tessa is a farmer. Tessa is a farmer. Tessa is a farmer.", "Tessa is a farmer."),
        ("Tessa is a farmer", "Tessa is a farmer"),  # truncated output: nothing to fix
        ("Tessa is 30. Tessa is 64.", "Tessa is 64."),  # the fix makes a repeat: 2nd pass
        ("", ""),
    ]
    for original, expected in cases:
        assert revise(original, TESSA).text == expected, original
    revision = revise("Whiskers is a dog. Pepper is a cat.", WHISKERS)
    assert revision.text == "Whiskers is a cat."  # fixed, then the repeat it made is deleted
    assert [e.kind for e in revision.edits] == ["wrong_value", "wrong_name", "repeat"]
    # A species for a person cannot be fixed by a minimal edit: left alone.
    assert revise("Tessa is a cat.", TESSA).text == "Tessa is a cat."
    # One kind of error at a time.
    text = "Tessa Dorsey works as a pilot, I think. I hope this helps!"
    assert revise(text, TESSA, kinds={"hedge", "filler"}).text == \
        "Tessa Dorsey works as a pilot."
    assert revise(text, TESSA, kinds={"wrong_value"}).text == \
        "Tessa Dorsey works as a farmer, I think. I hope this helps!"
    assert revise(text, TESSA, kinds=()).text == text
    with pytest.raises(ValueError, match="unknown edit kinds"):
        revise(text, TESSA, kinds={"typo"})


# --------------------------------------------------------------------------- gold judge


def test_gold_judge_hand_cases():
    judge = GoldJudge()
    assert judge.score(PERFECT, TESSA) == 1.0
    assert judge.score("", TESSA) == 0.0
    # 3 right, 1 wrong: (3 - 1) / 4
    assert judge.score(PERFECT.replace("Westerly", "Oakhurst"), TESSA) == pytest.approx(0.5)
    # a filler and a hedge cost 0.2 each
    hedged = PERFECT.replace("farmer.", "farmer, I believe.") + " I hope this helps!"
    verdict = judge.verdict(hedged, TESSA)
    assert verdict.unwanted == ["hedge", "filler"] and verdict.score == pytest.approx(0.6)
    # half the attributes, nothing wrong
    assert judge.score("Tessa works as a farmer. Tessa is 64.", TESSA) == pytest.approx(0.5)
    # a single question: right 1, wrong -1; a wrong name is an error too
    job = {**TESSA, "asked": ["job"]}
    assert judge.score("Tessa Dorsey is a farmer by trade.", job) == 1.0
    assert judge.score("Tessa Dorsey is a baker by trade.", job) == -1.0
    assert judge.score("Jonas Dorsey is a farmer by trade.", job) == 0.0
    # repeated sentences are unwanted
    verdict = judge.verdict("Tessa is a farmer. tessa is a farmer!", job)
    assert verdict.unwanted == ["repeat"] and verdict.score == pytest.approx(0.8)
    # comparisons
    assert judge.compare(PERFECT, hedged, TESSA) == 1.0
    assert judge.compare(hedged, PERFECT, TESSA) == 0.0
    assert judge.compare(PERFECT, PERFECT.replace("Tessa is", "Tessa Dorsey is"), TESSA) == 0.5


def test_gold_judge_reads_free_output_robustly():
    judge = GoldJudge()
    for text in ["farmerfarmer Westerlyy", "🙂 ... !!! ?", "\n\n", "a" * 500,
                 "Tessa, farmer; 64 — WESTERLY & PURPLE"]:
        verdict = judge.verdict(text, TESSA)
        assert math.isfinite(verdict.score)
    assert judge.verdict("Tessa, farmer; 64 — WESTERLY & PURPLE", TESSA).score == 1.0
    assert judge.verdict("farmerfarmer Westerlyy", TESSA).correct == []
    mentions = value_mentions("Tessa is 64 and 65, a farmer from Oakhurst.")
    assert [(m.attribute, m.value) for m in mentions] == [
        ("name", "Tessa"), ("age", "64"), ("age", "65"), ("job", "farmer"), ("city", "Oakhurst")]
    assert [s.kind for s in unwanted_spans("I THINK so. Probably.")] == ["hedge", "hedge"]


def test_reward_fn_reads_the_entity_from_a_chat_prompt(task):
    from editalign.bench.tokenizer import build_bench_tokenizer

    tok = build_bench_tokenizer()
    judge = GoldJudge()
    fn = judge.reward_fn(task.world)
    rows = task.rows("train")[:20]
    prompts = [tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False)
               for r in rows]
    rng = random.Random(0)
    responses = [render_response(task.world.by_id[r["bench"]["entity"]], r["bench"]["asked"],
                                 rng, task.config).text for r in rows]
    assert fn(prompts, responses) == [judge.score(x, r["bench"]) for x, r in
                                      zip(responses, rows, strict=True)]
    assert fn(["Tell me about nobody."], ["x"]) == [0.0]


# --------------------------------------------------------------------------- tokenizer, model


def test_bench_tokenizer_is_small_deterministic_and_lossless():
    from editalign.bench.tokenizer import BENCH_VOCAB_SIZE, build_bench_tokenizer

    a, b = build_bench_tokenizer(), build_bench_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    assert len(a) <= BENCH_VOCAB_SIZE + 4
    for text in (PERFECT, "héllo wörld 🙂 zebra", " I hope this helps!"):
        assert a.decode(a(text, add_special_tokens=False)["input_ids"]) == text
    ids = a(PERFECT, add_special_tokens=False)["input_ids"]
    assert len(ids) < len(PERFECT) / 3  # words are tokens, not bytes
    for word in (" farmer", " Westerly", " purple", " 64", " Tessa"):
        assert len(a(word, add_special_tokens=False)["input_ids"]) == 1, word


def test_tiny_bench_model_and_initial_policy(tmp_path, monkeypatch, task, noisy):
    import torch

    from editalign.bench import PolicySFTConfig, train_initial_policy
    from editalign.models import load_model, load_tokenizer, registered_models

    monkeypatch.setenv("EDITALIGN_CACHE", str(tmp_path / "cache"))
    assert "tiny-bench" in registered_models()
    tok = load_tokenizer("tiny-bench")
    assert tok.chat_template and tok.eos_token == "<|im_end|>" and tok.pad_token != tok.eos_token
    model = load_model("tiny-bench")
    assert model.config.vocab_size == len(tok)
    seeded = load_model("tiny-bench:1")
    assert not torch.equal(model.model.embed_tokens.weight, seeded.model.embed_tokens.weight)
    config = PolicySFTConfig(steps=6, batch_size=4, warmup_steps=2, log_every=3)
    log_a = train_initial_policy(noisy[:32], "tiny-bench", tmp_path / "a", config=config)
    log_b = train_initial_policy(noisy[:32], "tiny-bench", tmp_path / "b", config=config)
    assert [e["loss"] for e in log_a] == [e["loss"] for e in log_b]
    assert log_a[-1]["loss"] < log_a[0]["loss"]
    a, b = load_model(str(tmp_path / "a")), load_model(str(tmp_path / "b"))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                   b.state_dict().values(), strict=True))
    assert json.loads((tmp_path / "a" / "sft_log.json").read_text())["log"] == log_a


def test_written_task_files(tmp_path, task):
    task.write(tmp_path)
    rows = read_jsonl(tmp_path / "sft_noisy.jsonl")
    assert rows == task.noisy_sft_rows()
    test_rows = read_jsonl(tmp_path / "prompts.test.jsonl")
    assert [r["id"] for r in test_rows] == [p.id for p in task.split("test")]
    assert all(re.search(r["bench"]["name"], r["prompt"][0]["content"]) for r in test_rows)


def test_bench_init_command(tmp_path, monkeypatch, capsys):
    from editalign.cli import main
    from editalign.data.pairs import load_pairs

    monkeypatch.setenv("EDITALIGN_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "bench.yaml"
    config.write_text("num_people: 4\nnum_animals: 2\nsft_steps: 3\nsft_batch_size: 4\n")
    out = tmp_path / "bench"
    assert main(["bench", "init", "--config", str(config), "--out", str(out),
                 "--samples-per-prompt", "1", "--max-new-tokens", "6",
                 "--sft-warmup-steps", "1"]) == 0
    assert "initial policy: 3 steps" in capsys.readouterr().out
    for name in ("config.json", "world.json", "prompts.train.jsonl", "prompts.test.jsonl",
                 "sft_noisy.jsonl", "pairs.train.jsonl", "summary.json", "policy/config.json"):
        assert (out / name).is_file(), name
    pairs, report = load_pairs(out / "pairs.train.jsonl")
    n_train = len(read_jsonl(out / "prompts.train.jsonl"))
    assert report.rows_read == n_train and all(p.meta["source"] == "bench" for p in pairs)
    for pair in pairs:  # every revision is what the reviser makes of the sample
        assert revise(pair.original, pair.meta["bench"]).text == pair.revised
        assert pair.meta["score_revised"] >= pair.meta["score_original"] - 1e-9
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["num_people"] == 4 and summary["sft"]["steps"] == 3


def test_runner_rejects_unknown_methods(tmp_path):
    from editalign.bench.runner import RunConfig, run_benchmark

    with pytest.raises(ValueError, match="unknown method 'ppo'"):
        run_benchmark(tmp_path, tmp_path / "out", RunConfig(methods=["sft", "ppo"]))


def test_results_table():
    from editalign.bench.results import results_table

    row = {"method": "figa", "seed": 0, "win_rate": 0.625, "ci_low": 0.5, "ci_high": 0.75,
           "score_policy": 0.8, "score_reference": 0.5, "kl": 1.234, "length_policy": 20.0,
           "train_seconds": 12.3}
    assert results_table([row]).splitlines()[-1] == (
        "| figa | 0 | 0.625 | [0.500, 0.750] | 0.800 | 0.500 | 1.23 | 20.0 | 12 |")
    other = {**row, "seed": 1, "win_rate": 0.375, "kl": None, "score_policy": 0.6}
    lines = results_table([row, other]).splitlines()
    assert lines[-1] == "| figa | 2 | 0.500 ± 0.177 | 0.700 | 0.500 | 1.23 | 20.0 |"


@pytest.mark.slow
def test_bench_init_and_run_end_to_end(tmp_path, monkeypatch):
    """Every method trains on the bench pairs and gets a win rate (a few steps each)."""
    from editalign.cli import main

    monkeypatch.setenv("EDITALIGN_CACHE", str(tmp_path / "cache"))
    bench, run = tmp_path / "bench", tmp_path / "run"
    assert main(["bench", "init", "--out", str(bench), "--num-people", "6", "--num-animals",
                 "2", "--sft-steps", "60", "--sft-batch-size", "8",
                 "--max-new-tokens", "32"]) == 0
    assert main(["bench", "run", "--bench", str(bench), "--out", str(run), "--max-steps", "2",
                 "--run-batch-size", "4", "--ppo-iterations", "1",
                 "--ppo-rollout-batch-size", "4", "--eval-limit", "4",
                 "--eval-max-new-tokens", "12"]) == 0
    results = json.loads((run / "results.json").read_text())["results"]
    assert [r["method"] for r in results] == list(DEFAULT_METHODS)
    # 4 prompts (--eval-limit) x the run's samples per prompt, every one judged
    per_prompt = json.loads((run / "results.json").read_text())["config"][
        "eval_samples_per_prompt"]
    assert all(0 <= r["win_rate"] <= 1 and r["n"] == 4 * per_prompt for r in results)
    table = (run / "results.md").read_text().split("\n\n")[0].splitlines()  # the first table
    assert [line.split(" | ")[0].removeprefix("| ") for line in table[2:]] == \
        [r["method"] for r in results]  # one row per method of the one seed
    assert [m["method"] for m in json.loads((run / "results.json").read_text())["summary"]] == \
        list(DEFAULT_METHODS)


def test_bench_run_smoke_writes_the_report_and_resumes(tmp_path, monkeypatch, capsys):
    """CI smoke test of the whole pipeline (`bench run --smoke`: init, the default methods, eval,
    report), then resume: only the stages whose outputs were deleted run again."""
    from editalign.cli import main

    monkeypatch.setenv("EDITALIGN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["bench", "run", "--smoke", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert f"report: {out / 'report.html'}" in printed
    # Not a terminal: one line per stage, the stage's own output in its directory.
    for noise in ("Loading weights", "{'loss'", "it/s]", "editalign train sft --model"):
        assert noise not in captured.out + captured.err, noise
    for stage in ("sft", "dpo", "figa", "rm", "ppo-seq", "token-rm", "ppo-token"):
        line = [x for x in printed.splitlines() if x.startswith("train ")
                and f"-> {out / stage}:" in x]
        assert len(line) == 1 and line[0].endswith(f"(log: {out / stage / 'stage.log'})"), stage
    assert "{'loss'" in (out / "sft" / "stage.log").read_text()
    assert "Loading weights" not in (out / "sft" / "stage.log").read_text()
    assert sum(x.startswith("eval ") and "win rate" in x for x in printed.splitlines()) == \
        len(DEFAULT_METHODS)
    results = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in results["results"]] == list(DEFAULT_METHODS)
    assert results["config"]["max_steps"] == 2 and results["config"]["eval_limit"] == 4
    table = (out / "results.md").read_text().split("\n\n")[0]
    assert table.count("\n") == len(DEFAULT_METHODS) + 1  # header, rule, a row per method
    # Held-out edit pairs from init evaluate both reward models; every method's samples get
    # the gold judge's error counts.
    assert (out / "bench" / "pairs.test.jsonl").is_file()
    by_method = {r["method"]: r for r in results["results"]}
    for arm in ("ppo-seq", "ppo-token"):
        assert 0 <= by_method[arm]["reward_model_eval"]["token_auroc"] <= 1
    assert "reward_model_eval" not in by_method["sft"]
    assert set(by_method["figa"]["errors"]) == {"policy", "reference"}
    assert by_method["figa"]["errors"]["policy"]["n"] == 4
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 2  # win rate + curves, embedded
    for section in ("Results", "Win rate", "Training curves", "Edit pairs",
                    "Token reward model"):
        assert f"<h2>{section}" in report, section
    assert (out / "winrate.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "curves.png").is_file()

    def stamps():
        return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns
                for p in [*out.glob("*/train_done.json"), *out.glob("*/winrate.json"),
                          out / "bench" / "summary.json", out / "rm" / "reward_config.json",
                          out / "token-rm" / "reward_config.json"]}

    before = stamps()
    (out / "figa" / "winrate.json").unlink()  # figa's evaluation reruns, not its training
    shutil.rmtree(out / "dpo")  # dpo trains and evaluates again
    assert main(["bench", "run", "--smoke", "--out", str(out)]) == 0
    assert "bench init: done earlier" in capsys.readouterr().out
    after = stamps()
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == {"figa/winrate.json", "dpo/train_done.json", "dpo/winrate.json"}
    again = json.loads((out / "results.json").read_text())["results"]
    assert [r["method"] for r in again] == list(DEFAULT_METHODS)
    first = {r["method"]: r for r in results["results"]}
    again = {r["method"]: r for r in again}
    for method in set(DEFAULT_METHODS) - {"dpo", "figa"}:
        assert again[method] == first[method], method  # read back, not rerun
    assert again["figa"]["win_rate"] == first["figa"]["win_rate"]  # same policy and seed


def test_presets_leave_explicit_options_alone():
    import argparse

    from editalign.commands.bench import PRESETS, apply_preset
    from editalign.commands.bench import add_arguments as add_bench_args

    parser = argparse.ArgumentParser()
    add_bench_args(parser)
    args = apply_preset(parser.parse_args(["run", "--smoke", "--max-steps", "7"]))
    assert args.run_max_steps == 7
    assert args.run_ppo_iterations == PRESETS["smoke"]["run_ppo_iterations"]
    assert args.sft_steps == PRESETS["smoke"]["sft_steps"]
    quick = apply_preset(parser.parse_args(["run", "--quick"]))
    assert quick.max_new_tokens == PRESETS["quick"]["max_new_tokens"] and not quick.num_seeds
    assert apply_preset(parser.parse_args(["run", "--full"])).num_seeds == 10
    full = apply_preset(parser.parse_args(["run", "--full", "--seeds", "3,4"]))
    assert full.num_seeds is None and full.seeds == "3,4"  # explicit seeds win
    assert apply_preset(parser.parse_args(["run", "--full", "--num-seeds", "3"])).num_seeds == 3
    plain = apply_preset(parser.parse_args(["run"]))
    assert plain.run_max_steps == 100 and plain.preset is None


def test_method_args_parse_into_per_stage_flags():
    from editalign.commands.bench import parse_method_args

    assert parse_method_args(["figa=--gamma 0.5 --beta 1", "ppo=--kl_coef 0.1",
                              "figa=--tau 0.7"]) == {
        "figa": ["--gamma", "0.5", "--beta", "1", "--tau", "0.7"],
        "ppo": ["--kl_coef", "0.1"]}
    # The YAML form (--config): a mapping of stage to a flag string or list.
    assert parse_method_args({"token-rm": "--equal_weight 1", "dpo": ["--beta", 0.2]}) == {
        "token-rm": ["--equal_weight", "1"], "dpo": ["--beta", "0.2"]}
    # the online arms take their own flags (after their base method's)
    assert parse_method_args(["figa-online=--learning_rate 1e-3"]) == {
        "figa-online": ["--learning_rate", "1e-3"]}
    # grpo: every GRPO arm's trainer gets them, last
    from editalign.bench.runner import RunConfig, _rl_flags

    grpo = parse_method_args(["grpo=--token_coef 3"])
    assert _rl_flags(RunConfig(extra=grpo), "grpo")[-2:] == ["--token_coef", "3"]
    for bad in (["figa"], ["nope=--x 1"]):
        with pytest.raises(ValueError, match="STAGE=FLAGS"):
            parse_method_args(bad)


def test_results_table_error_columns_and_reward_model_table():
    from editalign.bench.results import results_table, summarize

    def errors(wrong, unwanted):
        return {"policy": {"wrong_per_response": wrong, "unwanted_per_response": unwanted},
                "reference": {"wrong_per_response": 1.0, "unwanted_per_response": 0.5}}

    base = {"method": "ppo-token", "ci_low": 0.5, "ci_high": 0.75, "score_policy": 0.8,
            "score_reference": 0.5, "kl": 1.0, "length_policy": 20.0, "train_seconds": 1.0}
    rows = [{**base, "seed": 0, "win_rate": 0.6, "errors": errors(0.4, 0.1),
             "reward_model_eval": {"pairwise_accuracy_sum": 0.75, "pairwise_accuracy_last": 0.5,
                                   "token_auroc": 0.9}},
            {**base, "seed": 1, "win_rate": 0.7, "errors": errors(0.6, 0.3)}]
    summary = summarize(rows)[0]
    assert summary["wrong_per_response_policy"] == pytest.approx(0.5)
    assert summary["unwanted_per_response_policy"] == pytest.approx(0.2)
    lines = results_table(rows).splitlines()
    mean_row = next(x for x in lines if x.startswith("| ppo-token | 2 |"))
    assert mean_row.endswith("| 0.50 (1.00) | 0.20 (0.50) |")
    # The token RM's accuracy is read as the PPO arm reads it: summed over tokens.
    assert lines[-1] == "| ppo-token | 0 | 0.750 | 0.900 |"


def test_each_method_gets_its_tuned_settings_and_explicit_flags_win(tmp_path, monkeypatch):
    from editalign.bench import runner

    calls: list[tuple[str, list[str]]] = []

    def fake_train(trainer, argv):
        calls.append((trainer, argv))
        out = Path(argv[argv.index("--output_dir") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "reward_config.json").write_text("{}")
        return 0.0

    monkeypatch.setattr(runner, "_train", fake_train)
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "prompts.train.jsonl").write_text("")

    def flags(config, method):
        calls.clear()
        runner.train_method(method, tmp_path / "bench", tmp_path / "pairs.jsonl",
                            tmp_path / f"out{len(list(tmp_path.iterdir()))}", config)
        return calls

    def value(argv, flag):  # the last occurrence wins in argparse
        return argv[len(argv) - 1 - argv[::-1].index(flag) + 1]

    tuned = runner.RunConfig()
    [(trainer, argv)] = flags(tuned, "figa")
    assert trainer == "figa"
    assert float(value(argv, "--learning_rate")) == TUNED["facts"].learning_rates["figa"]
    assert value(argv, "--gamma") == "1" and value(argv, "--beta") == "0.25"
    [(trainer, argv)] = flags(tuned, "dpo-sft")
    assert trainer == "dpo" and argv[argv.index("--loss_type") + 1:][:2] == ["sigmoid", "sft"]
    (rm, rm_argv), (ppo, ppo_argv) = flags(tuned, "ppo-token")
    assert (rm, ppo) == ("token-rm", "ppo") and value(rm_argv, "--equal_weight") == "1"
    assert value(ppo_argv, "--reward") == "token"
    # An explicit learning rate and --method-args override; --untuned drops the tuned flags.
    mine = runner.RunConfig(learning_rate=2e-5, extra={"figa": ["--gamma", "0"]})
    [(_, argv)] = flags(mine, "figa")
    assert value(argv, "--learning_rate") == "2e-05" and value(argv, "--gamma") == "0"
    [(_, argv)] = flags(runner.RunConfig(tuned=False), "figa")
    assert "--gamma" not in argv


def test_tuned_settings_follow_the_bench_directorys_task(tmp_path, monkeypatch):
    from editalign.bench import runner

    mine = TunedSettings(learning_rates={"figa": 7e-4}, args={"figa": ["--beta", "0.1"]},
                         ppo_learning_rate=9e-5)
    monkeypatch.setitem(TUNED, "grounded", mine)
    config = runner.RunConfig(task="grounded")
    assert config.method_learning_rate("figa") == 7e-4
    assert config.stage_args("figa") == ["--beta", "0.1"]
    assert config.ppo_lr() == 9e-5 and runner.RunConfig().ppo_lr() == \
        TUNED["facts"].ppo_learning_rate
    # Given values win over every task's table.
    assert runner.RunConfig(task="grounded", ppo_learning_rate=1e-6).ppo_lr() == 1e-6
    assert runner.RunConfig(task="grounded", learning_rate=2e-5).method_learning_rate(
        "figa") == 2e-5
    with pytest.raises(ValueError, match="no tuned settings for task 'other'"):
        runner.RunConfig(task="other").ppo_lr()
    # The task comes from `bench init`'s config.json; older directories are the first task.
    assert runner.bench_task(tmp_path) == "facts"
    (tmp_path / "config.json").write_text(json.dumps({"task": "grounded"}))
    assert runner.bench_task(tmp_path) == "grounded"


def test_paired_comparison_by_hand(tmp_path):
    from editalign.bench.results import comparisons, comparisons_table, paired_comparison
    from editalign.bench.runner import RunConfig
    from editalign.eval.winrate import bootstrap_interval, seeds_and_prompts_interval

    # Two seeds, two prompts, two samples each: outcomes of A and B against one reference.
    outcomes = {0: {"figa": [1, 0.5, 0, 1], "sft": [0, 0.5, 0, 1]},
                1: {"figa": [1, 1, 1, 0], "sft": [1, 1, 0.5, 0]}}
    for seed, by_method in outcomes.items():
        for method, values in by_method.items():
            d = tmp_path / f"seed{seed}" / method
            d.mkdir(parents=True)
            rows = [{"id": f"q{i // 2}", "sample": i % 2, "outcome": o}
                    for i, o in enumerate(values)]
            (d / "eval_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = paired_comparison(tmp_path, [0, 1], "figa", "sft", n_resamples=500)
    # per seed: (1 + 0 + 0 + 0) / 4 and (0 + 0 + 0.5 + 0) / 4
    assert c["per_seed"] == [0.25, 0.125] and c["difference"] == pytest.approx(0.1875)
    assert c["seeds_ahead"] == 2 and c["seeds"] == 2
    # per prompt over seeds and samples: q0 (1 + 0 + 0 + 0) / 4, q1 (0 + 0 + 0.5 + 0) / 4
    assert (c["ci_low"], c["ci_high"]) == bootstrap_interval([0.25, 0.125], n_resamples=500,
                                                             seed=0)
    # over seeds and prompts: the seeds × prompts table of per-prompt mean differences
    # (seed 0: q0 0.5, q1 0; seed 1: q0 0, q1 0.25)
    assert (c["seeds_ci_low"], c["seeds_ci_high"]) == seeds_and_prompts_interval(
        [[0.5, 0.0], [0.0, 0.25]], n_resamples=500, seed=0)
    assert "| figa − sft | +0.188 |" in comparisons_table([c])
    # Only comparisons whose two methods ran, and only when both have samples.
    found = comparisons(tmp_path, RunConfig(methods=["sft", "figa"], seeds=[0, 1]))
    assert [(x["a"], x["b"]) for x in found] == [("figa", "sft")]
    assert paired_comparison(tmp_path, [0, 1], "figa", "dpo") is None


def test_stage_output_quiet_logs_the_stage_and_prints_one_line(tmp_path, capsys):
    import logging
    import sys

    from transformers.utils import logging as hf_logging

    from editalign.bench.runner import stage_output

    console = logging.StreamHandler(sys.stderr)  # what the CLI's basicConfig installs
    root = logging.getLogger()
    root.addHandler(console)
    try:
        log = tmp_path / "stage" / "stage.log"
        with stage_output(log, "train x", quiet=True) as note:
            print("{'loss': 1.0}")
            logging.getLogger("editalign.test").warning("a logged warning")
            for _ in hf_logging.tqdm(range(3), desc="Loading weights"):
                pass
            note["summary"] = "done well"
        assert hf_logging.is_progress_bar_enabled()  # restored afterwards
        with pytest.raises(RuntimeError, match="boom"), \
                stage_output(tmp_path / "bad.log", "train y", quiet=True):
            print("partial output")
            raise RuntimeError("boom")
    finally:
        root.removeHandler(console)
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2 and captured.err == ""
    assert lines[0].startswith("train x: done well, ") and lines[0].endswith(f"(log: {log})")
    assert lines[1].startswith("train y: failed after ") and "RuntimeError: boom" in lines[1]
    text = log.read_text()
    assert "{'loss': 1.0}" in text and "a logged warning" in text
    assert "Loading weights" not in text
    assert "partial output" in (tmp_path / "bad.log").read_text()


def test_stage_output_on_a_terminal_changes_nothing(tmp_path, capsys):
    from editalign.bench.runner import stage_output

    with stage_output(tmp_path / "stage.log", "train x", quiet=False):
        print("shown as it comes")
    assert capsys.readouterr().out == "shown as it comes\n"
    assert not (tmp_path / "stage.log").exists()
