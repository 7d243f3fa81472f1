"""Reward models from edits: ``RewardConfig`` and ``RewardTrainer`` side by side (docs/methods.md §3).

One trainer for token-level and sequence-level reward models. A batch of B pairs is 2B
sequences in one forward pass (revised sides first, then original sides, right-padded),
or, with ``--pair_layout shared``, B rows ``[shared prefix | original suffix | revised
suffix]`` (:mod:`editalign.train.shared_prefix`) whose per-token outputs are gathered back
into the same 2B rows; the loss is a weighted sum of the objectives in
:mod:`editalign.losses`:

- ``token_cls``: per-token binary classification of the edit labels; rewards 2σ(z) − 1;
- ``edit_bt``: Bradley-Terry on Σ_{A(ỹ)} r − Σ_{D(ŷ)} r;
- ``seq_bt``: Bradley-Terry on the sum of each response's token rewards;
- ``seq_bt_last``: Bradley-Terry on the reward of the last token, the ordinary sequence
  reward model (same loss as TRL's ``RewardTrainer`` on the same batch).

Every evaluation reports the metrics of :mod:`editalign.eval.reward_metrics` (pairwise
accuracy, token AUROC/F1, human-span AUROC/F1 where the data has spans, calibration).

    editalign train token-rm --model tiny --data pairs.jsonl --output_dir rm --use_cpu
    editalign train rm --model smollm2-135m --data pairs.jsonl --lora_r 16 --output_dir seq-rm
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

from editalign.data.align import IGNORE
from editalign.data.labeling import SIDES, LabeledPair
from editalign.eval.reward_metrics import PairRewards, flatten_metrics, reward_metrics
from editalign.eval.spans import human_bad_tokens
from editalign.losses import check_choice, default_transform, parse_objectives, reward_model_loss
from editalign.reward_model import (
    RewardModelConfig,
    TokenRewardModel,
    TokenRewardOutput,
    check_finite_rewards,
)
from editalign.train.collate import shared_prefix_ratio
from editalign.train.shared_prefix import (
    AUTO_SHARED_MAX_RATIO,
    build_shared_prefix_batch,
    layout_attention_mask,
    layout_unsupported_reason,
    side_token_rows,
    uses_flex_attention,
)

logger = logging.getLogger(__name__)

# No packed layout here: the reward trainer has no padding-free path.
PAIR_LAYOUTS = ("padded", "shared", "auto")


@dataclass
class RewardConfig(TrainingArguments):
    """Reward-model training options; every ``TrainingArguments`` option works too."""

    objective: str = field(default="token_cls", metadata={
        "help": "objective or weighted mix: token_cls, edit_bt, seq_bt, seq_bt_last, e.g. "
                "'token_cls=1,edit_bt=0.5'"})
    equal_weight: float = field(default=0.0, metadata={
        "help": "token_cls weight λ_eq of equal tokens (target 0.5); 0 ignores them"})
    center_rewards_coefficient: float | None = field(default=None, metadata={
        "help": "seq_bt: add coef·mean((s⁺ + s⁻)²), as TRL (recommended 0.01)"})
    reward_transform: str = field(default="auto", metadata={
        "help": "sigmoid (r = 2σ(z) − 1), identity (r = z), or auto: sigmoid when token_cls "
                "takes part"})
    read_at: str = field(default="auto", metadata={
        "help": "token (token-level RM) or last (sequence RM read at the last token); auto: "
                "last for seq_bt_last alone, else token"})
    max_length: int | None = field(default=1024, metadata={
        "help": "longest prompt+response+EOS per side, in tokens (labelling and batching)"})
    pair_layout: str = field(default="padded", metadata={
        "help": f"how a batch holds both sides of a pair: {', '.join(PAIR_LAYOUTS)} (padded: "
                "2B padded rows; shared: one row per pair, [shared prefix | original suffix | "
                "revised suffix] with a 4-D mask (a FlexAttention BlockMask with flex_attention), "
                "the prompt and the unedited prefix computed once, the same rewards and losses; "
                "needs sdpa/eager/flex_attention attention, else falls back "
                "to padded with a logged reason; auto: shared for batches whose shared layout "
                f"is <= {AUTO_SHARED_MAX_RATIO} of the padded size, else padded)"})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate"})
    logging_steps: float = field(default=10, metadata={"help": "log every N steps"})
    remove_unused_columns: bool = field(default=False, metadata={
        "help": "kept False: the paired collator needs every column"})

    def __post_init__(self) -> None:
        check_choice("pair_layout", self.pair_layout, PAIR_LAYOUTS)
        super().__post_init__()

    def objectives(self) -> dict[str, float]:
        return parse_objectives(self.objective)

    def model_config(self) -> RewardModelConfig:
        objectives = self.objectives()
        transform = self.reward_transform
        if transform == "auto":
            transform = default_transform(objectives)
        read_at = self.read_at
        if read_at == "auto":
            read_at = "last" if set(objectives) == {"seq_bt_last"} else "token"
        return RewardModelConfig(transform=transform, read_at=read_at, objectives=objectives)


# ----------------------------------------------------------------------------- data


class PairDataset(Dataset):
    """Labelled pairs as feature dicts: ``{side}_input_ids`` and ``{side}_labels`` per side."""

    def __init__(self, pairs: Sequence[LabeledPair], max_length: int | None = None) -> None:
        self.pairs = list(pairs)
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        lp = self.pairs[i]
        row: dict[str, Any] = {"index": i}
        for name in SIDES:
            side = getattr(lp, name)
            ids, labels = side.input_ids, side.labels
            if self.max_length is not None:
                ids, labels = ids[: self.max_length], labels[: self.max_length]
            row[f"{name}_input_ids"], row[f"{name}_labels"] = ids, labels
        return row


@dataclass
class RewardPairCollator:
    """B pairs → 2B right-padded rows: ``input_ids``, ``attention_mask``, ``edit_labels``
    (IGNORE on prompt and padding); rows 0..B-1 revised, B..2B-1 original.

    With ``shared_prefix`` the model inputs are instead the shared-prefix layout (B rows,
    ``segments`` ``(B, L)``, ``attention_mask`` boolean ``(B, 1, L, L)`` unless
    ``shared_prefix_dense_mask`` is False (FlexAttention), ``position_ids``), and ``token_rows``
    ``(2B, T)`` gives the layout column of every token of the 2B padded rows (0 on padding),
    so the per-token outputs gathered there have the padded layout's shape and order;
    ``edit_labels`` is unchanged and ``token_mask`` is the padded layout's attention mask.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    shared_prefix: bool = False
    # With ``shared_prefix``: use the shared layout for a batch only when its size is at
    # most this fraction of the padded layout's (else the batch is padded); None: always.
    shared_prefix_max_ratio: float | None = None
    shared_prefix_dense_mask: bool = True

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self._padded(features)
        if self._use_shared(features):
            batch["token_mask"] = batch.pop("attention_mask")
            batch.update(_shared_prefix_inputs(features, batch["input_ids"].shape[1],
                                               self.pad_token_id,
                                               self.shared_prefix_dense_mask))
        return batch

    def _use_shared(self, features: Sequence[dict[str, Any]]) -> bool:
        if not self.shared_prefix:
            return False
        # The layout needs two tokens per side; such degenerate sides only come from a
        # max_length below 2, and stay padded rather than failing the batch.
        if any(len(f[f"{name}_input_ids"]) < 2 for name in SIDES for f in features):
            return False
        return (self.shared_prefix_max_ratio is None
                or shared_prefix_ratio(features) <= self.shared_prefix_max_ratio)

    def _padded(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [(f[f"{name}_input_ids"], f[f"{name}_labels"]) for name in SIDES for f in features]
        length = max(len(ids) for ids, _ in seqs)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(seqs), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(seqs), length), dtype=torch.long)
        edit_labels = torch.full((len(seqs), length), IGNORE, dtype=torch.long)
        for row, (ids, labels) in enumerate(seqs):
            input_ids[row, : len(ids)] = torch.as_tensor(ids)
            attention_mask[row, : len(ids)] = 1
            edit_labels[row, : len(labels)] = torch.as_tensor(labels)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "edit_labels": edit_labels}
        if "index" in features[0]:
            batch["index"] = torch.as_tensor([f["index"] for f in features])
        return batch


def _shared_prefix_inputs(features: Sequence[dict[str, Any]], width: int, pad_token_id: int,
                          dense_mask: bool = True) -> dict[str, torch.Tensor]:
    """The shared-prefix model inputs of ``features`` and ``token_rows`` ``(2B, width)``:
    row i (revised) and row B + i (original) index layout row i."""
    pairs = [(f["original_input_ids"], f["revised_input_ids"]) for f in features]
    layout = build_shared_prefix_batch(pairs, pad_token_id, dense_mask=dense_mask)
    rows: dict[str, list[list[int]]] = {name: [] for name in SIDES}
    for original, revised in pairs:
        original_rows, revised_rows = side_token_rows(original, revised)
        rows["original"].append(original_rows)
        rows["revised"].append(revised_rows)
    token_rows = torch.zeros((2 * len(pairs), width), dtype=torch.long)
    for row, side_rows in enumerate(rows["revised"] + rows["original"]):
        token_rows[row, : len(side_rows)] = torch.as_tensor(side_rows)
    out = {"input_ids": layout.input_ids, "position_ids": layout.position_ids,
           "segments": layout.segments, "token_rows": token_rows}
    if layout.attention_mask is not None:
        out["attention_mask"] = layout.attention_mask
    return out


def human_bad(lp: LabeledPair) -> np.ndarray | None:
    """Per original response token (EOS excluded): inside a human error span (QA-Feedback)."""
    spans = lp.meta.get("error_spans")
    if spans is None:
        return None
    offsets = lp.original.offsets
    if offsets[-1:] == [(0, 0)]:
        offsets = offsets[:-1]
    return np.array([h is not None for h in human_bad_tokens(lp.original_text, offsets, spans)])


# ----------------------------------------------------------------------------- trainer


class RewardTrainer(Trainer):
    """``transformers.Trainer`` for :class:`TokenRewardModel` on labelled edit pairs."""

    def __init__(self, model: TokenRewardModel, args: RewardConfig,
                 train_dataset: Sequence[LabeledPair] | None = None,
                 eval_dataset: Sequence[LabeledPair] | None = None,
                 processing_class: Any = None, **kwargs: Any) -> None:
        if processing_class is not None:
            model.check_tokenizer(processing_class)
        pad = processing_class.pad_token_id if processing_class is not None else 0
        self.objectives = args.objectives()
        self.eval_pairs = list(eval_dataset) if eval_dataset else []
        if args.pair_layout in ("shared", "auto"):
            reason = layout_unsupported_reason(model.backbone)
            if reason is not None:
                logger.warning("pair_layout %s unavailable, using padded: %s",
                               args.pair_layout, reason)
                args.pair_layout = "padded"
        # Evaluation (score_pairs) uses this collator too: the shared layout's gathered
        # outputs have the padded layout's shape, so the metrics code reads either.
        kwargs.setdefault("data_collator", RewardPairCollator(
            pad_token_id=pad, shared_prefix=args.pair_layout in ("shared", "auto"),
            shared_prefix_max_ratio=AUTO_SHARED_MAX_RATIO if args.pair_layout == "auto"
            else None, shared_prefix_dense_mask=not uses_flex_attention(model.backbone)))
        super().__init__(
            model=model, args=args,
            train_dataset=PairDataset(train_dataset, args.max_length)
            if train_dataset is not None else None,
            eval_dataset=PairDataset(self.eval_pairs, args.max_length)
            if self.eval_pairs else None,
            processing_class=processing_class, **kwargs)
        # compute_loss returns the batch mean; the Trainer must scale it for accumulation.
        self.model_accepts_loss_kwargs = False
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list),
                                                            "eval": defaultdict(list)}
        self.train_tokens = 0

    def _loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
        unwrapped = self.accelerator.unwrap_model(model)
        if "token_rows" in inputs:
            out = _shared_prefix_forward(model, unwrapped, inputs)
        else:
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        cfg = self.args
        loss, parts = reward_model_loss(
            out.logits, inputs["edit_labels"], self.objectives,
            transform=unwrapped.reward_config.transform, equal_weight=cfg.equal_weight,
            center_coefficient=cfg.center_rewards_coefficient)
        return loss, parts, out

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                     return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        loss, parts, out = self._loss(model, inputs)
        if model.training:
            # Tokens of the pairs (the padded layout's mask), whichever layout computed them.
            token_mask = inputs["token_mask"] if "token_mask" in inputs \
                else inputs["attention_mask"]
            self.train_tokens += int(token_mask.sum())
            for name, value in parts.items():
                self._metrics["train"][f"loss_{name}"].append(float(value.detach()))
        return (loss, out) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        train = self._metrics["train"]
        if train and not any(k.startswith("eval_") for k in logs):
            logs.update({k: sum(v) / len(v) for k, v in train.items()})
            train.clear()
        super().log(logs, start_time)

    @torch.no_grad()
    def score_pairs(self, pairs: Sequence[LabeledPair]) -> tuple[list[PairRewards], float]:
        """Token rewards of both sides of every pair, and the mean loss over the batches."""
        model = self.model
        was_training = model.training
        model.eval()
        loader = self.get_eval_dataloader(PairDataset(pairs, self.args.max_length))
        results: list[PairRewards] = []
        losses = []
        for inputs in loader:
            inputs = self._prepare_inputs(inputs)
            loss, _, out = self._loss(model, inputs)
            losses.append(float(loss))
            results += batch_pair_rewards(out.logits, out.rewards, inputs["edit_labels"],
                                          [pairs[int(i)] for i in inputs["index"]])
        model.train(was_training)
        return results, float(np.mean(losses)) if losses else float("nan")

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        """Loss and reward metrics on the held-out pairs (one pass, no generation)."""
        pairs = list(eval_dataset) if eval_dataset is not None else self.eval_pairs
        if not pairs:
            return {}
        start = time.perf_counter()
        results, loss = self.score_pairs(pairs)
        metrics = {f"{metric_key_prefix}_loss": loss,
                   **flatten_metrics(reward_metrics(results), f"{metric_key_prefix}_"),
                   f"{metric_key_prefix}_runtime": time.perf_counter() - start}
        metrics = {k: v for k, v in metrics.items() if not math.isnan(v)}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control,
                                                         metrics)
        return metrics

    def _load_reward_weights(self, directory: str) -> None:
        """Resume / load-best for a reward model directory (saved LoRA is merged: full only)."""
        model = self.accelerator.unwrap_model(self.model)
        if hasattr(model.backbone, "merge_and_unload"):
            raise NotImplementedError(
                "resuming or load_best_model_at_end is not supported with LoRA: checkpoints "
                "hold merged weights; train without them or with full fine-tuning")
        loaded = TokenRewardModel.from_pretrained(directory)
        model.load_state_dict(loaded.state_dict())

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        if self.is_fsdp_enabled:
            # The module holds shards: Trainer loads the checkpoint's FSDP state dict
            # (pytorch_model_fsdp*, written next to ours at every save) into them.
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        self._load_reward_weights(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        self._load_reward_weights(self.state.best_model_checkpoint)

    def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
        # Under FSDP every rank gets here (the gathered state_dict lives on rank 0), under
        # DDP only the saving one: only that one writes.
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        self.accelerator.unwrap_model(self.model).save_pretrained(
            output_dir, tokenizer=self.processing_class, state_dict=state_dict)
        torch.save(self.args, f"{output_dir}/training_args.bin")


def _shared_prefix_forward(model: torch.nn.Module, unwrapped: TokenRewardModel,
                           inputs: dict[str, torch.Tensor]) -> TokenRewardOutput:
    """One forward pass over the shared-prefix rows, then every token's logit and reward
    read at the token's own layout position: the (2B, T) outputs of the padded layout.

    ``model`` (possibly DDP-wrapped) is called as a whole, so data parallelism still sees
    the forward pass; the head is per position, so gathering after it is exact.
    """
    # sdpa: the dense boolean mask; eager: additive; flex_attention: a BlockMask built here,
    # on the device, from the per-position segments.
    mask = layout_attention_mask(unwrapped.backbone, inputs.get("attention_mask"),
                                 inputs.get("segments"))
    out = model(input_ids=inputs["input_ids"], attention_mask=mask,
                position_ids=inputs["position_ids"])
    rows = inputs["token_rows"]

    def per_side(values: torch.Tensor) -> torch.Tensor:
        return torch.cat([values, values]).gather(1, rows)

    return TokenRewardOutput(logits=per_side(out.logits), rewards=per_side(out.rewards))


def batch_pair_rewards(logits: torch.Tensor, rewards: torch.Tensor, edit_labels: torch.Tensor,
                       pairs: Sequence[LabeledPair]) -> list[PairRewards]:
    """Split a (2B, L) paired batch into one :class:`PairRewards` per pair.

    Every consumer of pair rewards (``editalign score``, the reviser's reward-model scorer,
    the reward trainer's evaluation) goes through here: a NaN or inf reward on a response
    token raises :class:`~editalign.reward_model.NonFiniteRewardError` naming the pair.
    """
    n = len(pairs)
    check_finite_rewards(rewards, edit_labels != IGNORE,
                         rows=[f"pair {lp.id!r} ({side})" for side in ("revised", "original")
                               for lp in pairs])
    logits, rewards, labels = (t.float().cpu().numpy() for t in (logits, rewards, edit_labels))
    out = []
    for i, lp in enumerate(pairs):
        r_sel, o_sel = labels[i] != IGNORE, labels[n + i] != IGNORE
        out.append(PairRewards(
            revised_rewards=rewards[i][r_sel], revised_labels=labels[i][r_sel],
            original_rewards=rewards[n + i][o_sel], original_labels=labels[n + i][o_sel],
            original_logits=logits[n + i][o_sel], human_bad=human_bad(lp)))
    return out


# ----------------------------------------------------------------------------- CLI


@dataclass
class SequenceRewardConfig(RewardConfig):
    """``editalign train rm``: the same options, ``seq_bt_last`` by default."""

    objective: str = field(default="seq_bt_last", metadata={
        "help": "objective or weighted mix: token_cls, edit_bt, seq_bt, seq_bt_last"})


def _run(argv: Sequence[str], config_cls: type[RewardConfig]) -> int:
    from editalign.models import load_tokenizer
    from editalign.train.cli import finish, parse_train_args, resume_arg

    model_args, data_args, config = parse_train_args(config_cls, argv)
    tokenizer = load_tokenizer(model_args.model)
    train, evaluation = data_args.load(tokenizer)
    logger.info("reward model: %d train pairs, %d eval pairs", len(train), len(evaluation))
    model = TokenRewardModel.from_backbone(
        model_args.model, config.model_config(),
        peft_config=model_args.peft_config("FEATURE_EXTRACTION"),
        dtype=model_args.torch_dtype(), tokenizer=tokenizer,
        attn_implementation=model_args.attn_implementation)
    trainer = RewardTrainer(model, config, train_dataset=train, eval_dataset=evaluation or None,
                            processing_class=tokenizer)
    return finish(trainer, config, resume_arg(config))


def run_token_rm(argv: Sequence[str]) -> int:
    return _run(argv, RewardConfig)


def run_rm(argv: Sequence[str]) -> int:
    return _run(argv, SequenceRewardConfig)
