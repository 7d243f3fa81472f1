"""The one RL stage (editalign.train.rl_stage) and the benchmark's RL arms built on it."""

from pathlib import Path

import pytest

from editalign.train.rl_stage import RLMethod, reward_is_trained, run_rl_stage


def value(argv, flag):  # the last occurrence wins in argparse
    return argv[len(argv) - 1 - argv[::-1].index(flag) + 1]


def recorder(calls):
    def execute(step, trainer, argv):
        calls.append((step, trainer, argv))
        out = Path(value(argv, "--output_dir"))
        out.mkdir(parents=True, exist_ok=True)
        if step == "reward_model":
            (out / "reward_config.json").write_text("{}")
        return 1.5

    return execute


@pytest.mark.parametrize("trainer", ["ppo", "grpo"])
@pytest.mark.parametrize("reward,rm", [("token", "token-rm"), ("sequence", "rm")])
def test_trains_the_reward_model_once_then_rl(tmp_path, trainer, reward, rm):
    calls: list = []
    method = RLMethod(trainer, reward, learning_rate=1e-4, args=("--x", "1"),
                      reward_args=("--equal_weight", "1"))
    kwargs = dict(policy="tiny", prompts=tmp_path / "prompts.jsonl", output_dir=tmp_path / "rl",
                  reward_dir=tmp_path / "rm", pairs=tmp_path / "pairs.jsonl",
                  reward_flags=["--max_steps", "3"], rl_flags=["--seed", "2"],
                  execute=recorder(calls))
    assert run_rl_stage(method, **kwargs) == 3.0
    (step1, t1, rm_argv), (step2, t2, rl_argv) = calls
    assert (step1, t1, step2, t2) == ("reward_model", rm, "rl", trainer)
    assert value(rm_argv, "--data") == str(tmp_path / "pairs.jsonl")
    assert value(rm_argv, "--equal_weight") == "1" and value(rm_argv, "--max_steps") == "3"
    assert value(rl_argv, "--reward") == reward and value(rl_argv, "--prompts") == str(
        tmp_path / "prompts.jsonl")
    assert value(rl_argv, "--reward_model") == str(tmp_path / "rm")
    assert value(rl_argv, "--learning_rate") == "0.0001" and value(rl_argv, "--x") == "1"
    assert "--data" not in rl_argv  # prompts, not pairs
    calls.clear()  # a rerun: the reward model is there
    run_rl_stage(method, **kwargs)
    assert [c[0] for c in calls] == ["rl"]


def test_dpo_reward_trains_dpo_with_the_beta_rl_reads(tmp_path):
    calls: list = []
    method = RLMethod("grpo", "dpo", dpo_beta=0.3)
    run_rl_stage(method, policy="tiny", prompts="p.jsonl", output_dir=tmp_path / "rl",
                 reward_dir=tmp_path / "dpo", pairs="pairs.jsonl", execute=recorder(calls))
    (_, dpo, dpo_argv), (_, grpo, rl_argv) = calls
    assert (dpo, grpo) == ("dpo", "grpo")
    assert value(dpo_argv, "--beta") == value(rl_argv, "--dpo_beta") == "0.3"
    assert not reward_is_trained(method, tmp_path / "dpo")  # no weights were written
    calls.clear()  # pairs=None: the reward is given, nothing trains before RL
    run_rl_stage(method, policy="tiny", prompts="p.jsonl", output_dir=tmp_path / "rl",
                 reward_dir=tmp_path / "dpo", execute=recorder(calls))
    assert [c[1] for c in calls] == ["grpo"]


def test_methods_are_checked_and_named():
    assert RLMethod("grpo", "sequence").name == "grpo-seq"
    assert RLMethod("ppo", "token").reward_trainer == "token-rm"
    with pytest.raises(ValueError, match="RL trainer 'a2c'"):
        RLMethod("a2c", "token")
    with pytest.raises(ValueError, match="reward 'judge'"):
        RLMethod("ppo", "judge")


def test_bench_rl_arms_share_reward_models_and_budgets(tmp_path, monkeypatch):
    from editalign.bench import runner

    calls: list = []

    def fake_train(trainer, argv):
        calls.append((trainer, argv))
        out = Path(value(argv, "--output_dir"))
        out.mkdir(parents=True, exist_ok=True)
        (out / "reward_config.json").write_text("{}")
        return 0.0

    monkeypatch.setattr(runner, "_train", fake_train)
    (tmp_path / "bench").mkdir()
    out = tmp_path / "out"
    config = runner.RunConfig(ppo_iterations=7, ppo_rollout_batch_size=8)
    runner.train_method("ppo-token", tmp_path / "bench", tmp_path / "pairs.jsonl", out, config)
    calls.clear()
    runner.train_method("grpo-token", tmp_path / "bench", tmp_path / "pairs.jsonl", out, config)
    [(trainer, argv)] = calls  # the token RM of ppo-token is reused
    assert trainer == "grpo" and value(argv, "--reward_model") == str(out / "token-rm")
    assert value(argv, "--prompts") == str(tmp_path / "bench" / "prompts.train.jsonl")
    assert value(argv, "--max_steps") == "7" and value(argv, "--num_generations") == "4"
    assert value(argv, "--per_device_train_batch_size") == "8"
    # the GRPO arms' own tuned rate (the PPO arms' when a task has none; --ppo-learning-rate
    # sets both)
    assert float(value(argv, "--learning_rate")) == config.tuned_settings.grpo_learning_rate
    assert config.rl_method("ppo-token").learning_rate == config.ppo_lr()
    given = runner.RunConfig(ppo_learning_rate=3e-5)
    assert given.rl_method("grpo-token").learning_rate == 3e-5
    calls.clear()
    runner.train_method("grpo-seq", tmp_path / "bench", tmp_path / "pairs.jsonl", out, config)
    assert [c[0] for c in calls] == ["rm", "grpo"]
    assert value(calls[1][1], "--reward") == "sequence"
    calls.clear()
    runner.train_method("grpo-dpo", tmp_path / "bench", tmp_path / "pairs.jsonl", out, config)
    assert [c[0] for c in calls] == ["dpo", "grpo"]
    assert value(calls[1][1], "--dpo_beta") == value(calls[0][1], "--beta") == "0.3"
    assert "grpo-token" in runner.METHODS and "grpo-dpo" in runner.METHODS
