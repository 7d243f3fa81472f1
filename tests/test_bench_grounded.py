"""The grounded benchmark task: cards in every prompt, held-out entities, context errors."""

import hashlib
import json
import math
import random
import re
from collections import Counter

import pytest
from rapidfuzz.distance import Levenshtein

from editalign.bench import BenchConfig, BenchTask, GoldJudge, revise
from editalign.bench.judge import value_mentions
from editalign.bench.task import error_rates, make_edit_pairs
from editalign.bench.world import (
    CARD_FORMATS,
    GROUNDED_KINDS,
    can_distract,
    render_card,
)
from editalign.data.align import word_spans

# Tessa's card says she lives in Westerly and was born in Dunholt; the distractor card is
# Jonas Holm's (a pilot from Coldmere, born in Ivydale).
TESSA = {"entity": "p000", "kind": "person", "name": "Tessa Dorsey", "short": "Tessa",
         "facts": {"job": "farmer", "city": "Westerly", "birthplace": "Dunholt", "age": "64",
                   "colour": "purple"},
         "asked": ["job", "city", "birthplace", "age", "colour"], "task": "grounded",
         "distractor": {"entity": "p001", "name": "Jonas Holm",
                        "facts": {"job": "pilot", "city": "Coldmere", "birthplace": "Ivydale",
                                  "age": "30", "colour": "teal"}}}


@pytest.fixture(scope="module")
def task():
    return BenchTask.build(BenchConfig(seed=3, task="grounded"))


@pytest.fixture(scope="module")
def noisy(task):
    return task.noisy_sft_rows()


def _words(text):
    return [text[s:e].strip() for s, e in word_spans(text)]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- the first task


def test_first_task_files_and_tokenizer_are_unchanged(tmp_path):
    """The default task is the reported one: its files and tokenizer are byte-for-byte what
    they were before the grounded task existed (digests taken from that version)."""
    from editalign.bench.tokenizer import build_bench_tokenizer

    BenchTask.build(BenchConfig(seed=0)).write(tmp_path)
    expected = {
        "prompts.train.jsonl": "b2452d4db1d2d01f25410bb5f36dacae9ba67508a7f1069a8fc3f302b88f47ad",
        "prompts.test.jsonl": "abfc0404fe541a0e1a166978c5bba1a559ef26c457318059080f61be5187ded8",
        "sft_noisy.jsonl": "0b524671afe2d51b9391496bcaa700b182505f7517ea9041d707dd2037dc3b0f",
        "world.json": "988ee054b7442243d38f86f13f16a910426fdec4b9573ee378e3e039426be382",
    }
    for name, digest in expected.items():
        assert _sha((tmp_path / name).read_bytes()) == digest, name
    assert "task" not in json.loads((tmp_path / "config.json").read_text())
    vocab = json.dumps(build_bench_tokenizer().get_vocab(), sort_keys=True).encode()
    assert _sha(vocab) == "06cbc3fbef6cdb167b415e767534153adfc9e51a2acc367b6c2158be38a9c44d"


# --------------------------------------------------------------------------- cards and prompts


def test_card_renders_every_fact_in_every_format(task):
    rng = random.Random(0)
    prompts = task.prompts[:10] + task.prompts[-5:]
    for entity in [p.shown(task.world)[0] for p in prompts]:
        for card_format in CARD_FORMATS:
            order = list(entity.facts)
            rng.shuffle(order)
            card = render_card(entity, card_format, order, rng)
            assert entity.name in card
            for attribute, value in entity.facts.items():
                assert re.search(rf"\b{re.escape(value)}\b", card), (card_format, attribute)
            # The card's values, read like a response, are the entity's (no value of another).
            found = {m.value for m in value_mentions(card) if m.attribute != "name"}
            assert found == set(entity.facts.values())
            if card_format != "passage":  # the facts come in the drawn order
                positions = [card.index(f" {entity.facts[a]}") for a in order]
                assert positions == sorted(positions)
    with pytest.raises(ValueError, match="card format"):
        render_card(task.prompts[0].shown(task.world)[0], "poem", ["job"], rng)


def test_every_prompt_carries_the_entity_card_and_asks_last(task):
    rows = task.rows("train") + task.rows("test")
    assert len(rows) == len(task.prompts)
    with_distractor = 0
    for prompt in task.prompts:
        row = prompt.row(task.world)
        bench, text = row["bench"], row["prompt"][0]["content"]
        entity, other = prompt.shown(task.world)
        assert bench["task"] == "grounded" and bench["facts"] == entity.facts
        assert set(entity.facts) == set(GROUNDED_KINDS[entity.kind])
        for value in entity.facts.values():
            assert re.search(rf"\b{re.escape(value)}\b", text)
        # the question names the entity, last
        assert task.world.entity_asked(text) is task.world.by_id[entity.id]
        if bench["distractor"]:
            with_distractor += 1
            assert bench["distractor"]["facts"] == other.facts
            assert other.name in text and can_distract(other, entity)
    # Facts are per prompt: an entity's cards differ between its prompts, so only reading
    # the card answers (memorising names does not).
    first = {}
    differ = 0
    for prompt in task.prompts:
        differ += first.setdefault(prompt.entity, prompt.facts) != prompt.facts
    assert differ > len(task.prompts) / 2
    rate = task.config.distractor_rate
    sigma = math.sqrt(rate * (1 - rate) / len(rows))
    assert abs(with_distractor / len(rows) - rate) < 4 * sigma


def test_held_out_entities_never_occur_in_training(task, noisy):
    test_entities = {p.entity for p in task.split("test")}
    train_entities = {p.entity for p in task.split("train")}
    assert test_entities and train_entities and not test_entities & train_entities
    n = {k: sum(e.kind == k for e in task.world.entities) for k in ("person", "animal")}
    assert len(test_entities) == sum(round(task.config.test_fraction * v) for v in n.values())
    names = [task.world.by_id[e].name for e in test_entities]
    texts = [r["prompt"][0]["content"] for r in task.rows("train")]
    texts += [r["response"] for r in noisy] + [r["clean"] for r in noisy]
    for name in names:
        pattern = re.compile(rf"\b{re.escape(name)}\b")
        assert not any(pattern.search(t) for t in texts), name
    assert not any(r["bench"]["distractor"] and r["bench"]["distractor"]["entity"]
                   in test_entities for r in task.rows("train"))


def test_grounded_config_is_validated_and_round_trips(tmp_path, task):
    with pytest.raises(ValueError, match="task must be"):
        BenchConfig(task="trivia")
    with pytest.raises(ValueError, match="must be <= 1"):
        BenchConfig(task="grounded", distractor_value_rate=0.6, invented_value_rate=0.3,
                    swapped_value_rate=0.2)
    task.write(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["task"] == "grounded"
    assert BenchTask.load(tmp_path).prompts == task.prompts


# --------------------------------------------------------------------------- noisy data


def test_context_errors_have_the_configured_rates_and_the_judge_finds_them():
    config = BenchConfig(seed=1, task="grounded", distractor_value_rate=0.25,
                         invented_value_rate=0.1, swapped_value_rate=0.3, hedge_rate=0.15)
    rows = BenchTask.build(config).noisy_sft_rows()
    measured = error_rates(rows)
    sentences = sum(len(r["stated"]) for r in rows)
    with_distractor = sum(len(r["stated"]) for r in rows if r["bench"]["distractor"])
    towns = sum(a in ("city", "birthplace") for r in rows for a in r["stated"])
    for kind, rate, n in (("distractor_value", 0.25, with_distractor),
                          ("invented_value", 0.1, sentences), ("swapped_value", 0.3, towns),
                          ("hedge", 0.15, sentences), ("filler", config.filler_rate, len(rows))):
        sigma = math.sqrt(rate * (1 - rate) / n)
        assert abs(measured[kind] - rate) < 4 * sigma, (kind, measured[kind], rate)
    assert measured["wrong_value"] == 0.0  # the first task's kind is not planted here
    judge = GoldJudge()
    for row in rows:
        verdict = judge.verdict(row["response"], row["bench"])
        planted = [e["kind"] for e in row["errors"]]
        assert len(verdict.wrong) == sum(k.endswith("_value") for k in planted)
        assert sorted(verdict.unwanted) == sorted(k for k in planted if not k.endswith("_value"))
        assert judge.score(row["clean"], row["bench"]) == 1.0
    for row in rows:  # every planted value is where its kind says it came from
        for error in row["errors"]:
            bench = row["bench"]
            if error["kind"] == "distractor_value":
                assert error["text"] == bench["distractor"]["facts"][error["attribute"]]
            elif error["kind"] == "swapped_value":
                assert error["text"] in bench["facts"].values()
                assert error["text"] != bench["facts"][error["attribute"]]
            elif error["kind"] == "invented_value":
                shown = set(bench["facts"].values()) | set(
                    (bench["distractor"] or {}).get("facts", {}).values())
                assert error["text"] not in shown


def test_reviser_restores_clean_with_the_planted_kinds_and_their_size(noisy):
    checked = 0
    for row in noisy:
        revision = revise(row["response"], row["bench"])
        assert revision.text == row["clean"]
        assert sorted(e.kind for e in revision.edits) == sorted(e["kind"] for e in row["errors"])
        expected = sum(1 if e["kind"].endswith("_value") else len(_words(e["text"].strip()))
                       for e in row["errors"])
        assert Levenshtein.distance(_words(row["response"]), _words(revision.text)) == expected
        checked += bool(row["errors"])
    assert checked > 300


def test_reviser_token_edits_stay_inside_the_errors(noisy):
    from editalign.bench.tokenizer import build_bench_tokenizer
    from editalign.data.align import Label
    from editalign.data.labeling import label_pair

    tok = build_bench_tokenizer(task="grounded")
    rows = noisy[:150]
    for row, pair in zip(rows, make_edit_pairs(rows, [r["response"] for r in rows]),
                         strict=True):
        side = label_pair(pair, tok).original
        changed = [o for o, label in zip(side.offsets[:-1], side.response_labels[:-1],
                                         strict=True)
                   if label in (Label.DELETED, Label.SUBSTITUTED)]
        spans = [(e["start"], e["end"]) for e in row["errors"]]
        # A changed token overlaps an error or abuts it (a deleted phrase's "." may be
        # aligned to the sentence before it: an equally short edit).
        for s, e in changed:
            assert any(s <= b and a <= e for a, b in spans), (row["response"], (s, e))
        for a, b in spans:
            assert any(s < b and a < e for s, e in changed)


# --------------------------------------------------------------------------- judge, reviser


def test_judge_and_reviser_on_hand_made_grounded_cases():
    judge = GoldJudge()
    job, city, born = ({**TESSA, "asked": [a]} for a in ("job", "city", "birthplace"))
    # The right value, read from the card.
    assert judge.score("Tessa Dorsey works as a farmer.", job) == 1.0
    assert not revise("Tessa Dorsey works as a farmer.", job).changed
    # A value copied from the distractor card.
    assert judge.score("Tessa Dorsey works as a pilot.", job) == -1.0
    revision = revise("Tessa Dorsey works as a pilot.", job)
    assert revision.text == "Tessa Dorsey works as a farmer."
    assert [e.kind for e in revision.edits] == ["distractor_value"]
    # A value in the card, but the other town: the birthplace stated as the home town.
    assert judge.verdict("Tessa lives in Dunholt.", city).wrong == ["city"]
    revision = revise("Tessa lives in Dunholt.", city)
    assert revision.text == "Tessa lives in Westerly."
    assert [e.kind for e in revision.edits] == ["swapped_value"]
    assert judge.score("Tessa was born in Dunholt.", born) == 1.0
    revision = revise("Tessa was born in the town of Westerly.", born)
    assert revision.text == "Tessa was born in the town of Dunholt."
    assert [e.kind for e in revision.edits] == ["swapped_value"]
    # A value from nowhere (in no card of the prompt).
    revision = revise("Home for Tessa is the town of Glenrock.", city)
    assert revision.text == "Home for Tessa is the town of Westerly."
    assert [e.kind for e in revision.edits] == ["invented_value"]
    # The distractor's name and value, a hedge: all fixed, each its own kind.
    revision = revise("Jonas Holm was born in Ivydale, I think.", born)
    assert revision.text == "Tessa Dorsey was born in Dunholt."
    assert sorted(e.kind for e in revision.edits) == ["distractor_value", "hedge",
                                                      "wrong_name", "wrong_name"]
    # Both towns in one sentence: the cue word marks the birthplace, the other is the home.
    both = "Tessa was born in Dunholt and lives in Westerly."
    assert judge.verdict(both, TESSA).wrong == []
    assert revise("Tessa was born in Westerly and lives in Dunholt.", TESSA).text == both
    # Perfect answer to the open prompt; only the fixable kinds are fixed when asked.
    perfect = ("Tessa Dorsey works as a farmer. Tessa lives in Westerly. Tessa was born in "
               "Dunholt. Tessa is 64 years old. Tessa's favourite colour is purple.")
    assert judge.score(perfect, TESSA) == 1.0
    text = "Tessa Dorsey works as a pilot. Tessa lives in Dunholt."
    assert revise(text, TESSA, kinds={"swapped_value"}).text == \
        "Tessa Dorsey works as a pilot. Tessa lives in Westerly."
    # Without a birthplace (the first task) every town is the home town, as before.
    facts_task = {**TESSA, "facts": {k: v for k, v in TESSA["facts"].items()
                                     if k != "birthplace"}}
    del facts_task["task"]
    assert [m.attribute for m in value_mentions("Tessa was born in Dunholt.",
                                                facts_task["facts"])] == ["name", "city"]
    assert [e.kind for e in revise("Tessa was born in Dunholt.", facts_task).edits] == [
        "wrong_value"]


def test_reward_fn_refuses_a_world_without_facts(task):
    """The grounded world is names only (facts are per prompt): scoring by world lookup would
    be wrong, so it says so; the asked entity is still found despite the distractor."""
    rows = [r for r in task.rows("train") if r["bench"]["distractor"]][:20]
    for row in rows:
        asked = task.world.entity_asked(row["prompt"][0]["content"])
        assert asked is not None and asked.id == row["bench"]["entity"]
    with pytest.raises(ValueError, match="per prompt"):
        GoldJudge().reward_fn(task.world)([rows[0]["prompt"][0]["content"]], ["x"])


def test_grounded_tokenizer_keeps_names_and_values_whole():
    from editalign.bench.tokenizer import GROUNDED_VOCAB_SIZE, build_bench_tokenizer
    from editalign.bench.world import (
        CITIES,
        COLOURS,
        FIRST_NAMES,
        JOBS,
        LAST_NAMES,
        PERSON_AGES,
        PET_NAMES,
        SPECIES,
    )

    tok = build_bench_tokenizer(task="grounded")
    assert len(tok) <= GROUNDED_VOCAB_SIZE + 4
    for word in (*CITIES, *COLOURS, *FIRST_NAMES, *JOBS, *LAST_NAMES, *PERSON_AGES, *PET_NAMES,
                 *SPECIES, *(str(a) for a in range(1, 21))):
        assert len(tok(" " + word, add_special_tokens=False)["input_ids"]) == 1, word


def test_bench_init_grounded_command(tmp_path, monkeypatch, capsys):
    from editalign.cli import main

    monkeypatch.setenv("EDITALIGN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench"
    assert main(["bench", "init", "--task", "grounded", "--out", str(out), "--num-people", "5",
                 "--num-animals", "2", "--sft-steps", "2", "--sft-batch-size", "4",
                 "--sft-warmup-steps", "1", "--samples-per-prompt", "1",
                 "--max-new-tokens", "4", "--pair-prompts", "3", "--test-fraction", "0.3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "tiny-bench-grounded" and summary["config"]["task"] == "grounded"
    # --pair-prompts: edit pairs from that many of the training prompts, all distinct.
    pairs = [json.loads(x) for x in (out / "pairs.train.jsonl").read_text().splitlines()]
    train = {json.dumps(json.loads(x)["prompt"]) for x in
             (out / "prompts.train.jsonl").read_text().splitlines()}
    assert summary["pairs"]["n"] == summary["pairs"]["prompts"] == len(pairs) == 3
    assert len({json.dumps(p["prompt"]) for p in pairs}) == 3 < len(train)
    assert all(json.dumps(p["prompt"]) in train for p in pairs)
    # Error kinds per response: planted ones in the noisy data, the reviser's in the samples.
    noisy_rows = [json.loads(x) for x in (out / "sft_noisy.jsonl").read_text().splitlines()]
    planted = Counter(e["kind"] for r in noisy_rows for e in r["errors"])
    assert summary["noisy_sft_data"]["edits_per_response"] == pytest.approx(
        {k: v / len(noisy_rows) for k, v in planted.items()})
    test_pairs = [json.loads(x) for x in (out / "pairs.test.jsonl").read_text().splitlines()]
    fixed = Counter()
    for pair in test_pairs:
        fixed.update(pair["meta"]["edits"])
    assert summary["policy_test_samples"]["edits_per_response"] == pytest.approx(
        {k: v / len(test_pairs) for k, v in fixed.items()})
    rows = [json.loads(x) for x in (out / "prompts.test.jsonl").read_text().splitlines()]
    assert rows and all(r["bench"]["task"] == "grounded" for r in rows)
    assert "initial policy: 2 steps" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_run_grounded_smoke_with_every_method(tmp_path, monkeypatch):
    """`bench run --task grounded --smoke --methods all`: init of the grounded task, the seven
    methods (ppo-dpo reading the run's dpo policy), evaluation, comparisons, report."""
    from editalign.bench.runner import METHODS
    from editalign.cli import main

    monkeypatch.setenv("EDITALIGN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["bench", "run", "--task", "grounded", "--smoke", "--methods", "all",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in results["results"]] == list(METHODS)
    assert ("ppo-token", "ppo-dpo") in {(c["a"], c["b"]) for c in results["comparisons"]}
    assert json.loads((out / "bench" / "config.json").read_text())["task"] == "grounded"
    log = (out / "ppo-dpo" / "ppo_log.jsonl").read_text().splitlines()
    assert len(log) == 1 and json.loads(log[0])["reward"] != 0.0
    assert (out / "report.html").is_file()


def test_bench_run_refuses_an_earlier_init_of_the_other_task(tmp_path, capsys):
    from editalign.cli import main

    bench = tmp_path / "run" / "bench"
    BenchTask.build(BenchConfig(num_people=2, num_animals=1)).write(bench)  # the first task
    (bench / "summary.json").write_text("{}")
    assert main(["bench", "run", "--task", "grounded", "--smoke", "--out",
                 str(tmp_path / "run")]) == 2
    assert "holds the 'facts' task, not 'grounded'" in capsys.readouterr().err


def test_task_defaults_apply_to_the_grounded_task_only():
    """`--task grounded` gets its own defaults for every option the user left unset; the
    first task keeps the dataclasses' defaults; explicit flags and presets win."""
    import argparse
    from dataclasses import fields

    from editalign.bench.task import PolicySFTConfig
    from editalign.commands.bench import (
        PAIR_DEFAULTS,
        PRESETS,
        TASK_DEFAULTS,
        apply_preset,
        apply_task_defaults,
    )
    from editalign.commands.bench import add_arguments as add_bench_args

    parser = argparse.ArgumentParser()
    add_bench_args(parser)

    def parsed(*argv: str) -> argparse.Namespace:
        return apply_task_defaults(apply_preset(parser.parse_args(["init", *argv])))

    grounded = TASK_DEFAULTS["grounded"]
    assert grounded and not TASK_DEFAULTS["facts"]
    first = parsed()
    base = {f.name: f.default for f in fields(BenchConfig)}
    base.update({"sft_" + f.name: f.default for f in fields(PolicySFTConfig)})
    base.update(PAIR_DEFAULTS)
    for dest in grounded:
        assert getattr(first, dest) == base[dest], dest
        assert getattr(parsed("--task", "grounded"), dest) == grounded[dest], dest
    # An explicit value wins even when it equals the first task's default.
    assert parsed("--task", "grounded", "--sft-steps", str(base["sft_steps"])).sft_steps == \
        base["sft_steps"]
    # So does a preset's size (the smoke run stays a toy).
    smoke = parsed("--task", "grounded", "--smoke")
    assert smoke.sft_steps == PRESETS["smoke"]["sft_steps"]
    assert smoke.num_people == PRESETS["smoke"]["num_people"]
    config = BenchConfig(**{f.name: getattr(parsed("--task", "grounded"), f.name)
                            for f in fields(BenchConfig)})  # a valid config
    assert config.task == "grounded"


def test_bench_init_refuses_a_task_without_held_out_prompts(tmp_path, capsys):
    """The grounded default test fraction (0.03) holds out no entity of a toy world: a clear
    error (exit 2) before anything is trained or written, not an empty evaluation."""
    from editalign.cli import main

    out = tmp_path / "bench"
    assert main(["bench", "init", "--task", "grounded", "--out", str(out), "--num-people", "5",
                 "--num-animals", "2"]) == 2
    assert "--test-fraction 0.03 holds out no prompt" in capsys.readouterr().err
    assert not out.exists()
