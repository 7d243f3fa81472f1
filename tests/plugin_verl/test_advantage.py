"""editalign_dense_group, verl's estimator for editalign's dense group advantage: hand-computed
values, bit-for-bit equality with editalign.losses.dense_group_advantages through verl's own
dispatch (compute_advantage), and verl's GRPO as the reference at λ = 0."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from editalign_verl.advantage import ESTIMATOR_NAME, compute_editalign_dense_group_advantage
from omegaconf import OmegaConf
from verl import DataProto
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, get_adv_estimator_fn
from verl.trainer.ppo.ray_trainer import compute_advantage

from editalign.losses import dense_group_advantages

EPS = 1e-4

# Three rows, groups a = {0, 1} and b = {2}; row 0 has 2 response tokens, row 1 three, row 2 one.
MASK = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
REWARDS = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 0.0, 0.0]])
INDEX = np.array(["a", "a", "b"], dtype=object)


def algorithm(**editalign):
    return OmegaConf.create({"adv_estimator": ESTIMATOR_NAME, "norm_adv_by_std_in_grpo": True,
                             **({"editalign": editalign} if editalign else {})})


def test_hand_computed_reward_to_go():
    adv, returns = compute_editalign_dense_group_advantage(
        REWARDS, MASK, INDEX, algorithm(token_coef=0.5))
    # Outcome R = (1, 3 | 2): group a has mean 2, unbiased std √2; b is one row → 0.
    out = 1 / (math.sqrt(2) + EPS)
    # Reward-to-go: row 0 (1, 0), row 1 (3, 2, 1); group a's tokens {1, 0, 3, 2, 1}: mean 1.4,
    # unbiased std √1.3. Row 2's one token is its group's mean → 0.
    tok = math.sqrt(1.3) + EPS
    expected = torch.tensor([
        [-out + 0.5 * (1 - 1.4) / tok, -out + 0.5 * (0 - 1.4) / tok, 0.0],
        [out + 0.5 * (3 - 1.4) / tok, out + 0.5 * (2 - 1.4) / tok, out + 0.5 * (1 - 1.4) / tok],
        [0.0, 0.0, 0.0],
    ])
    torch.testing.assert_close(adv, expected, rtol=1e-6, atol=1e-6)
    assert returns is adv


def test_hand_computed_reward_term_and_dr_grpo_scale():
    # norm_adv_by_std_in_grpo=False is verl's Dr. GRPO switch: only centring, both terms.
    config = OmegaConf.create({"norm_adv_by_std_in_grpo": False,
                               "editalign": {"token_coef": 2.0, "token_term": "reward"}})
    adv, _ = compute_editalign_dense_group_advantage(REWARDS, MASK, INDEX, config)
    # Group a: outcome mean 2; token rewards {1, 0, 1, 1, 1}, mean 0.8.
    expected = torch.tensor([[-1 + 2 * 0.2, -1 + 2 * -0.8, 0.0],
                             [1 + 2 * 0.2, 1 + 2 * 0.2, 1 + 2 * 0.2],
                             [0.0, 0.0, 0.0]])
    torch.testing.assert_close(adv, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("settings", [
    {}, {"token_coef": 0.0}, {"token_coef": 0.3, "token_term": "reward", "scale": "batch"},
    {"scale": "none", "eps": 1e-6},
])
def test_bit_for_bit_with_editalign_through_verls_dispatch(settings):
    generator = torch.Generator().manual_seed(0)
    n, width = 12, 9
    lengths = torch.randint(1, width + 1, (n,), generator=generator)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    rewards = torch.randn(n, width, generator=generator) * mask
    index = np.array([f"uid-{i % 4}" for i in range(n)], dtype=object)  # interleaved groups
    data = DataProto.from_dict(tensors={"token_level_rewards": rewards, "response_mask": mask},
                               non_tensors={"uid": index})
    got = compute_advantage(data, adv_estimator=ESTIMATOR_NAME, config=algorithm(**settings))
    defaults = {"token_coef": 1.0, "token_term": "reward_to_go", "scale": "group", "eps": 1e-4}
    want = dense_group_advantages(rewards.sum(-1), rewards, mask,
                                  torch.tensor([i % 4 for i in range(n)]),
                                  **{**defaults, **settings})
    assert torch.equal(got.batch["advantages"], want)
    assert torch.equal(got.batch["returns"], want)
    assert get_adv_estimator_fn(ESTIMATOR_NAME) is compute_editalign_dense_group_advantage


def test_outcome_term_is_verls_grpo_with_its_epsilon():
    generator = torch.Generator().manual_seed(1)
    mask = torch.ones(8, 5, dtype=torch.long)
    mask[::3, 3:] = 0
    rewards = torch.randn(8, 5, generator=generator) * mask
    index = np.array([f"p{i // 4}" for i in range(8)], dtype=object)
    ours, _ = compute_editalign_dense_group_advantage(
        rewards, mask, index, algorithm(token_coef=0.0, eps=1e-6))
    theirs, _ = compute_grpo_outcome_advantage(rewards, mask, index, epsilon=1e-6)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match=r"unknown keys.*'lambda'"):
        compute_editalign_dense_group_advantage(REWARDS, MASK, INDEX, algorithm(**{"lambda": 1}))
    with pytest.raises(ValueError, match="unknown scale 'std'"):
        compute_editalign_dense_group_advantage(REWARDS, MASK, INDEX, algorithm(scale="std"))
