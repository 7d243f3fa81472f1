"""``DataArguments``: the one owner of the data options of every command that loads pairs.

The trainers parse it beside their config (``editalign train METHOD --data ...``);
``editalign score`` and the benchmark report build one directly. Labelling happens on the
fly for a raw pairs file; an ``editalign label`` directory is read as labelled, after
checking its tokenizer and refusing options it would silently ignore.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import random
import typing
from collections.abc import Mapping, Sequence
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
from editalign.data.pairs import load_pairs, parse_field_mapping
from editalign.data.presets import PRESETS

logger = logging.getLogger(__name__)

# Options that only shape how raw pairs are labelled (an `editalign label` directory records
# them in stats.json "config"), and options that only shape how raw pairs are read.
LABELING_OPTIONS = ("granularity", "truncation", "chat_template")
RAW_DATA_OPTIONS = {"preset": "--preset", "field_map": "--field", "split": "--split"}



@dataclass
class DataArguments:
    """Edit pairs to train on: a pairs file (labelled on the fly) or an ``editalign label`` dir."""

    data: str | None = field(default=None, metadata={
        "help": "pairs file (.jsonl/.json/.parquet/.csv, optionally .gz), a saved datasets "
                "directory, or the output directory of `editalign label`"})
    preset: str | None = field(default=None, metadata={
        "help": f"field layout: {', '.join(PRESETS)} (auto-detected)"})
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

        if (Path(source) / "stats.json").is_file():
            # Here, not at the top: every command's parser imports this module, and
            # editalign.models loads torch and transformers (seconds of `editalign --help`).
            from editalign.models import tokenizer_fingerprint

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


# --------------------------------------------------------------------------- command options

# How the commands (label, score, revise, annotate) spell DataArguments' options: dashes, as
# every other command flag, with the trainers' underscore spelling accepted as an alias; the
# field mapping is one ``--field KEY=COLUMN`` per use (the trainers take a list).
COMMAND_OPTIONS: dict[str, dict[str, Any]] = {
    "data": {},
    "preset": {"choices": list(PRESETS),
               "help": "field layout of the data (auto-detected when omitted)"},
    "field_map": {"flags": ["--field"], "dest": "field", "action": "append", "default": [],
                  "metavar": "KEY=COLUMN",
                  "help": "explicit field mapping, e.g. --field prompt=question "
                          "--field original=answer --field revised=fixed.answer (dotted paths "
                          "reach into nested objects); repeatable"},
    "split": {"help": "split of a saved DatasetDict (default: train)"},
    "limit": {},
    "strict": {"help": "fail on the first unusable row instead of skipping and counting it"},
    "max_length": {"help": "longest prompt+response+EOS in tokens; 0 for no limit"},
    "granularity": {"choices": list(GRANULARITIES)},
    "truncation": {"choices": list(TRUNCATIONS)},
    "chat_template": {"choices": list(CHAT_TEMPLATE_MODES)},
}


def add_data_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                       names: Sequence[str], *, help: Mapping[str, str] | None = None,
                       defaults: Mapping[str, Any] | None = None) -> None:
    """Declare the DataArguments options ``names`` on a command's parser, in that order.

    Their types and defaults come from :class:`DataArguments` (``defaults`` overrides one, e.g.
    a command without a length limit); the spelling and choices from :data:`COMMAND_OPTIONS`;
    ``help`` replaces an option's help where a command means something more specific.
    """
    known = {f.name: f for f in dataclasses.fields(DataArguments)}
    hints = typing.get_type_hints(DataArguments)
    for name in names:
        spec = dict(COMMAND_OPTIONS[name])
        flags = spec.pop("flags", None) or [f"--{name.replace('_', '-')}"] + (
            [f"--{name}"] if "_" in name else [])
        f = known[name]
        default = spec.pop("default", f.default_factory() if callable(f.default_factory)
                           else f.default)
        if defaults and name in defaults:
            default = defaults[name]
        spec.setdefault("help", f.metadata.get("help"))
        if help and name in help:
            spec["help"] = help[name]
        kind = _option_type(hints[name])
        if kind is bool:
            parser.add_argument(*flags, action="store_true", **spec)
            continue
        if "action" not in spec:
            spec["type"] = kind
        parser.add_argument(*flags, default=default, **spec)


def _option_type(hint: Any) -> type:
    """``int | None`` -> int, ``str`` -> str, ``list[str]`` -> str (one item per use)."""
    args = [a for a in typing.get_args(hint) or (hint,) if a is not type(None)]
    return args[0] if len(args) == 1 and isinstance(args[0], type) else str
