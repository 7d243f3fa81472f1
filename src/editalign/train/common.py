"""What every trainer shares: model/LoRA arguments, data arguments, and the trainer registry.

Each method lives in its own module (config + trainer side by side) with a ``run(argv)``
entry point named in the :data:`TRAINERS` table; ``editalign train METHOD ...`` dispatches
to it. Arguments are parsed with TRL's ``TrlParser`` so ``--config x.yaml``
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
    check_labeled,
    label_pairs,
)
from editalign.models import tokenizer_fingerprint

logger = logging.getLogger(__name__)

TrainerEntry = Callable[[Sequence[str]], int]


@dataclass(frozen=True)
class TrainerSpec:
    """An ``editalign train NAME`` method: its ``run(argv) -> exit code``, named as
    ``"package.module:function"`` and imported only when called (so ``editalign label``
    never loads torch training code), and its one-line help."""

    target: str
    help: str

    def load(self) -> TrainerEntry:
        import importlib

        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function)  # type: ignore[no-any-return]


# Every built-in method, explicitly: a new method adds its row here.
TRAINERS: dict[str, TrainerSpec] = {
    "dpo": TrainerSpec("editalign.train.baselines:run_dpo",
                       "baseline: TRL DPOTrainer with revised preferred over original"),
    "figa": TrainerSpec("editalign.train.figa:run", "FIGA: token-weighted SFT on revised + "
                        "gated push-down on deleted tokens"),
    "ppo": TrainerSpec("editalign.train.ppo:run",
                       "PPO with token-level (dense) or sequence-level (sparse) rewards"),
    "rm": TrainerSpec("editalign.train.reward:run_rm",
                      "sequence-level reward model (seq_bt_last, as TRL's RewardTrainer)"),
    "sft": TrainerSpec("editalign.train.baselines:run_sft",
                       "baseline: TRL SFTTrainer on the revised responses"),
    "token-rm": TrainerSpec("editalign.train.reward:run_token_rm",
                            "token-level reward model from edits (default token_cls)"),
}
_EXTRA: dict[str, tuple[TrainerEntry, str]] = {}


def register_trainer(name: str, help: str) -> Callable[[TrainerEntry], TrainerEntry]:
    """Make ``editalign train NAME`` call the decorated ``run(argv) -> exit code``: for a
    method defined outside editalign (the built-in ones are rows of :data:`TRAINERS`)."""

    def decorator(run: TrainerEntry) -> TrainerEntry:
        if name in TRAINERS or name in _EXTRA:
            raise ValueError(f"trainer {name!r} is already registered")
        _EXTRA[name] = (run, help)
        return run

    return decorator


def registered_trainers() -> dict[str, str]:
    helps = {name: spec.help for name, spec in TRAINERS.items()}
    helps.update({name: help for name, (_, help) in _EXTRA.items()})
    return dict(sorted(helps.items()))


def run_trainer(name: str, argv: Sequence[str]) -> int:
    if name in TRAINERS:
        return TRAINERS[name].load()(argv)
    if name in _EXTRA:
        return _EXTRA[name][0](argv)
    raise ValueError(f"unknown trainer {name!r}; available: "
                     f"{', '.join(sorted([*TRAINERS, *_EXTRA]))}")


def check_max_steps(max_steps: int) -> None:
    """``--max_steps``: a positive step count, or -1 (transformers' "not set": train by
    ``--num_train_epochs``). transformers itself trains one step for 0 and silently trains
    by epochs for any other negative value."""
    if max_steps == -1 or max_steps >= 1:
        return
    raise ValueError(f"--max_steps must be a positive number of optimizer steps, or -1 to "
                     f"train by --num_train_epochs; got {max_steps}")


@dataclass
class ModelArguments:
    """The policy (or backbone) to train, and optional LoRA."""

    model: str = field(default="tiny", metadata={
        "help": "registered name (smollm2-135m, tiny, tiny:SEED), local directory or cached "
                "HF id"})
    model_dtype: str = field(default="float32", metadata={
        "help": "weights dtype when loading: float32, bfloat16, float16 or auto. Mixed "
                "precision is TrainingArguments' --bf16/--fp16."})
    attn_implementation: str | None = field(default=None, metadata={
        "help": "attention implementation: sdpa, eager, flex_attention, flash_attention_2 "
                "(default: transformers' choice, sdpa where available). flex_attention runs "
                "the shared-prefix pair layout with a BlockMask (training needs a GPU: "
                "torch's FlexAttention has no CPU backward)"})
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

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for loading the model (``from_pretrained``)."""
        kwargs: dict[str, Any] = {"dtype": self.torch_dtype()}
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        return kwargs

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


# Options that only shape how raw pairs are labelled (an `editalign label` directory records
# them in stats.json "config"), and options that only shape how raw pairs are read.
LABELING_OPTIONS = ("granularity", "truncation", "chat_template")
RAW_DATA_OPTIONS = {"preset": "--preset", "field_map": "--field", "split": "--split"}


def given_options(argv: Sequence[str]) -> set[str]:
    """Option names (underscored) set on the command line or in its ``--config`` YAML file."""
    import yaml

    names: set[str] = set()
    for i, token in enumerate(argv):
        if not token.startswith("--"):
            continue
        name = token[2:].split("=", 1)[0].replace("-", "_")
        names.add("field_map" if name == "field" else name)
        if name == "config" and i + 1 < len(argv):
            try:
                with open(argv[i + 1], encoding="utf-8") as handle:
                    values = yaml.safe_load(handle)
            except (OSError, yaml.YAMLError):
                continue  # the argument parser reports an unreadable config itself
            if isinstance(values, dict):
                names |= {str(key).replace("-", "_") for key in values}
    return names


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
        "help": "longest prompt+response+EOS per side, in tokens (labelling, and the trainer "
                "config's own max_length); longer sides are truncated and counted, pairs "
                "whose response vanishes are skipped"})
    truncation: str = field(default="keep_start", metadata={
        "help": f"what to keep when too long: {', '.join(TRUNCATIONS)}"})
    chat_template: str = field(default="auto", metadata={
        "help": f"prompt rendering: {', '.join(CHAT_TEMPLATE_MODES)}"})
    strict: bool = field(default=False, metadata={
        "help": "fail on unusable rows instead of skipping and counting them"})

    # Names of the options the user set (command line or --config file); filled in by
    # parse_train_args. Not a dataclass field, so not a flag.
    explicit = frozenset[str]()

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

    def _refuse_ignored_options(self, source: str, stats: dict[str, Any]) -> None:
        """A labelled directory fixed its labelling options; refuse set ones that differ."""
        labelled_with = stats.get("config") or {}
        ignored = []
        for name in LABELING_OPTIONS:
            value = getattr(self, name)
            if name in self.explicit and name in labelled_with and value != labelled_with[name]:
                ignored.append(f"--{name} {value} (labelled with {labelled_with[name]})")
        for name, flag in RAW_DATA_OPTIONS.items():
            if name in self.explicit and getattr(self, name):
                ignored.append(f"{flag} (applies to raw pairs only)")
        if ignored:
            raise ValueError(
                f"{source} is a directory written by `editalign label`, whose labels are "
                f"fixed, so these options would be ignored: {'; '.join(ignored)}. Relabel with "
                "`editalign label` and those options, pass the raw pairs file as --data, or "
                "leave the options out")

    def _load_one(self, source: str, tokenizer: Any) -> list[LabeledPair]:
        from editalign.data.io import read_labeled
        from editalign.data.pairs import load_pairs, parse_field_mapping

        if (Path(source) / "stats.json").is_file():
            labeled, stats = read_labeled(source)
            self._refuse_ignored_options(source, stats)
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
        if not pairs:
            raise ValueError(f"{source}: no usable pairs ({report.summary()})")
        config = self.labeling_config()
        labeled, stats = label_pairs(pairs, tokenizer, config, strict=self.strict)
        logger.info("%s", stats.summary())
        warning = check_labeled(stats, config, source, max_length_flag="--max_length",
                                truncation_flag="--truncation")
        if warning:
            logger.warning("%s: %s", source, warning)
        return labeled
