"""FIGA: supervised learning with per-token weights from a minimal edit (docs/methods.md §2).

``FIGAConfig`` extends ``transformers.TrainingArguments``; ``FIGATrainer`` is a
``transformers.Trainer`` whose ``compute_loss`` reads one step top to bottom:

1. both sides of every pair go through the model in one forward pass
   (:class:`~editalign.batching.lm.PairCollator`: revised rows, then original rows,
   padded or packed padding-free, or one shared-prefix row per pair);
2. TRL's fused LM head returns the log-probability of every scored token without
   materialising the ``(batch, length, vocab)`` logits (the same head ``SFTTrainer`` uses);
3. the batch carries the static weights the collator computed with
   :func:`editalign.losses.figa_weights` (α on A(ỹ), γ on the rest of ỹ, −β on D(ŷ));
   :func:`editalign.losses.figa_loss_from_nll` applies the gate on the
   current loss and normalises by ``num_items_in_batch``: the count of nonzero-weight
   tokens of the whole accumulated batch, over all ranks, so gradient accumulation and
   data parallelism reproduce the big-batch loss.

``editalign train figa --model M --data F --output_dir DIR`` runs it; see docs/figa.md.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import InitVar, dataclass, field
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from editalign.batching.layout import PAIR_LAYOUTS, PairLayout
from editalign.batching.lm import PairCollator, is_peft, pair_features, pair_log_probs
from editalign.batching.shared_prefix import AUTO_SHARED_MAX_RATIO
from editalign.data.labeling import GRANULARITIES, LabeledPair
from editalign.losses import (
    FIGA_GATES,
    FIGA_NEGATIVES,
    FIGA_NORMALIZE,
    figa_loss_from_nll,
)
from editalign.options import check_choice
from editalign.train.cli import finish, load_policy, parse_train_args, resume_arg

logger = logging.getLogger(__name__)


@dataclass
class FIGAConfig(TrainingArguments):
    """FIGA options; every ``transformers.TrainingArguments`` option works as well.

    The loss's defaults are the official code's (α = 1, β = 0.5, γ = 0, gate ℓ ≤ τ with
    τ = 0.6, likelihood negative term, lr 1e-5 constant without warm-up) except one: the
    normaliser. editalign's default ``normalize="eligible"`` counts the tokens with a nonzero
    weight before the gate, over the whole accumulated batch and all ranks; the official
    code normalises as ``"active"`` does, by the tokens left after the gate, per
    micro-batch. They give different losses whenever the gate closes on a D(ŷ) token (see
    docs/methods.md §2). The labels differ from the official code's near a truncation cut
    only: editalign aligns the full responses and then truncates, the official code
    truncates first (editalign's labels are the faithful ones; docs/methods.md §1).
    """

    alpha: float = field(default=1.0, metadata={
        "help": "weight α of the added/substituted tokens of the revised response (and its EOS)"})
    beta: float = field(default=0.5, metadata={
        "help": "weight β of the negative term on deleted/substituted tokens of the original"})
    gamma: float = field(default=0.0, metadata={
        "help": "weight γ of the unchanged tokens of the revised response"})
    tau: float = field(default=0.6, metadata={
        "help": "gate threshold τ on the current token loss ℓ = -log p"})
    gate: str = field(default="le", metadata={
        "help": f"when the negative term acts: {', '.join(FIGA_GATES)} (le: ℓ ≤ τ; band: "
                "τ ≤ ℓ ≤ 1; none: always)"})
    negative: str = field(default="likelihood", metadata={
        "help": f"negative term: {', '.join(FIGA_NEGATIVES)} (likelihood: -β·(-log p) as the "
                "official code; unlikelihood: β·(-log(1-p)))"})
    normalize: str = field(default="eligible", metadata={
        "help": f"loss normaliser: {', '.join(FIGA_NORMALIZE)} (eligible, the default, which "
                "differs from the official code: tokens with a nonzero weight before the gate, "
                "over the whole accumulated batch and all ranks, exact under gradient "
                "accumulation/DDP; active, the official code's: after the gate, per "
                "micro-batch)"})
    # The cut the trainer applies to already-labelled sides (an `editalign label` directory,
    # LabeledPairs passed in); on the command line it is DataArguments' --max_length.
    max_length: int | None = field(default=1024, metadata={
        "help": "longest prompt+response+EOS per side, in tokens; longer sides are truncated "
                "and counted, pairs whose response vanishes are skipped"})
    padding_free: bool = field(default=False, metadata={
        "help": "pack the sequences of a batch into one row without pad tokens (positions "
                "restart per sequence; needs an attention implementation that honours packed "
                "position_ids: sdpa/eager build a block-diagonal mask, flash_attention_2 uses "
                "varlen kernels)"})
    pair_layout: str | None = field(default=None, metadata={
        "help": f"how a batch holds both sides of a pair: {', '.join(PAIR_LAYOUTS)} (padded: "
                "2B padded rows; packed: the same as --padding_free; shared: one row per pair, "
                "[shared prefix | original suffix | revised suffix] with a 4-D mask (a "
                "FlexAttention BlockMask with --attn_implementation flex_attention), the prompt "
                "and the unedited prefix computed once; needs sdpa/eager/flex_attention "
                "attention and one process, else falls back to padded with a logged reason; auto: shared for "
                f"batches whose shared layout is <= {AUTO_SHARED_MAX_RATIO} of the padded size, "
                "else padded). Default: packed with --padding_free, else padded"})
    # Defaults that differ from TrainingArguments.
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate"})
    lr_scheduler_type: str = field(default="constant", metadata={
        "help": "learning-rate schedule (the official FIGA run uses a constant rate)"})
    logging_steps: float = field(default=10, metadata={"help": "log every N steps"})
    remove_unused_columns: bool = field(default=False, metadata={
        "help": "keep the pair columns the collator needs"})
    bf16: bool | None = field(default=None, metadata={
        "help": "bf16 mixed precision; default: on where the accelerator supports it (CUDA "
                "with bf16), off on CPU"})

    # A labelling option (DataArguments owns it, and its --granularity flag): accepted here
    # for callers that set it on the config, checked, and not kept.
    granularity: InitVar[str] = "token"

    def __post_init__(self, granularity: str) -> None:
        check_choice("gate", self.gate, FIGA_GATES)
        check_choice("negative", self.negative, FIGA_NEGATIVES)
        check_choice("normalize", self.normalize, FIGA_NORMALIZE)
        check_choice("granularity", granularity, GRANULARITIES)
        if self.pair_layout is None:
            self.pair_layout = "packed" if self.padding_free else "padded"
        check_choice("pair_layout", self.pair_layout, PAIR_LAYOUTS)
        if self.padding_free and self.pair_layout != "packed":
            raise ValueError(f"--padding_free is the packed layout; it contradicts "
                             f"--pair_layout {self.pair_layout}")
        self.padding_free = self.pair_layout == "packed"
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be at least 2 or None, got {self.max_length}")
        if min(self.alpha, self.beta, self.gamma) < 0:
            raise ValueError("alpha, beta and gamma are magnitudes and must be >= 0 "
                             "(the negative term's sign is built in)")
        if self.bf16 is None:
            self.bf16 = bool(not self.fp16 and not self.use_cpu and torch.cuda.is_available()
                             and torch.cuda.is_bf16_supported())
        super().__post_init__()


class FIGATrainer(Trainer):
    """``transformers.Trainer`` with the FIGA loss; ``train_dataset`` is a list of
    :func:`~editalign.batching.lm.pair_features` dicts (or of ``LabeledPair``)."""

    def __init__(self, model: Any, args: FIGAConfig, train_dataset: Any = None,
                 eval_dataset: Any = None, processing_class: Any = None,
                 data_collator: Any = None, **kwargs: Any) -> None:
        from trl.trainer.utils import add_fused_lm_head

        if processing_class is None:
            raise ValueError("FIGATrainer needs the tokenizer (processing_class)")
        train_dataset = _as_features(train_dataset, args.max_length, "train")
        eval_dataset = _as_features(eval_dataset, args.max_length, "eval")
        # What runs (args.pair_layout stays what was asked for): the shared layout calls the
        # unwrapped decoder, so it needs one process.
        self.pair_layout = PairLayout.for_model(args.pair_layout, model,
                                                world_size=args.world_size)
        if data_collator is None:
            data_collator = PairCollator(
                pad_token_id=processing_class.pad_token_id,
                eos_token_id=processing_class.eos_token_id,
                alpha=args.alpha, beta=args.beta, gamma=args.gamma, layout=self.pair_layout)
        if args.gradient_checkpointing and is_peft(model):
            # LoRA freezes the embeddings: without this, checkpointed blocks get no gradient.
            model.enable_input_require_grads()
        super().__init__(model=model, args=args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class,
                         data_collator=data_collator, **kwargs)
        # Per-token log-probs in tiles, without the full logits (as TRL's SFTTrainer does).
        add_fused_lm_head(self.model.get_base_model() if is_peft(self.model) else self.model)
        # The batch carries `shift_labels` (nonzero-weight positions), so Trainer counts
        # them over the accumulated batch (and all ranks) into `num_items_in_batch`, and
        # `compute_loss` returns a loss already normalised for gradient accumulation.
        # With normalize=active the count depends on the gate, known only per micro-batch:
        # Trainer then divides the micro-batch losses by the accumulation steps.
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = args.normalize == "eligible"
        self._figa_metrics: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(list), "eval": defaultdict(list)}

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        args: FIGAConfig = self.args  # type: ignore[assignment]
        # 1-2. one forward pass over both sides; log p of every scored (nonzero-weight) token.
        log_probs, outputs = pair_log_probs(model, inputs, self.accelerator.unwrap_model(model))
        # 3. the batch's static weights, gate on the current (detached) loss, normalised sum.
        if args.normalize == "active":
            num_items_in_batch = None
        result = figa_loss_from_nll(-log_probs, inputs["figa_weights"], tau=args.tau, gate=args.gate,
                                    negative=args.negative, normalize=args.normalize,
                                    num_items=num_items_in_batch)
        loss = result.loss
        if args.average_tokens_across_devices and num_items_in_batch is not None:
            # num_items_in_batch counts every rank's tokens and DDP averages the gradients.
            loss = loss * self.accelerator.num_processes
        self._record(result, model.training)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> tuple[Any, None, None]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def _record(self, result: Any, training: bool) -> None:
        """Logged next to the loss: the positive and negative parts and the gate's open share."""
        metrics = self._figa_metrics["train" if training else "eval"]
        parts = torch.stack([result.positive, result.negative, result.gate_open.float(),
                             result.gate_total.float()]).detach()
        if self.accelerator.num_processes > 1:
            parts = self.accelerator.reduce(parts, reduction="sum")
        positive, negative, gate_open, gate_total = parts.tolist()
        n = max(float(result.num_items), 1.0)
        if self.args.normalize == "active":
            n *= self.accelerator.num_processes  # per-rank counts: about the mean over ranks
        metrics["figa/positive"].append(positive / n)
        metrics["figa/negative"].append(negative / n)
        if gate_total:
            metrics["figa/gate_open"].append(gate_open / gate_total)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        for key, values in self._figa_metrics[mode].items():
            if values:
                logs[prefix + key] = sum(values) / len(values)
        self._figa_metrics[mode].clear()
        super().log(logs, *args, **kwargs)


def _as_features(dataset: Any, max_length: int | None, name: str) -> Any:
    if dataset is None or len(dataset) == 0 or not isinstance(dataset[0], LabeledPair):
        return dataset
    features, report = pair_features(dataset, max_length)
    logger.info("%s: %s", name, report.summary())
    if not features:
        raise ValueError(f"no usable {name} pairs: {report.summary()}")
    return features


def run(argv: Sequence[str]) -> int:
    model_args, data_args, config = parse_train_args(FIGAConfig, argv)
    model, tokenizer = load_policy(model_args, config)
    train, evaluation = data_args.load(tokenizer)
    trainer = FIGATrainer(model=model, args=config, train_dataset=train,
                          eval_dataset=evaluation or None, processing_class=tokenizer)
    return finish(trainer, config, resume_arg(config))
