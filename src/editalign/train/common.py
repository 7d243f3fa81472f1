"""What every trainer shares: model/LoRA arguments, data arguments, and the trainer registry.

Each method lives in its own module (config + trainer side by side) and registers a
``run(argv)`` entry point with :func:`register_trainer`; ``editalign train METHOD ...``
dispatches to it. Arguments are parsed with TRL's ``TrlParser`` so ``--config x.yaml``
(values become defaults) and every ``transformers.TrainingArguments`` flag work the same
way as in TRL's own scripts.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editalign.data.labeling import (
    CHAT_TEMPLATE_MODES,
    GRANULARITIES,
    TRUNCATIONS,
    LabeledPair,
    LabelingConfig,
    label_pairs,
    tokenizer_fingerprint,
)

logger = logging.getLogger(__name__)

TrainerEntry = Callable[[Sequence[str]], int]
_TRAINERS: dict[str, tuple[TrainerEntry, str]] = {}


def register_trainer(name: str, help: str) -> Callable[[TrainerEntry], TrainerEntry]:
    """Make ``editalign train NAME`` call the decorated ``run(argv) -> exit code``."""

    def decorator(run: TrainerEntry) -> TrainerEntry:
        if name in _TRAINERS:
            raise ValueError(f"trainer {name!r} is already registered")
        _TRAINERS[name] = (run, help)
        return run

    return decorator


def registered_trainers() -> dict[str, str]:
    _import_trainer_modules()
    return {name: help for name, (_, help) in sorted(_TRAINERS.items())}


def run_trainer(name: str, argv: Sequence[str]) -> int:
    _import_trainer_modules()
    if name not in _TRAINERS:
        raise ValueError(f"unknown trainer {name!r}; available: {', '.join(sorted(_TRAINERS))}")
    return _TRAINERS[name][0](argv)


# Modules that register trainers; imported lazily so `editalign label` never loads torch
# training code. A method module adds itself here.
TRAINER_MODULES: list[str] = ["editalign.train.figa", "editalign.train.baselines",
                              "editalign.train.reward", "editalign.train.ppo"]


def _import_trainer_modules() -> None:
    import importlib

    for module in TRAINER_MODULES:
        importlib.import_module(module)


@dataclass
class ModelArguments:
    """The policy (or backbone) to train, and optional LoRA."""

    model: str = field(default="tiny", metadata={
        "help": "registered name (smollm2-135m, tiny, tiny:SEED), local directory or cached "
                "HF id"})
    model_dtype: str = field(default="float32", metadata={
        "help": "weights dtype when loading: float32, bfloat16, float16 or auto. Mixed "
                "precision is TrainingArguments' --bf16/--fp16."})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains all weights"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"], metadata={
        "help": "modules LoRA adapts (peft names), e.g. q_proj v_proj; default all-linear"})

    def peft_config(self, task_type: str = "CAUSAL_LM") -> Any | None:
        """A ``peft.LoraConfig`` when ``lora_r > 0``, else ``None`` (full fine-tuning)."""
        if self.lora_r <= 0:
            return None
        from peft import LoraConfig

        targets: Any = self.lora_target_modules
        if targets == ["all-linear"]:
            targets = "all-linear"
        return LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha,
                          lora_dropout=self.lora_dropout, target_modules=targets,
                          task_type=task_type)

    def torch_dtype(self) -> Any:
        import torch

        if self.model_dtype == "auto":
            return "auto"
        allowed = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                   "float16": torch.float16}
        if self.model_dtype not in allowed:
            raise ValueError(f"unknown model_dtype {self.model_dtype!r}; allowed: "
                             f"{', '.join([*allowed, 'auto'])}")
        return allowed[self.model_dtype]


@dataclass
class DataArguments:
    """Edit pairs to train on: a pairs file (labelled on the fly) or an ``editalign label`` dir."""

    data: str | None = field(default=None, metadata={
        "help": "pairs file (.jsonl/.json/.parquet/.csv, optionally .gz), a saved datasets "
                "directory, or the output directory of `editalign label`"})
    preset: str | None = field(default=None, metadata={
        "help": "field layout: default, spa, qa-feedback, preference, mlqe-pe (auto-detected)"})
    field_map: list[str] = field(default_factory=list, metadata={
        "aliases": ["--field"],
        "help": "explicit mapping KEY=COLUMN, e.g. --field prompt=question original=answer"})
    split: str | None = field(default=None, metadata={"help": "split of a saved DatasetDict"})
    limit: int | None = field(default=None, metadata={"help": "use only the first N rows"})
    eval_data: str | None = field(default=None, metadata={
        "help": "held-out pairs, same formats as --data"})
    eval_size: float = field(default=0.0, metadata={
        "help": "hold out this many pairs from --data for evaluation (a fraction if < 1); "
                "ignored with --eval_data"})
    data_seed_split: int = field(default=0, metadata={"help": "seed of the held-out split"})
    granularity: str = field(default="token", metadata={
        "help": f"label granularity: {', '.join(GRANULARITIES)}"})
    max_length: int | None = field(default=1024, metadata={
        "help": "longest prompt+response+EOS in tokens"})
    truncation: str = field(default="keep_start", metadata={
        "help": f"what to keep when too long: {', '.join(TRUNCATIONS)}"})
    chat_template: str = field(default="auto", metadata={
        "help": f"prompt rendering: {', '.join(CHAT_TEMPLATE_MODES)}"})
    strict: bool = field(default=False, metadata={
        "help": "fail on unusable rows instead of skipping and counting them"})

    def labeling_config(self) -> LabelingConfig:
        return LabelingConfig(granularity=self.granularity, max_length=self.max_length,  # type: ignore[arg-type]
                              truncation=self.truncation, chat_template=self.chat_template)  # type: ignore[arg-type]

    def load(self, tokenizer: Any) -> tuple[list[LabeledPair], list[LabeledPair]]:
        """Labelled train and eval pairs for ``tokenizer`` (eval may be empty)."""
        if not self.data:
            raise ValueError("--data is required")
        train = self._load_one(self.data, tokenizer)
        if self.eval_data:
            return train, self._load_one(self.eval_data, tokenizer)
        if self.eval_size <= 0:
            return train, []
        n_eval = round(self.eval_size * len(train)) if self.eval_size < 1 \
            else int(self.eval_size)
        if not 0 < n_eval < len(train):
            raise ValueError(f"eval_size {self.eval_size} leaves no train or no eval pairs "
                             f"out of {len(train)}")
        order = list(range(len(train)))
        random.Random(self.data_seed_split).shuffle(order)
        held = set(order[:n_eval])
        return ([p for i, p in enumerate(train) if i not in held],
                [p for i, p in enumerate(train) if i in held])

    def _load_one(self, source: str, tokenizer: Any) -> list[LabeledPair]:
        from editalign.data.io import read_labeled
        from editalign.data.pairs import load_pairs, parse_field_mapping

        if (Path(source) / "stats.json").is_file():
            labeled, stats = read_labeled(source)
            expected = tokenizer_fingerprint(tokenizer)
            if stats.get("tokenizer_fingerprint") != expected:
                raise ValueError(
                    f"{source} was labelled with the tokenizer of {stats.get('model')!r}, which "
                    "differs from this model's tokenizer; relabel with `editalign label "
                    "--model <this model>` or pass the raw pairs file")
            return labeled[: self.limit] if self.limit else labeled
        fields = parse_field_mapping(self.field_map) if self.field_map else None
        pairs, report = load_pairs(source, preset=self.preset, fields=fields, strict=self.strict,
                                   split=self.split, limit=self.limit)
        logger.info("%s", report.summary())
        labeled, stats = label_pairs(pairs, tokenizer, self.labeling_config(), strict=self.strict)
        logger.info("%s", stats.summary())
        if not labeled:
            raise ValueError(f"{source}: no usable pairs ({report.summary()})")
        return labeled
