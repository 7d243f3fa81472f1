"""Token-level reward model: any backbone plus a scalar head on every position.

``TokenRewardModel(input_ids, attention_mask).rewards`` has shape (batch, length): the
reward of token t. What it reads is the model's ``context`` (saved in its config, honoured
here so every consumer gets it):

- ``causal``: the prompt and the response up to t, r(x, y_≤t), as a decoder reads;
- ``echo`` (decoders): the whole response: the response is written twice, ``[prompt |
  response | response]``, and token t's reward is read at its second copy, which has seen
  the first copy entirely (arXiv 2402.15449);
- ``bidirectional``: the whole response through the attention mask: the response tokens
  see each other both ways (a bidirectional block; the prompt stays causal and does not see
  the response). The only mode of an encoder backbone (BERT, XLM-R, DeBERTa), which reads
  everything anyway.

Whole-response modes need to know where the response starts: ``forward(...,
response_start=...)`` (``response_rewards`` passes it). A sequence-level reward model is the same class read at the last response token
(``read_at="last"``), so the PPO reward source below serves both (DESIGN: a reward source
returns a (batch, response_length) tensor; a sequence RM fills the last position, a token
RM fills all).

A saved reward model is one directory: the backbone as an ordinary ``save_pretrained``
folder (LoRA merged in; ``config.json`` + ``model.safetensors``), ``reward_head.safetensors``,
``reward_config.json`` (objectives, reward transform, read position, context, the
tokenizer's fingerprint) and the tokenizer, so ``from_pretrained(dir)`` needs nothing else.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from editalign.losses import REWARD_TRANSFORMS, token_rewards
from editalign.masks import is_causal_backbone, layout_attention_mask, segment_mask
from editalign.models import (
    SAFE_LOAD,
    TOKENIZER_FILES,
    WeightsError,
    check_weights,
    json_files_problem,
    load_tokenizer,
    resolve_model_path,
    tokenizer_fingerprint,
)
from editalign.options import check_choice
from editalign.padding import pad_rows

REWARD_CONFIG_NAME = "reward_config.json"
HEAD_NAME = "reward_head.safetensors"
READ_AT = ("token", "last")
# What token t's reward reads (module docstring). auto: causal on a decoder, bidirectional
# on an encoder; "full" names the whole-response mode chosen by measurement
# (docs/mlqe-pe.md); both are resolved when the model is built, never saved.
CONTEXTS = ("causal", "echo", "bidirectional")
CONTEXT_CHOICES = (*CONTEXTS, "full", "auto")
FULL_CONTEXT = "bidirectional"  # best on ro-en dev (docs/mlqe-pe.md)


class TokenizerMismatchError(ValueError):
    """Token ids from one tokenizer fed to a reward model trained with another."""


class NonFiniteRewardError(ValueError, FloatingPointError):
    """A reward source returned NaN or inf: every result computed from it would be garbage
    (a NaN compares false, so a win rate reads 0 and metrics read plausible), so consumers
    stop and name the rows. A ``ValueError`` so the CLI exits 2 with the message."""


def check_finite_rewards(rewards: Any, valid: Any = None, *,
                         rows: Sequence[str] | None = None, source: str = "the reward model"
                         ) -> None:
    """Raise :class:`NonFiniteRewardError` naming the rows whose rewards are NaN or inf.

    ``rewards`` is a tensor or array whose first axis is the row (a 1-D sequence of scores
    works too); ``valid`` masks the positions that are rewards (padding may hold anything);
    ``rows`` names the rows (default: ``row i``). The one check every consumer of rewards
    uses: scoring pairs, the reward-model judge, the reviser's reward filter and PPO.
    """
    values = torch.as_tensor(rewards, dtype=torch.float64) if not isinstance(rewards, Tensor) \
        else rewards
    bad = ~torch.isfinite(values)
    if valid is not None:
        bad = bad & torch.as_tensor(valid, dtype=torch.bool, device=bad.device)
    if bad.dim() > 1:
        bad = bad.flatten(1).any(-1)
    if not bad.any():
        return
    index = bad.nonzero().flatten().tolist()
    names = [rows[i] if rows is not None else f"row {i}" for i in index]
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    raise NonFiniteRewardError(f"{source} returned NaN or inf rewards for {shown}; refusing to "
                               "use them (check the reward model's weights and inputs)")


@dataclass
class RewardModelConfig:
    """What a saved reward model needs besides its weights (``reward_config.json``)."""

    transform: str = "identity"  # sigmoid: r = 2σ(z) − 1; identity: r = z
    read_at: str = "token"  # token: every position is a reward; last: a sequence RM
    objectives: dict[str, float] = field(default_factory=dict)
    base_model: str | None = None
    tokenizer_fingerprint: str | None = None
    context: str = "auto"  # causal | echo | bidirectional (auto, full: resolved when built)

    def __post_init__(self) -> None:
        check_choice("reward transform", self.transform, REWARD_TRANSFORMS)
        check_choice("read_at", self.read_at, READ_AT)
        check_choice("context", self.context, CONTEXT_CHOICES)


def resolve_context(context: str, causal_backbone: bool) -> str:
    """The mode a model runs for a requested ``context`` (CONTEXT_CHOICES)."""
    check_choice("context", context, CONTEXT_CHOICES)
    if not causal_backbone:
        if context not in ("auto", "full", "bidirectional"):
            raise ValueError(f"context {context!r} on an encoder backbone: an encoder reads "
                             "the whole sequence (use --context bidirectional, full or auto)")
        return "bidirectional"
    if context == "auto":
        return "causal"
    return FULL_CONTEXT if context == "full" else context


def echo_sequence(ids: Sequence[int], response_start: int) -> tuple[list[int], list[int]]:
    """``ids`` with its response written twice, and where to read each token of ``ids``:
    prompt token t at t, response token t at its second copy (``len(ids) + t - start``)."""
    ids = list(ids)
    n = len(ids)
    return ids + ids[response_start:], [t if t < response_start else n + t - response_start
                                        for t in range(n)]


def response_segments(attention_mask: Tensor, response_start: Tensor) -> Tensor:
    """Per position of right-padded rows: 0 prompt, 1 response, -1 padding (the segments
    of :mod:`editalign.masks`, one response block per row)."""
    cols = torch.arange(attention_mask.size(1), device=attention_mask.device)[None]
    start = response_start.to(attention_mask.device)[:, None]
    segments = torch.where(cols < start, 0, 1)
    return segments.masked_fill(attention_mask == 0, -1)


@dataclass
class TokenRewardOutput(ModelOutput):
    logits: Tensor | None = None  # (batch, length) raw head outputs z
    rewards: Tensor | None = None  # (batch, length) token rewards (transform of z)


class TokenRewardModel(nn.Module):
    """Backbone (``AutoModel``: hidden states, no LM head) + ``Linear(hidden, 1)`` per position.

    The backbone is a decoder (any ``AutoModelForCausalLM`` checkpoint, loaded without its
    LM head) or an encoder (``AutoModel`` / ``AutoModelForTokenClassification`` checkpoints
    of BERT, XLM-R, DeBERTa, ...); ``causal_backbone`` says which.
    """

    def __init__(self, backbone: nn.Module, config: RewardModelConfig | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.reward_config = copy.copy(config) if config else RewardModelConfig()
        self.causal_backbone = is_causal_backbone(backbone)
        self.reward_config.context = resolve_context(self.reward_config.context,
                                                     self.causal_backbone)
        text_config = backbone.config.get_text_config()
        self.head = nn.Linear(text_config.hidden_size, 1)
        std = getattr(text_config, "initializer_range", 0.02)
        nn.init.normal_(self.head.weight, std=std)
        nn.init.zeros_(self.head.bias)
        dtype = next(backbone.parameters()).dtype
        self.head.to(dtype)

    # ------------------------------------------------------------------ building

    @classmethod
    def from_backbone(cls, name_or_path: str, config: RewardModelConfig | None = None, *,
                      peft_config: Any = None, dtype: Any = None,
                      tokenizer: PreTrainedTokenizerBase | None = None,
                      attn_implementation: str | None = None) -> TokenRewardModel:
        """A fresh head on a (registered, local or cached) backbone; LoRA with ``peft_config``.

        With LoRA only the adapters and the head train (the head lives outside the PEFT
        wrapper, so it needs no ``modules_to_save``).
        """

        path = resolve_model_path(name_or_path)
        kwargs: dict[str, Any] = dict(SAFE_LOAD)
        if dtype is not None:
            kwargs["dtype"] = dtype
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        backbone = AutoModel.from_pretrained(path, **kwargs)
        if peft_config is not None:
            from peft import get_peft_model

            backbone = get_peft_model(backbone, peft_config)
        config = copy.copy(config) if config else RewardModelConfig()
        config.base_model = str(name_or_path)
        tokenizer = tokenizer or load_tokenizer(path)
        config.tokenizer_fingerprint = tokenizer_fingerprint(tokenizer)
        return cls(backbone, config)

    # ------------------------------------------------------------------ forward

    @property
    def context(self) -> str:
        """The mode that runs (a config set after building, as PPO's value model's, may
        still say auto or full)."""
        return resolve_context(self.reward_config.context, self.causal_backbone)

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None, *,
                response_start: Tensor | Sequence[int] | None = None,
                **kwargs: Any) -> TokenRewardOutput:
        """Head logits and rewards ``(batch, length)`` of right-padded rows.

        A whole-response model (``echo``/``bidirectional`` on a decoder) needs
        ``response_start`` (per row) to know which tokens form the response. Inputs laid
        out by the caller (``position_ids`` with a 4-D mask: the shared-prefix layout, whose
        collator builds the context's rows) go to the backbone unchanged.
        """
        laid_out = "position_ids" in kwargs or "inputs_embeds" in kwargs or (
            attention_mask is not None and (not isinstance(attention_mask, Tensor)
                                            or attention_mask.dim() != 2))
        if self.context == "causal" or not self.causal_backbone or laid_out:
            hidden = self._hidden(input_ids, attention_mask, **kwargs)
        else:
            if response_start is None:
                raise ValueError(f"this reward model reads the whole response (context "
                                 f"{self.context!r}): pass response_start, where each row's "
                                 "response begins")
            start = torch.as_tensor(response_start, device=input_ids.device).long()
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            if self.context == "echo":
                hidden = self._echo_hidden(input_ids, attention_mask, start)
            else:
                hidden = self._bidirectional_hidden(input_ids, attention_mask, start)
        logits = self.head(hidden).squeeze(-1)
        return TokenRewardOutput(logits=logits,
                                 rewards=token_rewards(logits, self.reward_config.transform))

    def _hidden(self, input_ids: Tensor | None, attention_mask: Tensor | None, **kwargs: Any
                ) -> Tensor:
        if self.causal_backbone:
            kwargs.setdefault("use_cache", False)
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                             **kwargs).last_hidden_state

    def _echo_hidden(self, input_ids: Tensor, attention_mask: Tensor, start: Tensor) -> Tensor:
        """Hidden states of ``[prompt | response | response]`` read at the second copy."""
        lengths = attention_mask.sum(-1).tolist()
        rows = [echo_sequence(input_ids[b, :n].tolist(), int(start[b]))
                for b, n in enumerate(lengths)]
        ids, mask = pad_rows([row for row, _ in rows], 0, like=input_ids)
        mask = mask.to(attention_mask)
        read = input_ids.new_zeros(input_ids.shape)  # padding reads position 0 (never used)
        for b, (_, where) in enumerate(rows):
            read[b, :len(where)] = torch.as_tensor(where)
        hidden = self._hidden(ids, mask)
        return hidden.gather(1, read[..., None].expand(-1, -1, hidden.size(-1)))

    def _bidirectional_hidden(self, input_ids: Tensor, attention_mask: Tensor, start: Tensor
                              ) -> Tensor:
        """Hidden states with the response as one bidirectional block (prompt causal)."""
        segments = response_segments(attention_mask, start)
        positions = torch.arange(input_ids.size(1), device=input_ids.device)[None]
        positions = positions.expand_as(input_ids)
        mask = layout_attention_mask(self.backbone, segment_mask(segments, True), segments,
                                     bidirectional=True, position_ids=positions)
        return self._hidden(input_ids, mask, position_ids=positions)

    @torch.no_grad()
    def response_rewards(self, input_ids: Tensor, attention_mask: Tensor,
                         response_start: Tensor | list[int], *,
                         rows: Sequence[str] | None = None, read_at: str | None = None
                         ) -> Tensor:
        """The PPO reward source: (batch, response_length) rewards of right-padded sequences.

        Row b's response is ``input_ids[b, response_start[b]:]`` up to its last non-pad
        token. A token RM (``read_at="token"``) fills every response position; a sequence
        RM (``read_at="last"``) puts its reward at the last response token and 0 elsewhere.
        Padding positions are 0. A whole-response model (``context`` echo or bidirectional)
        reads the whole response at every position. A NaN or inf reward on a response token raises
        :class:`NonFiniteRewardError` naming the row (``rows[b]``, default ``row b``).
        ``read_at`` reads the model at ``token`` or ``last`` for this call (default: its
        config's), so one loaded model serves a dense and a sparse source without either
        rewriting its config.
        """
        read_at = self.reward_config.read_at if read_at is None else read_at
        check_choice("read_at", read_at, READ_AT)
        rewards = self(input_ids=input_ids, attention_mask=attention_mask,
                       response_start=response_start).rewards.float()
        start = torch.as_tensor(response_start, device=rewards.device)
        lengths = attention_mask.sum(-1) - start
        width = int(lengths.max())
        cols = torch.arange(width, device=rewards.device)
        index = (start[:, None] + cols).clamp(max=rewards.size(1) - 1)
        out = rewards.gather(1, index)
        valid = cols[None, :] < lengths[:, None]
        if read_at == "last":
            valid = cols[None, :] == (lengths[:, None] - 1)
        check_finite_rewards(out, valid, rows=rows)
        return torch.where(valid, out, torch.zeros_like(out))

    # ------------------------------------------------------------------ checks

    def check_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Raise :class:`TokenizerMismatchError` unless ``tokenizer`` is the one trained with."""

        expected = self.reward_config.tokenizer_fingerprint
        if expected is None:
            return
        got = tokenizer_fingerprint(tokenizer)
        if got != expected:
            raise TokenizerMismatchError(
                f"tokenizer mismatch: this reward model was trained with the tokenizer of "
                f"{self.reward_config.base_model!r} (fingerprint {expected}), but the given "
                f"tokenizer has fingerprint {got}; its token ids would mean different tokens. "
                "Use the tokenizer saved with the reward model (TokenRewardModel.load_tokenizer) "
                "or relabel the data with it.")

    # ------------------------------------------------------------------ saving

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None
                                      ) -> None:
        self.backbone.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike[str],
                        tokenizer: PreTrainedTokenizerBase | None = None,
                        state_dict: dict[str, Tensor] | None = None, **_: Any) -> None:
        """Write the backbone (LoRA merged, safetensors), the head, the config, the tokenizer.

        ``state_dict``: this model's full state dict gathered elsewhere (FSDP/DeepSpeed give
        it on the saving rank while the module's own parameters are shards); written in
        place of the module's parameters.
        """
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        backbone = self.backbone
        backbone_state = head_state = None
        if state_dict is not None:
            if hasattr(backbone, "merge_and_unload"):
                raise NotImplementedError(
                    "saving a LoRA reward model from a gathered (FSDP/DeepSpeed) state dict is "
                    "not supported; train it with full fine-tuning or without sharding")
            backbone_state = {k.removeprefix("backbone."): v for k, v in state_dict.items()
                              if k.startswith("backbone.")}
            head_state = {k.removeprefix("head."): v for k, v in state_dict.items()
                          if k.startswith("head.")}
        if hasattr(backbone, "merge_and_unload"):  # a PEFT model: save merged, keep training
            backbone = copy.deepcopy(backbone).merge_and_unload()
        backbone.save_pretrained(out, safe_serialization=True, state_dict=backbone_state)
        head = {k: v.detach().contiguous().cpu()
                for k, v in (head_state or self.head.state_dict()).items()}
        save_file(head, str(out / HEAD_NAME), metadata={"format": "pt"})
        (out / REWARD_CONFIG_NAME).write_text(json.dumps(asdict(self.reward_config), indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(out)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], *,
                        tokenizer: PreTrainedTokenizerBase | None = None,
                        dtype: Any = None) -> TokenRewardModel:
        """Load a directory written by :meth:`save_pretrained`; checks ``tokenizer`` if given."""

        path = Path(directory)
        if not (path / REWARD_CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"{path} is not a reward model directory (no {REWARD_CONFIG_NAME}); train one "
                "with `editalign train token-rm` or `editalign train rm`")
        if not (path / HEAD_NAME).is_file():
            raise WeightsError(f"{path / HEAD_NAME}: missing; the reward model directory is "
                               "incomplete")
        check_weights(path)  # names a missing, truncated or corrupt file
        try:
            config = RewardModelConfig(**json.loads((path / REWARD_CONFIG_NAME).read_text()))
        except TypeError as err:
            raise WeightsError(f"{path / REWARD_CONFIG_NAME}: not a reward config ({err})"
                               ) from None
        kwargs: dict[str, Any] = dict(SAFE_LOAD)
        if dtype is not None:
            kwargs["dtype"] = dtype
        model = cls(AutoModel.from_pretrained(path, **kwargs), config)
        model.head.load_state_dict(load_file(str(path / HEAD_NAME)))
        model.head.to(next(model.backbone.parameters()).dtype)
        if tokenizer is not None:
            model.check_tokenizer(tokenizer)
        return model.eval()

    @staticmethod
    def load_tokenizer(directory: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
        """The tokenizer saved next to a reward model (pad token set, as every loader here)."""

        if not Path(directory).is_dir():
            raise FileNotFoundError(f"{directory}: no such reward model directory")
        problem = json_files_problem(Path(directory), TOKENIZER_FILES)
        if problem is not None:
            raise WeightsError(problem)
        tokenizer = AutoTokenizer.from_pretrained(directory, **SAFE_LOAD)
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
