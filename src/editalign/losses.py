"""Losses and estimators as pure tensor functions, independent of any trainer.

Every function here is tested against hand-computed values (tests/test_losses*.py) and,
where a reference implementation exists (TRL), against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from editalign.options import check_choice

# ----------------------------------------------------------------------------- FIGA (docs/methods.md §2)

FIGA_GATES = ("le", "band", "none")
FIGA_NEGATIVES = ("likelihood", "unlikelihood")
FIGA_NORMALIZE = ("eligible", "active")
# Edit label codes (editalign.data.align.Label) and the ignore index, repeated here so that
# this module stays free of data-layer imports.
_IGNORE, _ADDED, _SUBSTITUTED, _DELETED = -100, 1, 2, 3


def figa_weights(edit_labels: Tensor, revised: Tensor, final_eos: Tensor, *, alpha: float,
                 beta: float, gamma: float) -> Tensor:
    """Static FIGA weight of every token, before the gate (docs/methods.md §2).

    Args:
        edit_labels: edit label of each token (``Label`` code, ``-100`` on prompt/padding).
        revised: bool, same shape: the token belongs to the revised response ỹ.
        final_eos: bool, same shape: the token is the final EOS of its response.

    Returns ``α`` on A(ỹ) (added, substituted, final EOS), ``γ`` on the other revised
    response tokens, ``-β`` on D(ŷ) (deleted and substituted original tokens, EOS
    excluded) and 0 elsewhere. The gate is applied later, on the current loss.
    """
    response = edit_labels != _IGNORE
    changed = (edit_labels == _ADDED) | (edit_labels == _SUBSTITUTED)
    in_a = revised & response & (changed | final_eos)
    in_d = ~revised & response & ~final_eos & ((edit_labels == _DELETED)
                                               | (edit_labels == _SUBSTITUTED))
    w = torch.zeros(edit_labels.shape, dtype=torch.float32, device=edit_labels.device)
    w = torch.where(revised & response, torch.where(in_a, alpha, gamma), w)
    return torch.where(in_d, -beta, w)


def figa_gate(nll: Tensor, gate: str, tau: float) -> Tensor:
    """Where the negative term may act, given the current per-token loss ``nll`` = −log p.

    ``le``: ℓ ≤ τ (official code); ``band``: τ ≤ ℓ ≤ 1 (earlier release); ``none``: always.
    """
    check_choice("gate", gate, FIGA_GATES)
    if gate == "le":
        return nll <= tau
    if gate == "band":
        return (nll >= tau) & (nll <= 1.0)
    return torch.ones_like(nll, dtype=torch.bool)


@dataclass
class FigaLoss:
    """The loss and its parts (all sums are over the batch, before normalisation)."""

    loss: Tensor
    positive: Tensor  # Σ w·ℓ over w > 0
    negative: Tensor  # Σ of the gated negative term (≤ 0 for likelihood, ≥ 0 for unlikelihood)
    num_items: Tensor  # the normaliser used
    gate_open: Tensor  # how many D(ŷ) tokens passed the gate
    gate_total: Tensor  # how many D(ŷ) tokens had a nonzero weight


def figa_loss_from_nll(nll: Tensor, weights: Tensor, *, tau: float = 0.6, gate: str = "le",
                       negative: str = "likelihood", normalize: str = "eligible",
                       num_items: Tensor | int | None = None) -> FigaLoss:
    """FIGA loss from per-token losses ℓ_t = −log p and static weights (:func:`figa_weights`).

    L = (Σ_{w>0} w·ℓ + Σ_{w<0, gate open} neg) / N, where neg is w·ℓ (``likelihood``: pushes
    log p down) or |w|·(−log(1 − p)) (``unlikelihood``). The gate is evaluated on the
    detached ℓ. N is ``num_items`` when given, else counted on this batch:

    - ``eligible``: #{t: w_t ≠ 0} with the static weights, so a D(ŷ) token closed by the
      gate still counts. N is then a property of the data, known before the forward pass:
      the trainer passes the count over the whole accumulated, all-rank batch, and
      gradient accumulation and data parallelism give exactly the big-batch loss.
    - ``active``: #{t: w_t ≠ 0} after the gate, per batch (the official code's normaliser). It
      depends on the current losses, so it cannot be known for a whole accumulated batch.

    N = 0 gives a loss of 0 (with a gradient graph), never NaN.
    """
    check_choice("negative", negative, FIGA_NEGATIVES)
    check_choice("normalize", normalize, FIGA_NORMALIZE)
    nll = nll.float()
    zero = torch.zeros_like(nll)
    pos_mask = weights > 0
    neg_mask = weights < 0
    open_ = neg_mask & figa_gate(nll.detach(), gate, tau)
    positive = torch.where(pos_mask, weights * nll, zero).sum()
    if negative == "likelihood":
        neg_term = weights * nll
    else:
        # −log(1 − p) with p = exp(−ℓ); 1 − p = −expm1(−ℓ), clamped away from 0.
        neg_term = -weights * -torch.log((-torch.expm1(-nll)).clamp(min=1e-12))
    neg_sum = torch.where(open_, neg_term, zero).sum()
    if num_items is None:
        num_items = (pos_mask | open_).sum() if normalize == "active" else (weights != 0).sum()
    n = torch.as_tensor(num_items, device=nll.device, dtype=torch.float32)
    loss = (positive + neg_sum) / n.clamp(min=1)
    return FigaLoss(loss=loss, positive=positive.detach(), negative=neg_sum.detach(),
                    num_items=n, gate_open=open_.sum(), gate_total=neg_mask.sum())


def figa_loss(logits: Tensor, targets: Tensor, edit_labels: Tensor, revised: Tensor,
              final_eos: Tensor, *, alpha: float = 1.0, beta: float = 0.5, gamma: float = 0.0,
              tau: float = 0.6, gate: str = "le", negative: str = "likelihood",
              normalize: str = "eligible", num_items: Tensor | int | None = None) -> FigaLoss:
    """FIGA loss from logits (docs/methods.md §2); the reference the fused trainer path is tested against.

    All tensors are aligned per predicted token: ``logits[..., t, :]`` scores
    ``targets[..., t]``, whose edit label, side and EOS flag are ``edit_labels[..., t]``,
    ``revised[..., t]``, ``final_eos[..., t]`` (for a causal LM: logits of positions
    ``0..T-2`` and the inputs, labels and flags of positions ``1..T-1``).
    """
    weights = figa_weights(edit_labels, revised, final_eos, alpha=alpha, beta=beta, gamma=gamma)
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(),
                          targets.reshape(-1).clamp(min=0), reduction="none").view(targets.shape)
    return figa_loss_from_nll(nll, weights, tau=tau, gate=gate, negative=negative,
                              normalize=normalize, num_items=num_items)


# ----------------------------------------------------------------------------- reward models (docs/methods.md §3)

REWARD_OBJECTIVES = ("token_cls", "edit_bt", "seq_bt", "seq_bt_last")
REWARD_TRANSFORMS = ("sigmoid", "identity")


def token_rewards(logits: Tensor, transform: str) -> Tensor:
    """Token rewards from the head's outputs z: ``sigmoid`` gives 2σ(z) − 1 ∈ (−1, 1)
    (``token_cls``), ``identity`` gives z (Bradley-Terry objectives, as TRL's reward models)."""
    check_choice("reward transform", transform, REWARD_TRANSFORMS)
    return 2 * torch.sigmoid(logits) - 1 if transform == "sigmoid" else logits


def last_response_token(edit_labels: Tensor) -> Tensor:
    """Bool mask of the last labelled position of each row (its final EOS unless truncated)."""
    labelled = edit_labels != _IGNORE
    last = labelled.long().cumsum(-1).argmax(-1, keepdim=True)  # first index of the maximum
    mask = torch.zeros_like(labelled).scatter_(-1, last, True)
    return mask & labelled


def edit_masks(edit_labels: Tensor, revised: Tensor) -> Tensor:
    """A(ỹ) on revised rows (added, substituted, final token) and D(ŷ) on original rows
    (deleted, substituted; final EOS excluded). ``revised`` is a per-row bool of shape (B,)."""
    changed_r = (edit_labels == _ADDED) | (edit_labels == _SUBSTITUTED)
    changed_o = (edit_labels == _DELETED) | (edit_labels == _SUBSTITUTED)
    last = last_response_token(edit_labels)
    rev = revised[:, None]
    return torch.where(rev, changed_r | last, changed_o & ~last)


def token_cls_targets(edit_labels: Tensor, revised: Tensor, *, equal_weight: float = 0.0
                      ) -> tuple[Tensor, Tensor]:
    """Targets and weights of ``token_cls``: 1 on added/substituted tokens of ỹ, 0 on
    deleted/substituted tokens of ŷ (weight 1), 0.5 with weight λ_eq on ``equal`` tokens
    (EOS included), weight 0 on prompt and padding."""
    rev = revised[:, None]
    good = rev & ((edit_labels == _ADDED) | (edit_labels == _SUBSTITUTED))
    bad = ~rev & ((edit_labels == _DELETED) | (edit_labels == _SUBSTITUTED))
    equal = (edit_labels != _IGNORE) & ~good & ~bad
    targets = torch.where(good, 1.0, torch.where(bad, 0.0, 0.5))
    weights = torch.where(good | bad, 1.0, torch.where(equal, float(equal_weight), 0.0))
    return targets, weights


def token_cls_loss(logits: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
    """Weighted per-token binary cross-entropy on logits: Σ w·BCE(z, y) / Σ w (0 if Σ w = 0)."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
    return (weights * bce).sum() / weights.sum().clamp(min=1e-12)


def edit_bt_loss(revised_rewards: Tensor, added: Tensor, original_rewards: Tensor,
                 deleted: Tensor) -> Tensor:
    """Bradley-Terry on the edited tokens: mean of −log σ(Σ_{A(ỹ)} r − Σ_{D(ŷ)} r) over pairs."""
    margin = (revised_rewards * added).sum(-1) - (original_rewards * deleted).sum(-1)
    return -F.logsigmoid(margin.float()).mean()


def sequence_scores(rewards: Tensor, mask: Tensor, reduce: str = "sum") -> Tensor:
    """One score per row: the sum of the rewards under ``mask`` or the reward at its last
    position (``last``: an ordinary sequence-level reward model read at the final token)."""
    check_choice("reduce", reduce, ("sum", "last"))
    if reduce == "sum":
        return (rewards * mask).sum(-1)
    last = mask.long().cumsum(-1).argmax(-1, keepdim=True)
    return rewards.gather(-1, last).squeeze(-1)


def seq_bt_loss(chosen: Tensor, rejected: Tensor, *, margin: Tensor | None = None,
                center_coefficient: float | None = None) -> Tensor:
    """Bradley-Terry on sequence scores, exactly as TRL's ``RewardTrainer.compute_loss``:
    −log σ(s⁺ − s⁻ [− margin]) averaged, plus ``center_coefficient``·mean((s⁺ + s⁻)²)."""
    diff = chosen.float() - rejected.float()
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()
    if center_coefficient is not None:
        loss = loss + center_coefficient * torch.mean((chosen.float() + rejected.float()) ** 2)
    return loss


def parse_objectives(spec: str | dict[str, float]) -> dict[str, float]:
    """``"token_cls"`` or ``"token_cls=1,edit_bt=0.5"`` (or a dict) → {objective: weight}."""
    if isinstance(spec, dict):
        weights = {str(k): float(v) for k, v in spec.items()}
    else:
        weights = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, _, value = part.partition("=")
            weights[name.strip()] = float(value) if value else 1.0
    for name in weights:
        check_choice("reward objective", name, REWARD_OBJECTIVES)
    if not weights or not any(w > 0 for w in weights.values()):
        raise ValueError(f"no reward objective with a positive weight in {spec!r}")
    return weights


def default_transform(objectives: dict[str, float]) -> str:
    """``sigmoid`` rewards when ``token_cls`` takes part (its targets are probabilities), else raw."""
    return "sigmoid" if objectives.get("token_cls", 0) > 0 else "identity"


def reward_model_loss(logits: Tensor, edit_labels: Tensor, objectives: dict[str, float], *,
                      transform: str, equal_weight: float = 0.0,
                      center_coefficient: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of the reward objectives on a paired batch (docs/methods.md §3).

    ``logits``/``edit_labels``: (2B, L), the B revised sides first, then the B original
    sides (row i and row B + i are one pair). Returns the total and each objective's loss.
    """
    n = logits.size(0) // 2
    revised = torch.arange(2 * n, device=logits.device) < n
    bt = any(w and name != "token_cls" for name, w in objectives.items())
    rewards = token_rewards(logits.float(), transform) if bt else logits
    parts: dict[str, Tensor] = {}
    for name, weight in objectives.items():
        if weight == 0:
            continue
        if name == "token_cls":
            targets, w = token_cls_targets(edit_labels, revised, equal_weight=equal_weight)
            parts[name] = token_cls_loss(logits, targets, w)
        elif name == "edit_bt":
            masks = edit_masks(edit_labels, revised)
            parts[name] = edit_bt_loss(rewards[:n], masks[:n], rewards[n:], masks[n:])
        else:
            response = edit_labels != _IGNORE
            reduce = "last" if name == "seq_bt_last" else "sum"
            scores = sequence_scores(rewards, response, reduce)
            parts[name] = seq_bt_loss(scores[:n], scores[n:],
                                      center_coefficient=center_coefficient)
    total = sum(objectives[k] * v for k, v in parts.items())
    return total, parts  # type: ignore[return-value]



# ----------------------------------------------------------------------------- PPO (docs/methods.md §4)

KL_ESTIMATORS = ("k1", "k3")


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean over the positions where ``mask`` is true (0 where there are none, never NaN)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def whiten(values: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise to unit variance (and zero mean) over the masked positions."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(values.dtype)


def kl_per_token(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(π_θ ‖ π_ref) from log-probabilities of sampled tokens.

    ``k1`` = log π_θ − log π_ref (unbiased, can be negative); ``k3`` = (r − 1) − log r with
    r = π_ref/π_θ (unbiased, always ≥ 0, lower variance; Schulman's approximation).
    """
    check_choice("kl estimator", estimator, KL_ESTIMATORS)
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    return torch.expm1(-log_ratio) + log_ratio


def shape_rewards(token_rewards: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """r_t = −β_KL·KL_t + reward_t on response tokens (docs/methods.md §4).

    ``token_rewards`` is the reward source's (batch, response length) tensor: a
    sequence-level model fills only the last response token, a token-level one every
    token. Dense and sparse PPO differ only in that tensor.
    """
    return (token_rewards - kl_coef * kl) * mask.to(kl.dtype)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over right-padded responses.

    δ_t = r_t + γ·V_{t+1} − V_t and Â_t = δ_t + γλ·Â_{t+1}, with V and Â zero after the
    last response token. Returns (advantages, returns = Â + V), zero on padding.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


@dataclass
class PPOLoss:
    loss: Tensor
    clip_fraction: Tensor
    approx_kl: Tensor  # mean of ½(log π_old − log π_θ)², a step-size diagnostic


def ppo_policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                    *, clip: float = 0.2) -> PPOLoss:
    """Clipped surrogate: mean over tokens of max(−Â·ρ, −Â·clip(ρ, 1−ε, 1+ε))."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
    return PPOLoss(loss, clip_fraction.detach(), masked_mean(0.5 * log_ratio.detach() ** 2, mask))


def ppo_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
                   *, clip: float = 0.2) -> tuple[Tensor, Tensor]:
    """Clipped value loss ½·max((V − R)², (clip(V, V_old ± ε) − R)²); returns (loss, clip fraction)."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).to(values.dtype), mask).detach()


# ----------------------------------------------------------------------------- dense group advantages (docs/methods.md §4b)

GROUP_SCALES = ("group", "batch", "none")
TOKEN_TERMS = ("reward_to_go", "reward")


def _group_members(group_ids: Tensor) -> list[Tensor]:
    """The row indices of each group, for arbitrary ids (TRL's ``arange(N) // G``, verl's
    prompt uids), in order of first appearance."""
    ids = group_ids.tolist()
    first: dict[object, list[int]] = {}
    for row, gid in enumerate(ids):
        first.setdefault(gid, []).append(row)
    return [torch.tensor(rows, device=group_ids.device) for rows in first.values()]


def _group_stats(values: Tensor, members: list[Tensor], valid: Tensor | None = None
                 ) -> tuple[Tensor, Tensor]:
    """Per-row mean and unbiased std of ``values`` over the row's group (``valid`` rows ×
    positions only, when given), broadcast back to ``values[:, 0]``'s shape.

    Computed with ``Tensor.mean``/``Tensor.std`` on each group, so contiguous groups of one
    size give TRL's ``view(-1, G).mean/std`` bit for bit. Fewer than two counted values: std 0.
    """
    n = values.shape[0]
    mean = values.new_zeros(n)
    std = values.new_zeros(n)
    if len(members) and valid is None and values.dim() == 1:
        sizes = {len(rows) for rows in members}
        contiguous = torch.equal(torch.cat(members), torch.arange(n, device=values.device))
        if len(sizes) == 1 and contiguous and next(iter(sizes)) > 1:
            grouped = values.view(-1, next(iter(sizes)))
            size = grouped.shape[1]
            return (grouped.mean(dim=1).repeat_interleave(size),
                    grouped.std(dim=1).repeat_interleave(size))
    for rows in members:
        picked = values[rows] if valid is None else values[rows][valid[rows]]
        if picked.numel() == 0:
            continue
        mean[rows] = picked.mean()
        std[rows] = picked.std() if picked.numel() > 1 else picked.new_zeros(())
    return mean, std


def reward_to_go(token_rewards: Tensor, mask: Tensor) -> Tensor:
    """G_t = Σ_{s ≥ t} r_s over each row's response tokens (γ = 1), zero on padding."""
    rewards = token_rewards * mask.to(token_rewards.dtype)
    return rewards.flip(-1).cumsum(-1).flip(-1) * mask.to(token_rewards.dtype)


def dense_group_advantages(sequence_rewards: Tensor, token_rewards: Tensor | None, mask: Tensor,
                           group_ids: Tensor, *, token_coef: float = 1.0,
                           token_term: str = "reward_to_go", scale: str = "group",
                           eps: float = 1e-4) -> Tensor:
    """Per-token advantages for a group method (GRPO) from an outcome reward and token rewards.

    A_{i,t} = (R_i − mean_g R) / (std_g R + eps) + λ·(u_{i,t} − mean_g u) / (std_g u + eps)

    where g is row i's group (rows with one ``group_ids`` value: the completions of one
    prompt), R the (N,) ``sequence_rewards``, u the token term built from the (N, T)
    ``token_rewards``: the reward itself (``"reward"``) or its reward-to-go
    (``"reward_to_go"``), its mean and std taken over all response tokens of the group.
    ``scale``: ``"group"`` divides by the group's std (GRPO), ``"batch"`` by the batch's
    (TRL's ``scale_rewards="batch"``), ``"none"`` only centres (Dr. GRPO); the token term
    follows the same rule (``"batch"`` → the std over every response token of the batch).
    Stds are unbiased (``torch.std``) and ``eps`` is added to the std, as TRL does, so with
    ``token_coef = 0`` or ``token_rewards = None`` the result is TRL's GRPO advantage,
    broadcast over the response. A group of one row has advantage 0 from its outcome.
    Returns an (N, T) tensor, exactly 0 where ``mask`` is 0.
    """
    check_choice("scale", scale, GROUP_SCALES)
    check_choice("token term", token_term, TOKEN_TERMS)
    if sequence_rewards.dim() != 1 or mask.dim() != 2 or mask.shape[0] != sequence_rewards.shape[0]:
        raise ValueError(f"expected sequence rewards (N,) and mask (N, T); got "
                         f"{tuple(sequence_rewards.shape)} and {tuple(mask.shape)}")
    members = _group_members(group_ids)
    valid = mask.to(sequence_rewards.dtype)
    mean, std = _group_stats(sequence_rewards, members)
    outcome = sequence_rewards - mean
    if scale == "group":
        outcome = outcome / (std + eps)
    elif scale == "batch":
        outcome = outcome / (sequence_rewards.std() + eps)
    advantages = outcome[:, None] * valid
    if token_rewards is None or token_coef == 0:
        return advantages
    return advantages + token_coef * group_token_term(
        token_rewards.to(sequence_rewards.dtype), mask, group_ids, token_term=token_term, scale=scale, eps=eps)


def group_token_term(token_rewards: Tensor, mask: Tensor, group_ids: Tensor, *,
                     token_term: str = "reward_to_go", scale: str = "group",
                     eps: float = 1e-4) -> Tensor:
    """The token term of :func:`dense_group_advantages`, (u − mean_g u) / (std_g u + eps).

    u is ``token_rewards`` (``"reward"``) or its reward-to-go (``"reward_to_go"``); mean and
    std over every response token (``mask``) of row i's group; ``scale`` as there. A trainer
    that already has the outcome term (TRL's GRPO advantage) adds λ times this. (N, T), 0
    where ``mask`` is 0.
    """
    check_choice("scale", scale, GROUP_SCALES)
    check_choice("token term", token_term, TOKEN_TERMS)
    if token_rewards.shape != mask.shape:
        raise ValueError(f"token rewards {tuple(token_rewards.shape)} and mask "
                         f"{tuple(mask.shape)} differ in shape")
    members = _group_members(group_ids)
    valid = mask.to(token_rewards.dtype)
    term = reward_to_go(token_rewards, mask) if token_term == "reward_to_go" else token_rewards
    token_mean, token_std = _group_stats(term, members, mask.bool())
    centred = term - token_mean[:, None]
    if scale == "group":
        centred = centred / (token_std[:, None] + eps)
    elif scale == "batch":
        picked = term[mask.bool()]
        centred = centred / ((picked.std() if picked.numel() > 1 else 0.0) + eps)
    return centred * valid
