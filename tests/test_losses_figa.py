"""FIGA loss as a pure function: hand-computed values on a fixed logits tensor (METHODS §2)."""

import math

import pytest
import torch

from editalign.data.align import IGNORE, Label
from editalign.losses import figa_gate, figa_loss, figa_weights

EQ, ADD, SUB, DEL = (int(x) for x in (Label.EQUAL, Label.ADDED, Label.SUBSTITUTED, Label.DELETED))
LN2, LN3 = math.log(2), math.log(3)

# Two classes, target always 0, so ℓ = log(1 + exp(-x)) for logits [x, 0]:
# x = ln 3 gives p = 3/4, ℓ = ln(4/3); x = 0 gives ℓ = ln 2; x = -ln 3 gives p = 1/4, ℓ = ln 4.
HIGH, HALF, LOW = LN3, 0.0, -LN3
# Row 0 (revised):  prompt, r1 equal (ℓ=ln2), r2 added (ℓ=ln4), r3 final EOS (ℓ=ln 4/3).
# Row 1 (original): prompt, o1 deleted (ℓ=ln 4/3), o2 substituted (ℓ=ln2), o3 final EOS.
X = torch.tensor([[HALF, HALF, LOW, HIGH], [HALF, HIGH, HALF, LOW]])
EDIT = torch.tensor([[IGNORE, EQ, ADD, EQ], [IGNORE, DEL, SUB, EQ]])
REVISED = torch.tensor([[True] * 4, [False] * 4])
EOS = torch.tensor([[False, False, False, True], [False, False, False, True]])


def logits():
    return torch.stack([X, torch.zeros_like(X)], dim=-1).requires_grad_()


def loss(**kw):
    kw = {"alpha": 1.0, "beta": 0.5, "gamma": 0.25, "tau": 0.6, **kw}
    return figa_loss(logits(), torch.zeros_like(EDIT), EDIT, REVISED, EOS, **kw)


def test_weights_follow_the_edit_sets():
    w = figa_weights(EDIT, REVISED, EOS, alpha=1.0, beta=0.5, gamma=0.25)
    # A(ỹ) = {added, final EOS} get α, other revised tokens γ; D(ŷ) = {deleted,
    # substituted} get -β, the original's EOS and every prompt position 0.
    assert w.tolist() == [[0, 0.25, 1, 1], [0, -0.5, -0.5, 0]]


def test_hand_computed_default_gate_likelihood():
    out = loss()
    # positive: .25·ln2 + ln4 + ln(4/3) = 4.25 ln2 − ln3; gate ℓ ≤ 0.6 opens o1 only (ℓ = ln 4/3
    # ≈ 0.29; o2 has ln2 ≈ 0.69): negative −.5·ln(4/3). Five eligible tokens (o2 counts).
    expected = (4.25 * LN2 - LN3 - 0.5 * (2 * LN2 - LN3)) / 5
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.num_items.item() == 5 and out.gate_open.item() == 1 and out.gate_total.item() == 2


def test_active_normalisation_counts_only_open_tokens():
    expected = (4.25 * LN2 - LN3 - 0.5 * (2 * LN2 - LN3)) / 4
    assert loss(normalize="active").loss.item() == pytest.approx(expected, rel=1e-6)


def test_hand_computed_unlikelihood():
    # o1 open, p = 3/4: β·(−log(1 − p)) = .5·ln4 = ln2.
    expected = (4.25 * LN2 - LN3 + LN2) / 5
    assert loss(negative="unlikelihood").loss.item() == pytest.approx(expected, rel=1e-6)


def test_hand_computed_band_and_no_gate():
    # band τ ≤ ℓ ≤ 1 opens o2 (ln2) and closes o1 (ln 4/3 < τ).
    band = (4.25 * LN2 - LN3 - 0.5 * LN2) / 5
    assert loss(gate="band").loss.item() == pytest.approx(band, rel=1e-6)
    none = (4.25 * LN2 - LN3 - 0.5 * (2 * LN2 - LN3) - 0.5 * LN2) / 5
    assert loss(gate="none").loss.item() == pytest.approx(none, rel=1e-6)


def test_num_items_overrides_the_normaliser():
    assert loss(num_items=10).loss.item() == pytest.approx(loss().loss.item() * 5 / 10, rel=1e-6)


@pytest.mark.parametrize(("gate", "values", "expected"), [
    ("le", [0.6 - 1e-4, 0.6, 0.6 + 1e-4], [True, True, False]),
    ("band", [0.6 - 1e-4, 0.6, 0.6 + 1e-4, 1.0, 1.0 + 1e-4], [False, True, True, True, False]),
    ("none", [0.0, 0.6, 50.0], [True, True, True]),
])
def test_gate_at_and_around_tau(gate, values, expected):
    assert figa_gate(torch.tensor(values, dtype=torch.float64), gate, 0.6).tolist() == expected


def test_closed_gate_gives_no_gradient_to_that_token():
    x = logits()
    figa_loss(x, torch.zeros_like(EDIT), EDIT, REVISED, EOS, alpha=1.0, beta=0.5,
              gamma=0.25).loss.backward()
    assert x.grad[1, 2].abs().sum() == 0  # o2, gate closed
    assert x.grad[1, 1].abs().sum() > 0  # o1, gate open
    assert x.grad[1, 3].abs().sum() == 0 and x.grad[0, 0].abs().sum() == 0  # weight 0


def test_alpha_gamma_one_beta_zero_is_mean_nll_of_revised_response():
    out = loss(alpha=1.0, gamma=1.0, beta=0.0)
    assert out.loss.item() == pytest.approx((LN2 + 2 * LN2 + 2 * LN2 - LN3) / 3, rel=1e-6)


def test_no_weighted_token_gives_zero_not_nan():
    edit = torch.full_like(EDIT, IGNORE)
    x = logits()
    out = figa_loss(x, torch.zeros_like(edit), edit, REVISED, EOS)
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() == 0
    # Only gated-off negative tokens and active normalisation: 0 as well.
    only_closed = torch.tensor([[IGNORE] * 4, [IGNORE, IGNORE, SUB, IGNORE]])
    out = figa_loss(logits(), torch.zeros_like(EDIT), only_closed, REVISED, EOS,
                    normalize="active")
    assert out.loss.item() == 0.0 and out.num_items.item() == 0


def test_unknown_option_names_the_allowed_values():
    with pytest.raises(ValueError, match="allowed: le, band, none"):
        loss(gate="below")
    with pytest.raises(ValueError, match="allowed: likelihood, unlikelihood"):
        loss(negative="ul")
