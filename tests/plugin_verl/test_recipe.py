"""The one-GPU recipe (docs/verl.md) checked as far as a CPU can: both arms' overrides are
accepted by verl's own config (Hydra) and by the check verl's trainer runs first
(``validate_config``), the arms differ where they must, and the prompts it writes are read
by verl's RL dataset. Whether it trains is for a GPU (benchmarks/verl_gpu.sh)."""

from __future__ import annotations

import json
import os

import pytest
import verl
from editalign_verl.recipe import main, overrides
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config
from verl.utils.dataset.rl_dataset import RLHFDataset

from editalign.models import build_tiny_model, build_tiny_tokenizer


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    """verl's config check reads the policy's config.json: a tiny Llama stands in."""
    path = tmp_path_factory.mktemp("policy")
    model, tokenizer = build_tiny_model(0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def composed(arm, policy, tmp_path):
    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides(
            arm, policy=policy, reward_model="/models/rm", data=str(tmp_path)))


@pytest.mark.parametrize("arm", ["ppo", "dense_group"])
def test_each_arm_passes_verls_config_checks(arm, policy_dir, tmp_path):
    config = composed(arm, policy_dir, tmp_path)
    validate_config(config, use_reference_policy=need_reference_policy(config),
                    use_critic=need_critic(config))
    assert need_critic(config) is (arm == "ppo")
    assert config.algorithm.adv_estimator == ("gae" if arm == "ppo" else "editalign_dense_group")
    assert config.actor_rollout_ref.rollout.n == (1 if arm == "ppo" else 4)
    assert config.reward.reward_manager.name == "editalign"
    assert config.reward.reward_kwargs.model_path == "/models/rm"


def test_prompts_are_read_by_verls_dataset(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Fix sentence {i}.", "original": "a b",
                                         "revised": "a c", "id": f"r{i}"}) + "\n"
                             for i in range(6)))
    assert main(["prompts", "--data", str(pairs), "--out", str(tmp_path / "p"),
                 "--val_size", "2"]) == 0
    assert "4 train, 2 val rows" in capsys.readouterr().out
    tokenizer = build_tiny_tokenizer()
    dataset = RLHFDataset(str(tmp_path / "p" / "train.parquet"), tokenizer, OmegaConf.create(
        {"max_prompt_length": 64, "cache_dir": str(tmp_path / "cache"),
         "filter_overlong_prompts": True}))
    assert len(dataset) == 4
    row = dataset[0]
    assert row["raw_prompt"] == [{"role": "user", "content": "Fix sentence 2."}]
    assert row["data_source"] == "editalign/pairs"


def test_print_lists_the_overrides_and_extra_ones_follow(tmp_path, capsys):
    assert main(["dense_group", "--policy", "/p", "--reward_model", "/rm", "--data",
                 str(tmp_path), "--print", "trainer.total_training_steps=3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "algorithm.adv_estimator=editalign_dense_group" in lines
    assert lines[-1] == "trainer.total_training_steps=3"


def test_summary_reads_verls_file_logger_lines(tmp_path, capsys):
    log = tmp_path / "dense_group.jsonl"
    lines = [{"step": 0, "data": {"val-core/x": 1.0}}]  # a validation line: not a step
    lines += [{"step": i + 1, "data": {"critic/score/mean": 0.1 * i, "timing_s/step": 2.0}}
              for i in range(8)]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "summary.json"
    assert main(["summary", "--data", str(log), "--out", str(out)]) == 0
    score = json.loads(out.read_text())["dense_group"]["metrics"]["critic/score/mean"]
    assert score["first"] == 0.0 and score["last"] == pytest.approx(0.7)
    assert score["mean_first_quarter"] == pytest.approx(0.05)  # steps 0, 1 of 8
    assert score["mean_last_quarter"] == pytest.approx(0.65)
    assert "dense_group: 8 steps" in capsys.readouterr().out


def test_the_ppo_command_in_docs_is_the_recipes():
    import shlex
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "verl.md").read_text()
    start = doc.index("VERL_USE_EXTERNAL_MODULES=editalign_verl python -m verl.trainer.main_ppo")
    block = doc[start:doc.index("```", start)].replace("\\\n", " ")
    shown = shlex.split(block)[4:]  # after the variable, python, -m, the module
    assert sorted(shown) == sorted(overrides("ppo", policy="$POLICY", reward_model="$RM",
                                             data="$DATA", steps=15))
