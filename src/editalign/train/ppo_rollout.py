"""PPO's rollout batch and what reads it: the reward-source adapters, log-probabilities.

A :class:`Rollout` is one batch of sampled responses in the right-padded layout every model
reads (one row = prompt + response up to its first EOS + padding, with ``response_start``);
:func:`policy_logprobs` and :func:`gather_response` read a model's outputs at the response
tokens; :func:`select_rows` cuts a mini-batch. The trainer (:mod:`editalign.train.ppo`)
runs the four steps on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedTokenizerBase

import editalign.reward_sources as sources
from editalign.options import check_choice

# A reward source maps a right-padded batch to a (batch, response length) reward tensor:
# the sources of :mod:`editalign.reward_sources`, read in the layout PPO shapes
# (``ResponseScores.per_token``: a sequence score sits on the last response token).
RewardSource = Callable[[Tensor, Tensor, Tensor], Tensor]


def _per_token(source: sources.RewardSource) -> RewardSource:
    def score(input_ids: Tensor, attention_mask: Tensor, response_start: Tensor) -> Tensor:
        return source.score(input_ids, attention_mask, response_start).per_token()

    return score


def reward_model_source(reward_model: Any, kind: str = "token") -> RewardSource:
    """A :class:`~editalign.reward_model.TokenRewardModel` as a reward source.

    ``kind="token"`` reads every response position (fine-grained PPO); ``"sequence"``
    reads only the last response token (ordinary PPO with a sequence-level reward model).
    """
    check_choice("reward", kind, ("token", "sequence"))
    return _per_token(sources.make_source(kind, reward_model=reward_model))


def dpo_reward_source(dpo_model: torch.nn.Module, ref_model: torch.nn.Module,
                      beta: float) -> RewardSource:
    """The dense implicit reward of a DPO policy (RTO): ``β·(log π_DPO − log π_ref)`` on every
    response token (:class:`editalign.reward_sources.DPOSource`)."""
    return _per_token(sources.dpo_source(dpo_model, ref_model, beta))


def text_reward_source(fn: Callable[[list[str], list[str]], Sequence[float]],
                       tokenizer: PreTrainedTokenizerBase) -> RewardSource:
    """A Python judge ``fn(prompts, responses) -> scores`` as a sparse (last-token) source."""
    return _per_token(sources.text_source(fn, tokenizer))


@dataclass
class Rollout:
    """One batch of sampled responses in the right-padded layout, and what scoring adds."""

    input_ids: Tensor  # (B, L) prompt + response + padding
    attention_mask: Tensor  # (B, L)
    response_start: Tensor  # (B,)
    response_mask: Tensor  # (B, R) true on response tokens (EOS included)
    hit_max_length: Tensor  # (B,) no EOS within max_new_tokens
    logprobs: Tensor | None = None  # (B, R) under the policy at sampling time
    ref_logprobs: Tensor | None = None
    values: Tensor | None = None
    rewards: Tensor | None = None  # (B, R) from the reward source
    advantages: Tensor | None = None
    returns: Tensor | None = None


def response_lengths(response_ids: Tensor, eos_token_id: int) -> tuple[Tensor, Tensor]:
    """Length of each sampled response up to and including its first EOS.

    When the pad token is the EOS token (SmolLM2, AlpacaFarm's off-by-one), generate() fills
    finished rows with EOS, so only the *first* EOS ends the response. Returns (lengths,
    hit_max_length) where rows without EOS keep every sampled token.
    """
    is_eos = response_ids == eos_token_id
    first = torch.where(is_eos.any(-1), is_eos.int().argmax(-1), response_ids.shape[1] - 1)
    hit_max = ~is_eos.any(-1)
    return first + 1, hit_max


def gather_response(values: Tensor, response_start: Tensor, width: int, shift: int = 0) -> Tensor:
    """``values[b, response_start[b] + shift + j]`` for j < width (clamped at the end)."""
    cols = torch.arange(width, device=values.device)
    index = (response_start[:, None] + shift + cols).clamp(0, values.shape[1] - 1)
    if values.dim() == 3:
        return values.gather(1, index[..., None].expand(-1, -1, values.shape[-1]))
    return values.gather(1, index)


def policy_logprobs(model: torch.nn.Module, rollout: Rollout, temperature: float
                    ) -> tuple[Tensor, Tensor]:
    """Log-probability and entropy of every response token under ``model`` (B, R)."""
    width = rollout.response_mask.shape[1]
    logits = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                   use_cache=False).logits
    # Position p's logits predict token p + 1: response token j is predicted at start + j − 1.
    logits = gather_response(logits, rollout.response_start, width, shift=-1).float()
    logp = F.log_softmax(logits / temperature, dim=-1)
    tokens = gather_response(rollout.input_ids, rollout.response_start, width)
    token_logp = logp.gather(-1, tokens[..., None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return token_logp, entropy


def select_rows(rollout: Rollout, idx: Tensor) -> Rollout:
    """Rows ``idx`` of a rollout, trimmed to the longest selected sequence and response."""
    mask = rollout.response_mask[idx]
    width = int(mask.sum(-1).max())
    length = int(rollout.attention_mask[idx].sum(-1).max())

    def cut(t: Tensor | None, w: int) -> Tensor | None:
        return None if t is None else t[idx][:, :w]

    return Rollout(
        input_ids=rollout.input_ids[idx][:, :length],
        attention_mask=rollout.attention_mask[idx][:, :length],
        response_start=rollout.response_start[idx], response_mask=mask[:, :width],
        hit_max_length=rollout.hit_max_length[idx], logprobs=cut(rollout.logprobs, width),
        ref_logprobs=cut(rollout.ref_logprobs, width), values=cut(rollout.values, width),
        rewards=cut(rollout.rewards, width), advantages=cut(rollout.advantages, width),
        returns=cut(rollout.returns, width))
