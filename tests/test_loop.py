"""``editalign loop``: configuration checks, and rounds on the generated task (toy size)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from editalign.cli import main
from editalign.loop import ConfigError, Loop, Runner, command_flags, resolve_config

USER = {"policy": "tiny", "prompts": "p.jsonl",
        "revise": {"reviser": "api", "api_base": "http://127.0.0.1:9/v1", "model": "m"}}


def _with(**changes):
    config = json.loads(json.dumps(USER))
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return config


@pytest.mark.parametrize(("config", "message"), [
    ({**USER, "epochs": 3}, "unknown key 'epochs'"),
    (_with(revise__max_edit_raito=0.3), "revise.max_edit_raito: unknown option"),
    (_with(sample__temperature="hot"), "sample.temperature: expected float, got 'hot'"),
    (_with(sample__backend="tgi"), "sample.backend: 'tgi' is not one of hf, vllm"),
    (_with(revise__retry_strict="yes"), "revise.retry_strict: expected true or false"),
    (_with(revise__api_base=None), "revise.api_base: required with reviser: api"),
    (_with(revise__reviser="human"), "revise.reviser: 'human' is not one of api, bench"),
    (_with(train__method="a2c"), "train.method: 'a2c' is not one of figa, sft, dpo, ppo, grpo"),
    (_with(train__max_steps=5), "train.max_steps: unknown key"),
    (_with(sample__out="x.jsonl"), "sample.out: unknown option"),  # the loop sets it
    (_with(eval__judge_model=["a", "b"]), "eval.judge_model: expected a single value"),
    ({**USER, "rounds": 0}, "rounds: must be >= 1"),
    ({"prompts": "p.jsonl", "policy": None,
      "revise": {"reviser": "api", "api_base": "u", "model": "m"}}, None),  # bench defaults
    ({**USER, "bench_init": {"preset": "huge"}}, "bench_init.preset: 'huge'"),
])
def test_config_errors_name_the_key(config, message):
    if message is None:
        assert resolve_config(config)["revise"]["reviser"] == "api"
        return
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        resolve_config(config, source="loop.yaml")


def test_config_error_exits_2_naming_file_and_key(tmp_path, capsys):
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(_with(label__granularity="sentence")))
    assert main(["loop", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "label.granularity: 'sentence' is not one of token, word" in err
    path.write_text("rounds: [1\n")
    assert main(["loop", "--config", str(path)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_missing_prompts_and_gold_judge_on_user_prompts_are_refused_up_front(tmp_path):
    cfg = resolve_config({**USER, "out": str(tmp_path / "o"), "prompts": str(tmp_path / "no")})
    with pytest.raises(ConfigError, match=r"prompts: .* does not exist"):
        Loop(cfg).run_all()
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n")
    cfg = resolve_config({**USER, "out": str(tmp_path / "o2"), "prompts": str(prompts)})
    with pytest.raises(ConfigError, match=r"eval\.judge: gold judges only"):
        Loop(cfg).run_all()
    assert not (tmp_path / "o2" / "round1").exists()


def test_defaults_and_flags():
    bench = resolve_config(None, out="o")
    assert bench["policy"] == str(Path("o/bench/policy"))
    assert bench["prompts"].endswith("prompts.train.jsonl")
    assert bench["eval"]["prompts"].endswith("prompts.test.jsonl")
    assert bench["revise"] == {"reviser": "bench", "bench": str(Path("o/bench"))}
    assert bench["train"]["method"] == "figa" and bench["eval"]["judge"] == "gold"
    # a user's train.args mapping adds to / overrides the tuned defaults key by key
    merged = resolve_config({"train": {"args": {"max_steps": 7}}}, out="o")["train"]["args"]
    assert merged["max_steps"] == 7 and merged["gamma"] == 1
    user = resolve_config(USER)
    assert user["eval"]["prompts"] == "p.jsonl" and "bench" not in user
    from editalign.commands import COMMANDS

    parsers = COMMANDS.parsers()
    flags = command_flags("revise", {"reviser": "api", "max_edit_ratio": 0.4,
                                     "retry_strict": True, "field": ["a=b", "c=d"],
                                     "seed": None}, parsers["revise"])
    assert flags == ["--max-edit-ratio", "0.4", "--retry-strict", "--field", "a=b",
                     "--field", "c=d"]


# --------------------------------------------------------------------------- toy rounds


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench"
    assert main(["bench", "init", "--smoke", "--out", str(out)]) == 0
    return out


def _toy(bench: Path, out: Path, rounds: int = 2) -> dict:
    return resolve_config({
        "out": str(out), "rounds": rounds, "bench": str(bench),
        "sample": {"num_samples": 1, "max_new_tokens": 12, "batch_size": 8, "limit": 6},
        "train": {"args": {"max_steps": 2, "per_device_train_batch_size": 4}},
        "eval": {"limit": 4, "samples_per_prompt": 1, "max_new_tokens": 8, "batch_size": 8}})


class Interrupting(Runner):
    """Runs every stage in-process; raises KeyboardInterrupt when ``stop`` is reached."""

    def __init__(self, stop: tuple[str, str] | None = None) -> None:
        super().__init__(child_stages=())
        self.stop, self.calls = stop, []

    def __call__(self, argv, log):
        stage = (log.parent.name, log.stem)
        self.calls.append(stage)
        if stage == self.stop:
            raise KeyboardInterrupt
        return super().__call__(argv, log)


def test_rounds_resume_after_a_kill_and_report(bench, tmp_path):
    out = tmp_path / "loop"
    cfg = _toy(bench, out)
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        Loop(cfg, runner=Interrupting(stop=("round2", "label")), echo=lines.append).run_all()
    samples = (out / "round2" / "sample.jsonl").read_text()
    assert (out / "round1" / "eval.done").is_file() and not (out / "round2" / "label.done").exists()
    assert (out / "results.json").is_file()  # round 1's results are written already

    runner = Interrupting()
    lines.clear()
    rounds = Loop(cfg, runner=runner, echo=lines.append).run_all()
    # resumed at round 2's label stage: nothing before it ran again
    assert runner.calls == [("round2", "label"), ("round2", "train"), ("round2", "eval")]
    assert sum("done earlier, skipped" in line for line in lines) == 7
    assert (out / "round2" / "sample.jsonl").read_text() == samples
    # round 2 sampled round 1's policy and trained from it
    assert rounds[1]["start_policy"] == str(out / "round1" / "policy")
    log = (out / "round2" / "train.log").read_text()
    assert f"--model {out / 'round1' / 'policy'}" in log
    sample_rows = [json.loads(x) for x in samples.splitlines()]
    assert {r["meta"]["sample"]["model"] for r in sample_rows} == {str(out / "round1" / "policy")}
    # every sample became a pair exactly once; the training pairs are those with an edit
    revised = [json.loads(x) for x in (out / "round2" / "revised.jsonl").read_text().splitlines()]
    assert [r["id"] for r in revised] == [r["id"] for r in sample_rows]
    pairs = [json.loads(x) for x in (out / "round2" / "pairs.jsonl").read_text().splitlines()]
    assert pairs == [r for r in revised if r["original"] != r["revised"]]

    results = json.loads((out / "results.json").read_text())
    table = results["rounds"]
    assert [r["round"] for r in table] == [1, 2]
    for k, row in enumerate(table, 1):
        saved = json.loads((out / f"round{k}" / "winrate.json").read_text())
        assert row["win_rate"] == saved["win_rate"] and row["judge"] == "gold"
        assert saved["reference"] == str(bench / "policy")  # always the initial policy
    # the paired difference between rounds, from the per-prompt outcomes
    r1, r2 = ([json.loads(x) for x in (out / f"round{k}" / "eval_samples.jsonl")
               .read_text().splitlines()] for k in (1, 2))
    expected = sum(a["outcome"] - b["outcome"] for a, b in zip(r2, r1, strict=True)) / len(r1)
    assert table[1]["vs_previous_round"]["difference"] == pytest.approx(expected)
    assert "| 2 |" in (out / "results.md").read_text()
    assert (out / "winrate.png").read_bytes()[:4] == b"\x89PNG"
    assert "![win rate per round](winrate.png)" in (out / "report.md").read_text()

    # another configuration into the same directory is refused (more rounds would be fine)
    changed = _toy(bench, out)
    changed["train"] = {**changed["train"], "method": "sft", "args": {"max_steps": 2}}
    with pytest.raises(ConfigError, match="another 'train'"):
        Loop(changed, runner=Interrupting()).run_all()


@pytest.mark.slow  # a child process start-up: ~20-60 s on a busy 2-core machine
def test_a_bad_train_flag_stops_the_loop_before_any_stage(bench, tmp_path, capsys):
    out = tmp_path / "loop"
    cfg = _toy(bench, out, rounds=1)
    cfg["train"]["args"]["no_such_flag"] = 1
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in cfg.items()}))
    # the train stage's own parser refuses it before sample/revise/label run
    assert main(["loop", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "train.args" in err and "no_such_flag" in err
    assert not (out / "round1" / "sample.done").exists()


def test_the_documented_loop_yaml_files_are_valid():
    import re

    root = Path(__file__).parent.parent
    found = 0
    for doc in ("README.md", "docs/loop.md"):
        for block in re.findall(r"```yaml\n(.*?)```", (root / doc).read_text(), re.S):
            if "rounds:" in block:
                cfg = resolve_config(yaml.safe_load(block), source=doc)
                assert cfg["revise"]["reviser"] == "api" and cfg["train"]["method"] == "figa"
                found += 1
    assert found == 2


def test_ppo_round_trains_a_reward_model_then_ppo_from_the_current_policy(bench, tmp_path):
    out = tmp_path / "loop-ppo"
    cfg = resolve_config({
        "out": str(out), "rounds": 1, "bench": str(bench),
        "sample": {"num_samples": 1, "max_new_tokens": 12, "batch_size": 8, "limit": 6},
        "eval": {"limit": 4, "samples_per_prompt": 1, "max_new_tokens": 8, "batch_size": 8},
        "train": {"method": "ppo", "reward": "token",
                  "reward_args": {"max_steps": 2, "per_device_train_batch_size": 4},
                  "args": {"num_iterations": 1, "rollout_batch_size": 4,
                           "per_device_train_batch_size": 4, "max_new_tokens": 8}}})
    lines: list[str] = []
    rounds = Loop(cfg, runner=Interrupting(), echo=lines.append).run_all()
    round_dir = out / "round1"
    assert (round_dir / "reward_model" / "reward_config.json").is_file()
    assert (round_dir / "policy" / "config.json").is_file()
    rm_log = (round_dir / "train_reward_model.log").read_text()
    assert f"--model {bench / 'policy'}" in rm_log and f"--data {round_dir / 'labels'}" in rm_log
    log = (round_dir / "train.log").read_text()
    assert f"--reward_model {round_dir / 'reward_model'}" in log and "--reward token" in log
    prompts = [json.loads(x) for x in (round_dir / "rl_prompts.jsonl").read_text().splitlines()]
    sampled = [json.loads(x) for x in (round_dir / "sample.jsonl").read_text().splitlines()]
    assert len(prompts) == len({json.dumps(r["prompt"], sort_keys=True) for r in sampled})
    assert rounds[0]["train"]["prompts"] == len(prompts)
    assert json.loads((out / "results.json").read_text())["rounds"][0]["win_rate"] is not None


def test_reward_keys_only_with_ppo(tmp_path):
    with pytest.raises(ConfigError, match="only with method: ppo or grpo"):
        resolve_config({"out": str(tmp_path), "train": {"method": "figa", "reward": "token"}})
    with pytest.raises(ConfigError, match=r"train\.reward: .dense."):
        resolve_config({"out": str(tmp_path), "train": {"method": "ppo", "reward": "dense"}})


@pytest.mark.parametrize("reward", ["token", "dpo"])
def test_grpo_round_trains_a_reward_then_grpo_from_the_current_policy(bench, tmp_path, reward):
    out = tmp_path / f"loop-grpo-{reward}"
    reward_args = {"max_steps": 2, "per_device_train_batch_size": 4}
    if reward == "dpo":
        reward_args["beta"] = 0.2
    cfg = resolve_config({
        "out": str(out), "rounds": 1, "bench": str(bench),
        "sample": {"num_samples": 1, "max_new_tokens": 12, "batch_size": 8, "limit": 6},
        "eval": {"limit": 4, "samples_per_prompt": 1, "max_new_tokens": 8, "batch_size": 8},
        "train": {"method": "grpo", "reward": reward, "reward_args": reward_args,
                  "args": {"max_steps": 1, "per_device_train_batch_size": 4,
                           "num_generations": 2, "max_completion_length": 8}}})
    rounds = Loop(cfg, runner=Interrupting(), echo=[].append).run_all()
    round_dir = out / "round1"
    rm_log = (round_dir / "train_reward_model.log").read_text()
    assert f"--data {round_dir / 'labels'}" in rm_log
    trainer = "dpo" if reward == "dpo" else "token-rm"
    assert rm_log.startswith(f"$ editalign train {trainer} --model {bench / 'policy'}")
    assert (round_dir / "policy" / "model.safetensors").is_file()
    log = (round_dir / "train.log").read_text()
    assert f"--reward_model {round_dir / 'reward_model'}" in log and f"--reward {reward}" in log
    from editalign.bench.tuned import TUNED

    assert f"--learning_rate {TUNED['facts'].ppo_learning_rate}" in log  # the tuned RL rate
    if reward == "dpo":
        assert "--dpo_beta 0.2" in log and "--beta 0.2" in rm_log
    prompts = [json.loads(x) for x in (round_dir / "rl_prompts.jsonl").read_text().splitlines()]
    assert prompts and all(set(p) == {"id", "prompt"} for p in prompts)  # prompts, not pairs
    assert rounds[0]["train"]["method"] == f"grpo ({reward} reward)"
    results = json.loads((out / "results.json").read_text())
    assert results["best_round"] == 1 and results["best_policy"] == str(round_dir / "policy")


class Scripted(Loop):
    """A loop whose stages write a given round's outcomes instead of training (the stop rule
    and the best round read only the evaluations)."""

    def __init__(self, cfg, outcomes, **kw):
        super().__init__(cfg, echo=kw.pop("echo", print), **kw)
        self.outcomes = outcomes

    def sample(self, k):
        return {"rows": 1}

    def revise(self, k):
        return {"kept": 1, "with_edit": 1}

    def label(self, k):
        return {}

    def train(self, k):
        return {"train_loss": None}

    def evaluate(self, k):
        rows = [{"id": i, "outcome": o} for i, o in enumerate(self.outcomes[k - 1])]
        d = self.out / f"round{k}"
        (d / "eval_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        rate = sum(self.outcomes[k - 1]) / len(rows)
        (d / "winrate.json").write_text(json.dumps({
            "win_rate": rate, "ci_low": rate, "ci_high": rate, "kl": 0.0, "n": len(rows),
            "length_policy": 1.0, "judge": "gold"}))
        return {"win_rate": rate}

    def ensure_bench(self):
        pass

    def check_inputs(self):
        pass


@pytest.mark.parametrize("keep_going", [False, True])
def test_the_loop_stops_after_a_round_that_loses_and_keeps_the_best(tmp_path, keep_going):
    n = 40
    outcomes = [[1.0] * 20 + [0.0] * 20,  # 0.5
                [1.0] * 36 + [0.0] * 4,  # 0.9: best
                [1.0] * 4 + [0.0] * 36,  # 0.1: loses to round 2, interval below 0
                [1.0] * n]
    cfg = {**resolve_config({**USER, "rounds": 4, "out": str(tmp_path / "l")})}
    lines: list[str] = []
    loop = Scripted(cfg, outcomes, echo=lines.append, keep_going=keep_going)
    rounds = loop.run_all()
    results = json.loads((tmp_path / "l" / "results.json").read_text())
    assert results["rounds"][2]["vs_previous_round"]["ci_high"] < 0
    if keep_going:
        assert len(rounds) == 4 and results["best_round"] == 4
    else:
        assert len(rounds) == 3 and loop.stopped_at == 3
        assert results["best_round"] == 2
        assert results["best_policy"] == str(tmp_path / "l" / "round2" / "policy")
        assert any("round 3 lost to round 2" in x and "stopping" in x for x in lines)
    assert "Best round:" in (tmp_path / "l" / "results.md").read_text()
