"""Reward sources: one interface for every way editalign scores sampled responses in RL.

API (stable; PPO, GRPO and the verl plugin call it)::

    source.score(input_ids, attention_mask, response_start) -> ResponseScores
    ResponseScores(sequence: (N,) float, tokens: (N, T) float | None, lengths: (N,) long)
    ResponseScores.per_token() -> (N, T)   # tokens, or the sequence score on the last token

    token_rm_source(reward_model)              # "token": every response token's reward
    sequence_rm_source(reward_model)           # "sequence": the last token's reward only
    dpo_source(dpo_model, ref_model, beta)     # "dpo": β·(log π_DPO − log π_ref) per token
    text_source(fn, tokenizer, name=...)       # any fn(prompts, responses) -> floats
    make_source(kind, ...)                     # by name: token | sequence | dpo
    model_source(reward_model)                 # a reward model read as saved (its read_at)

    score_in_batches(source, prompt_ids, response_ids, pad_token_id, batch_size,
                     order="given" | "length", names=...) -> [RowScores(sequence, tokens)]
                                               # the one way to score many responses: the
                                               # judges, the reviser's filter, eval qe

The batch is right-padded, one row = prompt (no padding) + response + padding, with each
row's ``response_start``; T is the longest response in the batch and ``tokens`` is exactly 0
on padding. ``sequence`` is the outcome reward R_i a group method normalises: the sum of the
token rewards for a dense source (for ``dpo`` that is DPO's implicit sequence reward
β·log π_DPO(y|x)/π_ref(y|x)), the last token's reward for a sequence reward model, the
function's value for a text function. ``tokens`` is ``None`` for a source without a
per-token signal. Token reward models are read through
:meth:`~editalign.reward_model.TokenRewardModel.response_rewards`, so every reading mode
the reward model offers reaches RL unchanged.

A low layer: it imports :mod:`editalign.options` and :mod:`editalign.padding` only, so
trainers, the benchmark and engine plugins can all build on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from editalign.options import check_choice
from editalign.padding import pad_rows

SOURCE_KINDS = ("token", "sequence", "dpo")


@dataclass(frozen=True)
class ResponseScores:
    """What a reward source says about a batch of responses."""

    sequence: Tensor  # (N,) the outcome reward R_i
    tokens: Tensor | None  # (N, T) per-token rewards, 0 on padding; None: no token signal
    lengths: Tensor  # (N,) response lengths (T = lengths.max())

    def per_token(self) -> Tensor:
        """(N, T) rewards: ``tokens``, or (no token signal) the sequence score on each
        response's last token and 0 elsewhere, the layout sparse PPO reads."""
        if self.tokens is not None:
            return self.tokens
        width = int(self.lengths.max()) if self.lengths.numel() else 0
        out = torch.zeros(len(self.lengths), width, dtype=self.sequence.dtype,
                          device=self.sequence.device)
        rows = torch.arange(len(self.lengths), device=self.sequence.device)
        out[rows, (self.lengths - 1).to(self.sequence.device)] = self.sequence
        return out


class RewardSource(Protocol):
    """Anything with a name, whether it has a token signal, and ``score``."""

    name: str
    dense: bool

    def score(self, input_ids: Tensor, attention_mask: Tensor, response_start: Tensor, *,
              rows: Sequence[str] | None = None) -> ResponseScores:
        """``rows`` names each row in an error about it (a NaN reward), default ``row b``."""
        ...


def response_lengths_of(attention_mask: Tensor, response_start: Tensor | Sequence[int]
                        ) -> Tensor:
    """Each row's response length in the right-padded layout."""
    start = torch.as_tensor(response_start, device=attention_mask.device)
    return attention_mask.sum(-1) - start


@dataclass
class RewardModelSource:
    """An editalign reward model (``editalign train token-rm`` or ``rm``) as a source.

    ``read_at="token"`` reads every response position (the dense source); ``"last"`` only
    the last response token (a sequence reward model, or a token one read as one).
    """

    reward_model: Any  # a TokenRewardModel
    read_at: str = "token"

    def __post_init__(self) -> None:
        check_choice("read_at", self.read_at, ("token", "last"))
        self.name = "editalign_token_rm" if self.read_at == "token" else "editalign_sequence_rm"
        self.dense = self.read_at == "token"

    def score(self, input_ids: Tensor, attention_mask: Tensor, response_start: Tensor, *,
              rows: Sequence[str] | None = None) -> ResponseScores:
        # read_at per call: the model's config is never rewritten, so a dense and a sparse
        # source may share one loaded model.
        rewards = self.reward_model.response_rewards(input_ids, attention_mask, response_start,
                                                     rows=rows, read_at=self.read_at)
        lengths = response_lengths_of(attention_mask, response_start).to(rewards.device)
        # One nonzero entry per row when read at the last token: the sum is that entry.
        return ResponseScores(sequence=rewards.sum(-1), tokens=rewards if self.dense else None,
                              lengths=lengths)


def model_source(reward_model: Any) -> RewardModelSource:
    """A reward model read as it was saved: ``read_at`` from its config (the judges, the
    reviser's filter)."""
    return RewardModelSource(reward_model, reward_model.reward_config.read_at)


def token_rm_source(reward_model: Any) -> RewardModelSource:
    """Every response token's reward from a token reward model (fine-grained RL)."""
    return RewardModelSource(reward_model, "token")


def sequence_rm_source(reward_model: Any) -> RewardModelSource:
    """The last response token's reward: an ordinary sequence-level reward."""
    return RewardModelSource(reward_model, "last")


def response_logprobs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor,
                      response_start: Tensor, width: int) -> Tensor:
    """log π(y_j | x, y_<j) at temperature 1 for response tokens j < ``width`` (N, width);
    entries past a row's response are whatever the clamped index reads (mask them)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    cols = torch.arange(width, device=input_ids.device)
    # Position p's logits predict token p + 1: response token j is predicted at start + j − 1.
    at = (response_start[:, None] - 1 + cols).clamp(0, logits.shape[1] - 1)
    picked = logits.gather(1, at[..., None].expand(-1, -1, logits.shape[-1])).float()
    logp = F.log_softmax(picked / 1.0, dim=-1)
    tokens = input_ids.gather(1, (response_start[:, None] + cols).clamp(0, input_ids.shape[1] - 1))
    return logp.gather(-1, tokens[..., None]).squeeze(-1)


@dataclass
class DPOSource:
    """The dense implicit reward of a DPO policy (RTO, Zhong et al., arXiv 2404.18922):
    ``r_t = β·(log π_DPO(y_t | x, y_<t) − log π_ref(y_t | x, y_<t))`` on every response token.

    Summed over a response it is DPO's implicit sequence reward β·log π_DPO(y|x)/π_ref(y|x),
    so RL gets a token-level signal from preference pairs alone, with no edit labels.
    ``ref_model`` must be the reference the DPO policy was trained against, ``beta`` its β.
    Log-probabilities are at temperature 1 (what DPO's objective defines).
    """

    dpo_model: nn.Module
    ref_model: nn.Module
    beta: float
    name: str = "editalign_dpo"
    dense: bool = True

    @torch.no_grad()
    def score(self, input_ids: Tensor, attention_mask: Tensor, response_start: Tensor, *,
              rows: Sequence[str] | None = None) -> ResponseScores:
        start = torch.as_tensor(response_start, device=input_ids.device)
        lengths = attention_mask.sum(-1) - start
        width = int(lengths.max())
        mask = torch.arange(width, device=input_ids.device)[None, :] < lengths[:, None]
        logp = response_logprobs(self.dpo_model, input_ids, attention_mask, start, width)
        ref = response_logprobs(self.ref_model, input_ids, attention_mask, start, width)
        tokens = torch.where(mask, self.beta * (logp - ref), torch.zeros_like(logp))
        return ResponseScores(sequence=tokens.sum(-1), tokens=tokens, lengths=lengths)


def dpo_source(dpo_model: nn.Module, ref_model: nn.Module, beta: float) -> DPOSource:
    return DPOSource(dpo_model, ref_model, beta)


@dataclass
class TextSource:
    """A Python judge ``fn(prompts, responses) -> scores`` (decoded text) as a sequence source."""

    fn: Callable[[list[str], list[str]], Sequence[float]]
    tokenizer: Any
    name: str = "text"
    dense: bool = False

    def score(self, input_ids: Tensor, attention_mask: Tensor, response_start: Tensor, *,
              rows: Sequence[str] | None = None) -> ResponseScores:
        start = torch.as_tensor(response_start, device=input_ids.device)
        lengths = attention_mask.sum(-1) - start
        prompts, responses = [], []
        for row, begin, length in zip(input_ids, start.tolist(), lengths.tolist(), strict=True):
            prompts.append(self.tokenizer.decode(row[:begin], skip_special_tokens=True))
            responses.append(self.tokenizer.decode(row[begin:begin + length],
                                                   skip_special_tokens=True))
        values = [float(v) for v in self.fn(prompts, responses)]
        if len(values) != len(prompts):
            raise ValueError(f"reward function {self.name!r} returned {len(values)} scores for "
                             f"{len(prompts)} responses")
        return ResponseScores(sequence=torch.tensor(values), tokens=None, lengths=lengths.cpu())


def text_source(fn: Callable[[list[str], list[str]], Sequence[float]], tokenizer: Any, *,
                name: str = "text") -> TextSource:
    return TextSource(fn, tokenizer, name)


def make_source(kind: str, *, reward_model: Any = None, dpo_model: nn.Module | None = None,
                ref_model: nn.Module | None = None, beta: float | None = None) -> RewardSource:
    """A source by its name (``token``, ``sequence``, ``dpo``), from the models it needs."""
    check_choice("reward", kind, SOURCE_KINDS)
    if kind == "dpo":
        if dpo_model is None or ref_model is None or beta is None:
            raise ValueError("--reward dpo needs the DPO policy, its reference and its beta")
        return dpo_source(dpo_model, ref_model, beta)
    if reward_model is None:
        raise ValueError(f"--reward {kind} needs a reward model")
    return token_rm_source(reward_model) if kind == "token" else sequence_rm_source(reward_model)


def right_padded(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                 pad_token_id: int, device: Any = None) -> tuple[Tensor, Tensor, Tensor]:
    """(input_ids, attention_mask, response_start) of the right-padded layout every source
    reads, from each row's prompt token ids and response token ids (no padding in either)."""
    input_ids, attention_mask = pad_rows(
        [[*p, *r] for p, r in zip(prompts, responses, strict=True)], pad_token_id)
    start = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    return input_ids.to(device), attention_mask.to(device), start.to(device)


@dataclass(frozen=True)
class RowScores:
    """One response's scores from :func:`score_in_batches`, on the CPU."""

    sequence: float  # the outcome reward R_i
    tokens: Tensor | None  # (response length,) per-token rewards; None: no token signal


BATCH_ORDERS = ("given", "length")


def score_in_batches(source: RewardSource, prompt_ids: Sequence[Sequence[int]],
                     response_ids: Sequence[Sequence[int]], pad_token_id: int,
                     batch_size: int, *, order: str = "given",
                     names: Sequence[str] | None = None, device: Any = None,
                     ) -> list[RowScores]:
    """Score every (prompt ids, response ids) row with ``source``, ``batch_size`` rows per
    right-padded batch (:func:`right_padded`, each batch as wide as its longest row); one
    :class:`RowScores` per row, in the rows' order.

    ``order="given"`` batches the rows as they come; ``"length"`` batches them shortest
    first (a stable sort on prompt + response length), so each batch carries little
    padding. ``names`` name the rows in an error about them (the source's NaN check);
    ``device``: where the batches go (the source's models' device).
    """
    check_choice("order", order, BATCH_ORDERS)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    index = list(range(len(prompt_ids)))
    if order == "length":
        index.sort(key=lambda i: len(prompt_ids[i]) + len(response_ids[i]))
    out: list[RowScores | None] = [None] * len(index)
    for k in range(0, len(index), batch_size):
        idx = index[k:k + batch_size]
        batch = right_padded([prompt_ids[i] for i in idx], [response_ids[i] for i in idx],
                             pad_token_id, device)
        named = {} if names is None else {"rows": [names[i] for i in idx]}
        scores = source.score(*batch, **named)
        sequence = scores.sequence.tolist()
        tokens = None if scores.tokens is None else scores.tokens.cpu()
        for row, i in enumerate(idx):
            out[i] = RowScores(sequence[row], None if tokens is None
                               else tokens[row, :len(response_ids[i])])
    return out  # type: ignore[return-value]  # every row was filled above
