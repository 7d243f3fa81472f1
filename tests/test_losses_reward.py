"""Reward-model objectives (METHODS §3) against hand-computed values, and against TRL."""

import math

import pytest
import torch

from editalign.losses import (
    default_transform,
    edit_bt_loss,
    edit_masks,
    parse_objectives,
    reward_model_loss,
    seq_bt_loss,
    sequence_scores,
    token_cls_loss,
    token_cls_targets,
    token_rewards,
)

I = -100  # noqa: E741  (prompt / padding)
# METHODS §1 worked example, after a two-token prompt and padded to 8:
# ỹ labels [equal, substituted, equal, equal, added, equal(EOS)], ŷ [equal, substituted,
# equal, equal, equal(EOS)].
REVISED = [I, I, 0, 2, 0, 0, 1, 0]
ORIGINAL = [I, I, 0, 2, 0, 0, 0, I]
LABELS = torch.tensor([REVISED, ORIGINAL])
IS_REVISED = torch.tensor([True, False])


def test_edit_masks_are_a_and_d_of_the_worked_example():
    masks = edit_masks(LABELS, IS_REVISED)
    # A(ỹ) = {1, 4, 5} of the response (positions 3, 6, 7), D(ŷ) = {1} (position 3)
    assert masks[0].nonzero().flatten().tolist() == [3, 6, 7]
    assert masks[1].nonzero().flatten().tolist() == [3]


def test_token_cls_targets_and_weights():
    targets, weights = token_cls_targets(LABELS, IS_REVISED, equal_weight=0.25)
    assert weights[0].tolist() == [0, 0, 0.25, 1, 0.25, 0.25, 1, 0.25]
    assert weights[1].tolist() == [0, 0, 0.25, 1, 0.25, 0.25, 0.25, 0]
    assert targets[0, [3, 6]].tolist() == [1, 1]
    assert targets[1, 3].item() == 0
    assert targets[0, [2, 4, 5, 7]].tolist() == [0.5] * 4
    _, ignored = token_cls_targets(LABELS, IS_REVISED)
    assert ignored.sum().item() == 3  # only the changed tokens count when λ_eq = 0


def test_token_cls_loss_hand_computed():
    # BCE(z=0, y=1) = ln 2; BCE(z=ln 3, y=0) = −ln(1 − 3/4) = ln 4.
    logits = torch.tensor([0.0, math.log(3), 0.0])
    targets = torch.tensor([1.0, 0.0, 0.5])
    assert token_cls_loss(logits, targets, torch.tensor([1.0, 1.0, 0.0])).item() == \
        pytest.approx(1.5 * math.log(2))
    # an equal token (target 0.5, z = 0: BCE = ln 2) with weight 0.5
    assert token_cls_loss(logits, targets, torch.tensor([1.0, 1.0, 0.5])).item() == \
        pytest.approx(3.5 * math.log(2) / 2.5)
    assert token_cls_loss(logits, targets, torch.zeros(3)).item() == 0.0


def test_token_rewards_transforms():
    z = torch.tensor([0.0, math.log(3)])
    assert token_rewards(z, "sigmoid").tolist() == pytest.approx([0.0, 0.5])  # 2·3/4 − 1
    assert torch.equal(token_rewards(z, "identity"), z)
    with pytest.raises(ValueError, match="allowed: sigmoid, identity"):
        token_rewards(z, "tanh")


def test_edit_bt_loss_hand_computed():
    rewards = torch.tensor([[0.0, 0.0, 9.0, 0.5, 9.0, 9.0, 0.25, 0.25],
                            [0.0, 0.0, 9.0, -1.0, 9.0, 9.0, 9.0, 0.0]])
    masks = edit_masks(LABELS, IS_REVISED)
    # Σ_A r = 0.5 + 0.25 + 0.25 = 1, Σ_D r = −1: −log σ(2) = log(1 + e^−2)
    loss = edit_bt_loss(rewards[:1], masks[:1], rewards[1:], masks[1:])
    assert loss.item() == pytest.approx(math.log1p(math.exp(-2)))


def test_sequence_scores_sum_and_last():
    rewards = torch.tensor([[5.0, 1.0, 2.0, 7.0]])
    mask = torch.tensor([[False, True, True, False]])
    assert sequence_scores(rewards, mask, "sum").item() == 3.0
    assert sequence_scores(rewards, mask, "last").item() == 2.0


def test_seq_bt_loss_hand_computed_with_margin_and_centering():
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    plain = (math.log1p(math.exp(-1)) + math.log(2)) / 2
    assert seq_bt_loss(chosen, rejected).item() == pytest.approx(plain)
    # + 0.01 · mean((1 + 0)², (0 + 0)²) = 0.005
    assert seq_bt_loss(chosen, rejected, center_coefficient=0.01).item() == \
        pytest.approx(plain + 0.005)
    # margin 1 on the first pair: −log σ(0) = ln 2 for both
    assert seq_bt_loss(chosen, rejected, margin=torch.tensor([1.0, 0.0])).item() == \
        pytest.approx(math.log(2))


def test_reward_model_loss_is_the_weighted_sum_of_its_parts():
    torch.manual_seed(0)
    logits = torch.randn(2, 8)
    objectives = {"token_cls": 1.0, "edit_bt": 0.5, "seq_bt": 0.25, "seq_bt_last": 2.0}
    total, parts = reward_model_loss(logits, LABELS, objectives, transform="sigmoid",
                                     equal_weight=0.1)
    rewards = 2 * torch.sigmoid(logits) - 1
    masks = edit_masks(LABELS, IS_REVISED)
    response = LABELS != I
    expected = {
        "token_cls": token_cls_loss(logits, *token_cls_targets(LABELS, IS_REVISED,
                                                                equal_weight=0.1)),
        "edit_bt": edit_bt_loss(rewards[:1], masks[:1], rewards[1:], masks[1:]),
        "seq_bt": seq_bt_loss((rewards[0] * response[0]).sum()[None],
                              (rewards[1] * response[1]).sum()[None]),
        # last response token: position 7 of ỹ (its EOS), position 6 of ŷ
        "seq_bt_last": seq_bt_loss(rewards[0, 7:8], rewards[1, 6:7]),
    }
    for name, value in expected.items():
        assert parts[name].item() == pytest.approx(value.item(), rel=1e-6), name
    assert total.item() == pytest.approx(sum(objectives[k] * v.item()
                                             for k, v in expected.items()), rel=1e-6)


def test_parse_objectives():
    assert parse_objectives("token_cls") == {"token_cls": 1.0}
    assert parse_objectives("token_cls=1, edit_bt=0.5") == {"token_cls": 1.0, "edit_bt": 0.5}
    with pytest.raises(ValueError, match="unknown reward objective 'dpo'"):
        parse_objectives("dpo")
    with pytest.raises(ValueError, match="positive weight"):
        parse_objectives("edit_bt=0")
    assert default_transform({"token_cls": 1.0, "edit_bt": 1.0}) == "sigmoid"
    assert default_transform({"seq_bt_last": 1.0}) == "identity"
