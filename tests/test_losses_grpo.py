"""Dense group advantages (losses.dense_group_advantages) against hand-computed values."""

import pytest
import torch

from editalign.losses import dense_group_advantages, reward_to_go


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_reward_to_go_hand_computed():
    rewards = t([1.0, 2.0, 3.0, 9.0], [4.0, 5.0, 7.0, 7.0])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    torch.testing.assert_close(reward_to_go(rewards, mask), t([6.0, 5.0, 3.0, 0.0],
                                                              [9.0, 5.0, 0.0, 0.0]))


def test_outcome_only_is_grpo_hand_computed():
    # Group {0, 1}: R = 1, 3 → mean 2, unbiased std √2 → ∓1/(√2 + ε);
    # group {2, 3}: R = 5, 5 → std 0 → 0/ε = 0.
    rewards = t(1.0, 3.0, 5.0, 5.0)
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [0, 0]])
    adv = dense_group_advantages(rewards, None, mask, torch.tensor([0, 0, 1, 1]), eps=1e-4)
    s = 1 / (2 ** 0.5 + 1e-4)
    expected = t([-s, -s], [s, 0.0], [0.0, 0.0], [0.0, 0.0])
    torch.testing.assert_close(adv[:2], expected[:2])
    assert torch.all(adv[2:] == 0)


def test_token_term_hand_computed():
    # One group of two rows. Token rewards r = [[1, 0], [2, -]]; the reward term's group
    # tokens are {1, 0, 2}: mean 1, unbiased std 1 → [[0, −1], [1, 0]].
    # Outcome R = 0, 0 → 0 (std 0: 0/ε). λ = 0.5, ε = 1e-4 on the token std as well.
    token = t([1.0, 0.0], [2.0, 5.0])
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = dense_group_advantages(t(0.0, 0.0), token, mask, torch.tensor([7, 7]),
                                 token_coef=0.5, token_term="reward")
    torch.testing.assert_close(adv, t([0.0, -0.5], [0.5, 0.0]) / 1.0001)
    # Reward-to-go: u = [[1, 0], [2, -]] as well here (the first row's rest sums to 1, 0).
    rtg = dense_group_advantages(t(0.0, 0.0), token, mask, torch.tensor([7, 7]),
                                 token_coef=0.5, token_term="reward_to_go")
    torch.testing.assert_close(rtg, t([0.0, -0.5], [0.5, 0.0]) / 1.0001)


def test_scale_none_only_centres_and_batch_uses_the_batch_std():
    rewards = t(1.0, 3.0, 10.0, 14.0)
    mask = torch.ones(4, 1)
    ids = torch.tensor([0, 0, 1, 1])
    none = dense_group_advantages(rewards, None, mask, ids, scale="none")
    torch.testing.assert_close(none[:, 0], t(-1.0, 1.0, -2.0, 2.0))
    batch = dense_group_advantages(rewards, None, mask, ids, scale="batch", eps=0.0)
    torch.testing.assert_close(batch[:, 0], t(-1.0, 1.0, -2.0, 2.0) / rewards.std())


def test_equals_trl_grpo_advantages_bit_for_bit():
    # TRL 1.16 GRPOTrainer: mean/std over view(-1, G), advantages = (R − mean) / (std + 1e-4).
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(12, generator=g)
    grouped = rewards.view(-1, 4)
    mean = grouped.mean(dim=1).repeat_interleave(4)
    std = grouped.std(dim=1).repeat_interleave(4)
    trl = (rewards - mean) / (std + 1e-4)
    mask = torch.ones(12, 3)
    ours = dense_group_advantages(rewards, torch.randn(12, 3, generator=g), mask,
                                  torch.arange(12) // 4, token_coef=0.0)
    assert torch.equal(ours, trl[:, None].expand(12, 3))


def test_groups_need_not_be_contiguous_and_padding_is_exactly_zero():
    g = torch.Generator().manual_seed(1)
    rewards, token = torch.randn(6, generator=g), torch.randn(6, 5, generator=g)
    mask = (torch.rand(6, 5, generator=g) > 0.3).long()
    mask[:, 0] = 1
    ids = torch.tensor([0, 1, 0, 1, 0, 1])
    perm = torch.tensor([0, 2, 4, 1, 3, 5])
    adv = dense_group_advantages(rewards, token, mask, ids)
    sorted_adv = dense_group_advantages(rewards[perm], token[perm], mask[perm], ids[perm])
    torch.testing.assert_close(adv[perm], sorted_adv)
    assert torch.all(adv[mask == 0] == 0)


def test_singleton_group_has_zero_outcome_advantage():
    adv = dense_group_advantages(t(3.0), None, torch.ones(1, 2), torch.tensor([0]))
    assert torch.all(adv == 0)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="scale"):
        dense_group_advantages(t(1.0, 2.0), None, torch.ones(2, 1), torch.tensor([0, 0]),
                               scale="prompt")
    with pytest.raises(ValueError, match="differ in shape"):
        dense_group_advantages(t(1.0, 2.0), torch.ones(2, 3), torch.ones(2, 1),
                               torch.tensor([0, 0]))
