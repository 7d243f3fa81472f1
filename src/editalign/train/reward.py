"""Reward models from edits: ``RewardConfig`` and ``RewardTrainer`` side by side (docs/methods.md §3).

One trainer for token-level and sequence-level reward models. A batch of B pairs is 2B
sequences in one forward pass (revised sides first, then original sides, right-padded),
or, with ``--pair_layout shared``, B rows ``[shared prefix | original suffix | revised
suffix]`` (:mod:`editalign.batching.shared_prefix`) whose per-token outputs are gathered back
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

import torch
from transformers import Trainer, TrainingArguments

from editalign.batching.layout import PairLayout
from editalign.batching.shared_prefix import AUTO_SHARED_MAX_RATIO
from editalign.batching.tokens import PairDataset, RewardPairCollator, token_mask, token_outputs
from editalign.data.labeling import LabeledPair
from editalign.eval.pair_scoring import score_pairs
from editalign.eval.reward_metrics import PairRewards, flatten_metrics, reward_metrics
from editalign.losses import default_transform, parse_objectives, reward_model_loss
from editalign.models import load_tokenizer
from editalign.options import check_choice
from editalign.reward_model import (
    CONTEXT_CHOICES,
    RewardModelConfig,
    TokenRewardModel,
    TokenRewardOutput,
)
from editalign.train.cli import finish, parse_train_args, resume_arg
from editalign.train.frozen import (
    CachedCollator,
    CachedPairs,
    cache_frozen,
    cacheable_layout,
    freeze_lower,
    layer_slice,
    truncate_layers,
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
    context: str = field(default="auto", metadata={
        "help": "what each token's reward reads: causal (the prompt and the response up to "
                "the token), echo (the whole response: written twice, read at the second "
                "copy), bidirectional (the whole response through a bidirectional block in "
                "the attention mask), full (the measured best whole-response mode), auto "
                "(causal on a decoder, bidirectional on an encoder); saved with the model"})
    max_length: int | None = field(default=1024, metadata={
        "help": "longest prompt+response+EOS per side, in tokens (labelling and batching)"})
    freeze_layers: int = field(default=0, metadata={
        "help": "freeze the embeddings and the lowest N transformer layers (decoders); the "
                "layers above, the final norm and the head train. With --pair_layout shared "
                "the frozen part's output is computed once for the fixed training pairs and "
                "each step runs only the top layers (the CPU recipe of docs/mlqe-pe.md)"})
    keep_layers: int = field(default=0, metadata={
        "help": "use only the lowest M transformer layers of the backbone (0: all); the saved "
                "model has M layers"})
    cache_frozen: bool = field(default=True, metadata={
        "help": "with --freeze_layers: cache the frozen layers' outputs (needs --pair_layout "
                "shared; otherwise they are frozen and recomputed every step)"})
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
        check_choice("context", self.context, CONTEXT_CHOICES)
        if self.freeze_layers < 0 or self.keep_layers < 0:
            raise ValueError("--freeze_layers and --keep_layers take a number of layers >= 0")
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
        return RewardModelConfig(transform=transform, read_at=read_at, objectives=objectives,
                                 context=self.context)


# ----------------------------------------------------------------------------- trainer


class RewardTrainer(Trainer):
    """``transformers.Trainer`` for :class:`TokenRewardModel` on labelled edit pairs."""

    def __init__(self, model: TokenRewardModel, args: RewardConfig,
                 train_dataset: Sequence[LabeledPair] | None = None,
                 eval_dataset: Sequence[LabeledPair] | None = None,
                 processing_class: Any = None, frozen_cache: Sequence[torch.Tensor] | None = None,
                 **kwargs: Any) -> None:
        """``frozen_cache``: with ``--freeze_layers``, the frozen part's output for
        ``train_dataset`` computed earlier (``editalign.train.frozen.cache_frozen`` with this
        trainer's collator; a benchmark trains several runs on one cache)."""
        if processing_class is not None:
            model.check_tokenizer(processing_class)
        pad = processing_class.pad_token_id if processing_class is not None else 0
        self.objectives = args.objectives()
        self.eval_pairs = list(eval_dataset) if eval_dataset else []
        # What runs (args.pair_layout stays what was asked for). The shared forward goes
        # through the wrapped model, so data parallelism does not rule it out.
        self.pair_layout = PairLayout.for_model(args.pair_layout, model.backbone,
                                                choices=PAIR_LAYOUTS)
        # Evaluation (score_pairs) uses this collator too: the shared layout's gathered
        # outputs have the padded layout's shape, so the metrics code reads either.
        # The shared layout's rows depend on what the model reads (its saved context).
        kwargs.setdefault("data_collator", RewardPairCollator(
            pad_token_id=pad, layout=self.pair_layout, context=model.context))
        super().__init__(
            model=model, args=args,
            train_dataset=PairDataset(train_dataset, args.max_length)
            if train_dataset is not None else None,
            eval_dataset=PairDataset(self.eval_pairs, args.max_length)
            if self.eval_pairs else None,
            processing_class=processing_class, **kwargs)
        # compute_loss returns the batch mean; the Trainer must scale it for accumulation.
        self.model_accepts_loss_kwargs = False
        self._cached_collator = None
        if args.freeze_layers:
            self._freeze_and_cache(model, args, frozen_cache)
        elif frozen_cache is not None:
            raise ValueError("frozen_cache given without --freeze_layers")
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list),
                                                            "eval": defaultdict(list)}
        self.train_tokens = 0

    def _freeze_and_cache(self, model: TokenRewardModel, args: RewardConfig,
                          given: Sequence[torch.Tensor] | None = None) -> None:
        """--freeze_layers: freeze the lower layers and, where the layout allows, replace
        the training pairs by their frozen part's output (editalign.train.frozen)."""
        if hasattr(model.backbone, "merge_and_unload"):
            raise ValueError("--freeze_layers with LoRA: choose one (LoRA already freezes the "
                             "base weights)")
        trainable = freeze_lower(model.backbone, args.freeze_layers)
        reason = cacheable_layout(model, self.pair_layout) if args.cache_frozen else \
            "--cache_frozen false"
        logger.info("frozen: embeddings and layers 1-%d; %d backbone parameters train; %s",
                    args.freeze_layers, trainable,
                    "their outputs cached" if reason is None and self.train_dataset is not None
                    else f"not cached ({reason})")
        if given is not None and (reason is not None or self.train_dataset is None
                                  or len(given) != len(self.train_dataset)):
            raise ValueError("frozen_cache does not fit: " + (reason or "one tensor per "
                                                              "training pair is needed"))
        if reason is None and self.train_dataset is not None:
            hidden = list(given) if given is not None else cache_frozen(
                model, self.train_dataset, self.data_collator, args.freeze_layers)
            self.train_dataset = CachedPairs(self.train_dataset, hidden)
            self._cached_collator = CachedCollator(self.data_collator,
                                                   next(model.parameters()).dtype)

    def get_train_dataloader(self) -> Any:
        if self._cached_collator is None:
            return super().get_train_dataloader()
        collator, self.data_collator = self.data_collator, self._cached_collator
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = collator

    def _objective_loss(self, out: TokenRewardOutput, inputs: dict[str, torch.Tensor],
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.args
        return reward_model_loss(
            out.logits, inputs["edit_labels"], self.objectives,
            transform=self.accelerator.unwrap_model(self.model).reward_config.transform,
            equal_weight=cfg.equal_weight, center_coefficient=cfg.center_rewards_coefficient)

    def _loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor], TokenRewardOutput]:
        bare = self.accelerator.unwrap_model(model)
        if "inputs_embeds" in inputs:  # cached frozen layers: run only the top ones
            with layer_slice(bare.backbone, self.args.freeze_layers):
                out = token_outputs(model, inputs, bare)
        else:
            out = token_outputs(model, inputs, bare)
        return *self._objective_loss(out, inputs), out

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                     return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        loss, parts, out = self._loss(model, inputs)
        if model.training:
            # Tokens of the pairs, whichever layout computed them.
            self.train_tokens += int(token_mask(inputs).sum())
            for name, value in parts.items():
                self._metrics["train"][f"loss_{name}"].append(float(value.detach()))
        return (loss, out) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        train = self._metrics["train"]
        if train and not any(k.startswith("eval_") for k in logs):
            logs.update({k: sum(v) / len(v) for k, v in train.items()})
            train.clear()
        super().log(logs, start_time)

    def score_pairs(self, pairs: Sequence[LabeledPair]) -> tuple[list[PairRewards], float]:
        """Token rewards of both sides of every pair, and the mean loss over the batches
        (:func:`editalign.eval.pair_scoring.score_pairs` on this trainer's eval loader)."""
        loader = self.get_eval_dataloader(PairDataset(pairs, self.args.max_length))
        return score_pairs(self.model, (self._prepare_inputs(b) for b in loader), pairs,
                           unwrapped=self.accelerator.unwrap_model(self.model),
                           loss=lambda out, inputs: self._objective_loss(out, inputs)[0])

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


# ----------------------------------------------------------------------------- CLI


@dataclass
class SequenceRewardConfig(RewardConfig):
    """``editalign train rm``: the same options, ``seq_bt_last`` by default."""

    objective: str = field(default="seq_bt_last", metadata={
        "help": "objective or weighted mix: token_cls, edit_bt, seq_bt, seq_bt_last"})


def _run(argv: Sequence[str], config_cls: type[RewardConfig]) -> int:
    model_args, data_args, config = parse_train_args(config_cls, argv)
    tokenizer = load_tokenizer(model_args.model)
    train, evaluation = data_args.load(tokenizer)
    logger.info("reward model: %d train pairs, %d eval pairs", len(train), len(evaluation))
    model = TokenRewardModel.from_backbone(
        model_args.model, config.model_config(),
        peft_config=model_args.peft_config("FEATURE_EXTRACTION"),
        dtype=model_args.torch_dtype(), tokenizer=tokenizer,
        attn_implementation=model_args.attn_implementation)
    if config.keep_layers:
        truncate_layers(model.backbone, config.keep_layers)
    trainer = RewardTrainer(model, config, train_dataset=train, eval_dataset=evaluation or None,
                            processing_class=tokenizer)
    return finish(trainer, config, resume_arg(config))


def run_token_rm(argv: Sequence[str]) -> int:
    return _run(argv, RewardConfig)


def run_rm(argv: Sequence[str]) -> int:
    return _run(argv, SequenceRewardConfig)
