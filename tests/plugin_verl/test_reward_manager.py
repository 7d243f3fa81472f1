"""The ``editalign`` reward manager on verl's own code path: verl's config (Hydra, the
recipe's overrides), verl's reward-loop worker calling the manager, the manager's
``assemble_rm_scores`` building ``rm_scores``, and verl's advantage dispatch on top. The
reward models are tiny editalign models built here; the expected rewards are each row's own
forward pass, unpadded."""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest
import torch
import transformers
import verl
from editalign_verl.reward_manager import MANAGER_NAME, EditalignRewardManager
from hydra import compose, initialize_config_dir
from packaging.version import Version
from verl import DataProto
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl.trainer.ppo.reward import resolve_reward_manager_cls

from editalign.losses import dense_group_advantages
from editalign.models import build_tiny_model, build_tiny_tokenizer, tokenizer_fingerprint
from editalign.reward_model import RewardModelConfig, TokenizerMismatchError, TokenRewardModel

PROMPTS = [[10, 11, 12, 13], [20, 21, 22, 23, 24, 25], [30, 31]]
RESPONSES = [[40, 41, 42, 43, 44], [50, 51, 52, 53, 54, 55, 56], [60, 61]]
UIDS = np.array(["p0", "p0", "p1"], dtype=object)


def save_tiny_rm(directory, seed=0, read_at="token"):
    model, tokenizer = build_tiny_model(seed)
    config = RewardModelConfig(transform="sigmoid", read_at=read_at, base_model="tiny",
                               tokenizer_fingerprint=tokenizer_fingerprint(tokenizer))
    TokenRewardModel(model.model, config).save_pretrained(directory, tokenizer=tokenizer)
    return directory


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    return str(save_tiny_rm(tmp_path_factory.mktemp("token_rm")))


def verl_config(rm_path, *extra):
    """verl's own ppo_trainer config with the recipe's reward overrides (docs/verl.md)."""
    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_trainer", overrides=[
            f"actor_rollout_ref.model.path={rm_path}",
            f"reward.reward_manager.name={MANAGER_NAME}",
            "reward.reward_model.enable=True",
            f"reward.reward_model.model_path={rm_path}",
            "reward.custom_reward_function.path=pkg://editalign_verl.reward_manager",
            "reward.custom_reward_function.name=compute_score",
            f"+reward.reward_kwargs.model_path={rm_path}",
            "+reward.reward_kwargs.device=cpu",
            "+reward.reward_kwargs.batch_size=2",  # 3 rows: two forward passes
            *extra,
        ])


def rollout_batch(pad_id, prompt_side="left"):
    """A rollout DataProto as verl's trainers hand it to the reward loop: prompts padded to
    one width (left in the legacy trainer, right in v1), responses right-padded."""
    p_width, r_width = max(map(len, PROMPTS)), max(map(len, RESPONSES))
    prompts = torch.full((len(PROMPTS), p_width), pad_id)
    responses = torch.full((len(PROMPTS), r_width), pad_id)
    mask = torch.zeros(len(PROMPTS), p_width + r_width, dtype=torch.long)
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
        cols = slice(p_width - len(p), p_width) if prompt_side == "left" else slice(0, len(p))
        prompts[i, cols] = torch.tensor(p)
        mask[i, cols] = 1
        responses[i, :len(r)] = torch.tensor(r)
        mask[i, p_width:p_width + len(r)] = 1
    return DataProto.from_dict(
        tensors={"prompts": prompts, "responses": responses, "attention_mask": mask},
        non_tensors={"uid": UIDS})


def rm_scores_through_verl(config, data):
    """What ``RewardLoopManager.compute_rm_score`` does, without Ray: one reward-loop worker
    (verl's class) scores the rows, the configured manager class assembles ``rm_scores``."""
    worker = RewardLoopWorker(config)
    outputs = asyncio.run(worker.compute_score_batch(data))
    manager_cls = resolve_reward_manager_cls(config)
    return manager_cls.assemble_rm_scores(data, [o["reward_score"] for o in outputs]), outputs


def own_forward_rewards(rm_dir):
    model = TokenRewardModel.from_pretrained(rm_dir)
    with torch.no_grad():
        return [model(torch.tensor([p + r])).rewards[0, len(p):].float()
                for p, r in zip(PROMPTS, RESPONSES, strict=True)]


def test_runs_under_verls_transformers_and_resolves_by_name(rm_dir):
    assert Version(transformers.__version__) < Version("5.11")  # verl 0.9.1's pin
    assert get_reward_manager_cls(MANAGER_NAME) is EditalignRewardManager
    assert resolve_reward_manager_cls(verl_config(rm_dir)) is EditalignRewardManager


@pytest.mark.parametrize("prompt_side", ["left", "right"])
def test_token_rewards_per_token_zero_on_padding(rm_dir, prompt_side):
    config = verl_config(rm_dir)
    tokenizer = TokenRewardModel.load_tokenizer(rm_dir)
    data = rollout_batch(tokenizer.pad_token_id, prompt_side)
    rm_scores, outputs = rm_scores_through_verl(config, data)
    assert rm_scores.shape == data.batch["responses"].shape
    assert rm_scores.dtype == torch.float32
    for i, expected in enumerate(own_forward_rewards(rm_dir)):
        n = len(RESPONSES[i])
        assert len(outputs[i]["reward_score"]) == n
        torch.testing.assert_close(rm_scores[i, :n], expected, rtol=1e-5, atol=1e-5)
        assert torch.all(rm_scores[i, :n] != 0)  # 2σ(z) − 1 is 0 only at z = 0
        assert torch.equal(rm_scores[i, n:], torch.zeros(rm_scores.shape[1] - n))
        info = outputs[i]["reward_extra_info"]
        assert info["editalign_reward_sum"] == pytest.approx(float(expected.sum()), abs=1e-4)


def test_rows_scored_together_in_batches_of_batch_size(rm_dir):
    config = verl_config(rm_dir)  # batch_size=2
    worker = RewardLoopWorker(config)
    source = worker.reward_manager.source
    batches = []
    score = source.score
    source.score = lambda ids, mask, start: batches.append(len(ids)) or score(ids, mask, start)
    try:
        data = rollout_batch(TokenRewardModel.load_tokenizer(rm_dir).pad_token_id)
        asyncio.run(worker.compute_score_batch(data))
    finally:
        del source.score  # the instance attribute: back to the class's method
    assert batches == [2, 1]  # 3 rows, not one forward pass each


def test_sequence_source_puts_the_score_on_the_last_token(tmp_path):
    rm_dir = str(save_tiny_rm(tmp_path / "seq_rm", read_at="last"))
    config = verl_config(rm_dir, "+reward.reward_kwargs.source=sequence")
    data = rollout_batch(TokenRewardModel.load_tokenizer(rm_dir).pad_token_id)
    rm_scores, _ = rm_scores_through_verl(config, data)
    for i, expected in enumerate(own_forward_rewards(rm_dir)):
        n = len(RESPONSES[i])
        assert torch.count_nonzero(rm_scores[i]) == 1
        torch.testing.assert_close(rm_scores[i, n - 1], expected[-1], rtol=1e-5, atol=1e-5)


def test_dpo_source_is_beta_times_the_log_ratio(tmp_path):
    paths = {}
    for name, seed in (("dpo", 1), ("ref", 2)):
        model, tokenizer = build_tiny_model(seed)
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
        paths[name] = str(tmp_path / name)
    config = verl_config(paths["ref"], "+reward.reward_kwargs.source=dpo",
                         "+reward.reward_kwargs.dpo_beta=0.5")
    config.reward.reward_kwargs.model_path = paths["dpo"]  # reference: the policy's start
    data = rollout_batch(build_tiny_tokenizer().pad_token_id)
    rm_scores, _ = rm_scores_through_verl(config, data)
    models = {name: transformers.AutoModelForCausalLM.from_pretrained(path)
              for name, path in paths.items()}
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
        ids = torch.tensor([p + r])
        with torch.no_grad():
            logp = {name: m(ids).logits[0, len(p) - 1:-1].log_softmax(-1)
                    .gather(-1, torch.tensor(r)[:, None]).squeeze(-1)
                    for name, m in models.items()}
        torch.testing.assert_close(rm_scores[i, :len(r)], 0.5 * (logp["dpo"] - logp["ref"]),
                                   rtol=1e-4, atol=1e-5)
        assert torch.all(rm_scores[i, len(r):] == 0)


def test_scores_feed_verls_advantage_dispatch_unchanged(rm_dir):
    config = verl_config(rm_dir, "algorithm.adv_estimator=editalign_dense_group",
                         "+algorithm.editalign.token_coef=0.5")
    data = rollout_batch(TokenRewardModel.load_tokenizer(rm_dir).pad_token_id)
    rm_scores, _ = rm_scores_through_verl(config, data)
    mask = data.batch["attention_mask"][:, data.batch["prompts"].shape[1]:]
    # The trainer's step: rm_scores -> token_level_scores -> token_level_rewards (no KL).
    data.batch["token_level_rewards"] = rm_scores
    data.batch["response_mask"] = mask
    out = compute_advantage(data, adv_estimator=config.algorithm.adv_estimator,
                            config=config.algorithm)
    want = dense_group_advantages(rm_scores.sum(-1), rm_scores, mask.float(),
                                  torch.tensor([0, 0, 1]), token_coef=0.5)
    assert torch.equal(out.batch["advantages"], want)


def test_misrouted_config_and_foreign_tokenizer_are_named(rm_dir):
    tokenizer = TokenRewardModel.load_tokenizer(rm_dir)
    streaming = verl_config(rm_dir, "reward.reward_model.enable=False")
    with pytest.raises(ValueError, match=r"colocated reward-model path.*enable=True"):
        EditalignRewardManager(streaming, tokenizer, None)
    with pytest.raises(ValueError, match=r"unknown keys \['modelpath'\]"):
        EditalignRewardManager(verl_config(rm_dir, "+reward.reward_kwargs.modelpath=x"),
                               tokenizer, None)
    other = build_tiny_tokenizer()
    other.add_tokens(["<|extra|>"])
    with pytest.raises(TokenizerMismatchError, match="tokenizer mismatch"):
        EditalignRewardManager(verl_config(rm_dir), other, None)
    data = rollout_batch(tokenizer.pad_token_id)
    with pytest.raises(TypeError, match="row 0: got one score"):
        EditalignRewardManager.assemble_rm_scores(data, [0.5, 0.1, 0.2])
    with pytest.raises(ValueError, match="row 1: 3 token rewards for a response of 7"):
        EditalignRewardManager.assemble_rm_scores(data, [[0.0] * 5, [0.0] * 3, [0.0] * 2])
