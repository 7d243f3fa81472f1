"""Reward models from edits: ``RewardConfig`` and ``RewardTrainer`` side by side (METHODS §3).

One trainer for token-level and sequence-level reward models. A batch of B pairs is 2B
sequences in one forward pass (revised sides first, then original sides, right-padded);
the loss is a weighted sum of the objectives in :mod:`editalign.losses`:

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
from editalign.data.labeling import LabeledPair
from editalign.eval.reward_metrics import PairRewards, flatten_metrics, reward_metrics
from editalign.eval.spans import human_bad_tokens
from editalign.losses import default_transform, parse_objectives, reward_model_loss
from editalign.reward_model import RewardModelConfig, TokenRewardModel
from editalign.train.common import register_trainer

logger = logging.getLogger(__name__)

SIDES = ("revised", "original")


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
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate"})
    logging_steps: float = field(default=10, metadata={"help": "log every N steps"})
    remove_unused_columns: bool = field(default=False, metadata={
        "help": "kept False: the paired collator needs every column"})

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
    (IGNORE on prompt and padding); rows 0..B-1 revised, B..2B-1 original."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
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
        kwargs.setdefault("data_collator", RewardPairCollator(pad_token_id=pad))
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
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        cfg = self.args
        unwrapped = self.accelerator.unwrap_model(model)
        loss, parts = reward_model_loss(
            out.logits, inputs["edit_labels"], self.objectives,
            transform=unwrapped.reward_config.transform, equal_weight=cfg.equal_weight,
            center_coefficient=cfg.center_rewards_coefficient)
        return loss, parts, out

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                     return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        loss, parts, out = self._loss(model, inputs)
        if model.training:
            self.train_tokens += int(inputs["attention_mask"].sum())
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
        self._load_reward_weights(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        self._load_reward_weights(self.state.best_model_checkpoint)

    def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
        output_dir = output_dir or self.args.output_dir
        self.accelerator.unwrap_model(self.model).save_pretrained(
            output_dir, tokenizer=self.processing_class)
        torch.save(self.args, f"{output_dir}/training_args.bin")


def batch_pair_rewards(logits: torch.Tensor, rewards: torch.Tensor, edit_labels: torch.Tensor,
                       pairs: Sequence[LabeledPair]) -> list[PairRewards]:
    """Split a (2B, L) paired batch into one :class:`PairRewards` per pair."""
    n = len(pairs)
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
    from editalign.train.figa import finish, parse_train_args, resume_arg

    model_args, data_args, config = parse_train_args(config_cls, argv)
    tokenizer = load_tokenizer(model_args.model)
    train, evaluation = data_args.load(tokenizer)
    logger.info("reward model: %d train pairs, %d eval pairs", len(train), len(evaluation))
    model = TokenRewardModel.from_backbone(
        model_args.model, config.model_config(),
        peft_config=model_args.peft_config("FEATURE_EXTRACTION"),
        dtype=model_args.torch_dtype(), tokenizer=tokenizer)
    trainer = RewardTrainer(model, config, train_dataset=train, eval_dataset=evaluation or None,
                            processing_class=tokenizer)
    return finish(trainer, config, resume_arg(config))


@register_trainer("token-rm", help="token-level reward model from edits (default token_cls)")
def run_token_rm(argv: Sequence[str]) -> int:
    return _run(argv, RewardConfig)


@register_trainer("rm", help="sequence-level reward model (seq_bt_last, as TRL's RewardTrainer)")
def run_rm(argv: Sequence[str]) -> int:
    return _run(argv, SequenceRewardConfig)
