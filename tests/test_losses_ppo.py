import math

import pytest
import torch

from editalign.losses import (
    gae,
    kl_per_token,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    shape_rewards,
    whiten,
)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_gae_hand_computed():
    # γ = 0.9, λ = 0.8: δ2 = 2 − 1.5 = 0.5; δ1 = 0.9·1.5 − 1 = 0.35; δ0 = 1 + 0.9 − 0.5 = 1.4
    # Â2 = 0.5; Â1 = 0.35 + 0.72·0.5 = 0.71; Â0 = 1.4 + 0.72·0.71 = 1.9112
    adv, ret = gae(t([1.0, 0.0, 2.0]), t([0.5, 1.0, 1.5]), torch.ones(1, 3), gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, t([1.9112, 0.71, 0.5]))
    torch.testing.assert_close(ret, t([2.4112, 1.71, 2.0]))


def test_gae_ignores_padding_after_the_last_token():
    mask = torch.tensor([[1, 1, 0]])
    adv, ret = gae(t([1.0, 2.0, 99.0]), t([0.5, 1.0, 77.0]), mask, gamma=1.0, lam=1.0)
    # Â1 = 2 − 1 = 1; Â0 = 1 + 1 − 0.5 + 1 = 2.5
    torch.testing.assert_close(adv, t([2.5, 1.0, 0.0]))
    torch.testing.assert_close(ret, t([3.0, 2.0, 0.0]))


def test_gae_with_gamma_lambda_one_is_monte_carlo_return_minus_value():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    lengths = torch.tensor([7, 5, 1, 3])
    mask = (torch.arange(7)[None] < lengths[:, None]).float()
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    future = torch.flip(torch.cumsum(torch.flip(rewards * mask, [1]), 1), [1])
    torch.testing.assert_close(ret, future * mask)
    torch.testing.assert_close(adv, (future - values) * mask)


def test_kl_estimators_hand_computed():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -1.0])
    torch.testing.assert_close(kl_per_token(lp, ref, "k1"), torch.tensor([1.0, -1.0]))
    # k3 = (r − 1) − log r, r = π_ref/π_θ: r = e^−1 → e^−1 − 1 + 1; r = e → e − 1 − 1
    torch.testing.assert_close(kl_per_token(lp, ref, "k3"),
                               torch.tensor([math.exp(-1), math.e - 2.0]))
    with pytest.raises(ValueError, match="allowed: k1, k3"):
        kl_per_token(lp, ref, "k2")


def test_kl_estimators_are_unbiased_for_sampled_tokens():
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    exact = float((p * (p / q).log()).sum())
    g = torch.Generator().manual_seed(0)
    samples = torch.multinomial(p, 200_000, replacement=True, generator=g)
    lp, ref = p.log()[samples], q.log()[samples]
    k1, k3 = kl_per_token(lp, ref, "k1"), kl_per_token(lp, ref, "k3")
    assert abs(float(k1.mean()) - exact) < 0.01
    assert abs(float(k3.mean()) - exact) < 0.01
    assert float(k3.min()) >= 0.0


def test_reward_placement_dense_and_sparse_share_one_path():
    mask = torch.tensor([[1, 1, 1, 0]])
    kl = t([0.5, -0.5, 1.0, 9.0])
    sparse = t([0.0, 0.0, 3.0, 0.0])  # sequence RM: the last response token
    dense = t([1.0, 1.0, 1.0, 0.0])  # token RM: every token
    torch.testing.assert_close(shape_rewards(sparse, kl, mask, 0.1), t([-0.05, 0.05, 2.9, 0.0]))
    torch.testing.assert_close(shape_rewards(dense, kl, mask, 0.1), t([0.95, 1.05, 0.9, 0.0]))


def test_policy_loss_clips_hand_computed():
    old = torch.zeros(1, 2, dtype=torch.float64)
    new = torch.full((1, 2), math.log(1.5), dtype=torch.float64)
    out = ppo_policy_loss(new, old, t([1.0, -1.0]), torch.ones(1, 2), clip=0.2)
    # Â = +1: max(−1.5, −1.2) = −1.2 (clipped); Â = −1: max(1.5, 1.2) = 1.5 (not clipped)
    torch.testing.assert_close(out.loss, torch.tensor(0.15, dtype=torch.float64))
    torch.testing.assert_close(out.clip_fraction, torch.tensor(0.5, dtype=torch.float64))
    assert float(out.approx_kl) == pytest.approx(0.5 * math.log(1.5) ** 2)


def test_policy_loss_gradient_vanishes_where_clipped():
    new = torch.full((1, 2), math.log(1.5), dtype=torch.float64, requires_grad=True)
    ppo_policy_loss(new, torch.zeros(1, 2, dtype=torch.float64), t([1.0, -1.0]),
                    torch.ones(1, 2)).loss.backward()
    assert new.grad[0, 0] == 0.0  # clipped: no push beyond 1 + ε
    assert new.grad[0, 1] == pytest.approx(0.5 * 1.5)  # d/dlogπ of ½·(−Â·ρ) with Â = −1


def test_value_loss_hand_computed():
    loss, frac = ppo_value_loss(t([2.0, 3.0]), t([1.0, 3.0]), t([3.0, 3.5]), torch.ones(1, 2),
                                clip=0.2)
    # first: max((2−3)², (1.2−3)²) = 3.24; second: max(0.25, 0.25) = 0.25 → ½·mean = 0.8725
    torch.testing.assert_close(loss, torch.tensor(0.8725, dtype=torch.float64))
    torch.testing.assert_close(frac, torch.tensor(0.5, dtype=torch.float64))


def test_whiten_and_masked_mean():
    x = t([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([[1, 1, 1, 0]])
    w = whiten(x, mask)
    assert float(masked_mean(w, mask)) == pytest.approx(0.0, abs=1e-9)
    assert float(masked_mean(w**2, mask)) == pytest.approx(1.0, abs=1e-6)
    assert float(w[0, 3]) == 0.0
    assert float(masked_mean(x, torch.zeros(1, 4))) == 0.0  # empty mask: 0, not NaN
