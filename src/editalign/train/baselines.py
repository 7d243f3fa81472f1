"""Baselines with the community's own code: TRL's ``SFTTrainer`` and ``DPOTrainer``.

- ``editalign train sft``: SFT on the revised responses (loss on response tokens only).
- ``editalign train dpo``: DPO with the revised response preferred over the original.

Both read the same pairs as FIGA (raw pairs labelled on the fly, or an ``editalign label``
directory) and are fed *pre-tokenized* sequences built from the very token ids FIGA
trains on, so the three methods see identical tokenization (prompt rendering, chat
template, EOS, truncation). Options: ``--model``/LoRA/data flags as for FIGA, plus every
``trl.SFTConfig`` / ``trl.DPOConfig`` flag.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from editalign.data.align import IGNORE
from editalign.data.labeling import LabeledPair
from editalign.train.cli import finish, load_policy, parse_train_args, resume_arg

logger = logging.getLogger(__name__)


def sft_dataset(pairs: Sequence[LabeledPair]) -> Any:
    """Revised sides as a pre-tokenized TRL SFT data set: ``input_ids`` and ``labels``
    (the token ids on the response and its EOS, -100 on the prompt)."""
    import datasets

    return datasets.Dataset.from_dict({
        "input_ids": [lp.revised.input_ids for lp in pairs],
        "labels": [[t if lab != IGNORE else IGNORE for t, lab in
                    zip(lp.revised.input_ids, lp.revised.labels, strict=True)]
                   for lp in pairs],
    })


def dpo_dataset(pairs: Sequence[LabeledPair]) -> Any:
    """Pairs as a pre-tokenized TRL DPO data set: chosen = revised, rejected = original.

    The prompt is the common token prefix of both sides (the sides may differ in their
    last prompt token when the tokenizer merges across the boundary, see labeling.py).
    """
    import datasets

    rows: dict[str, list[list[int]]] = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    for lp in pairs:
        chosen, rejected = lp.revised.input_ids, lp.original.input_ids
        p = min(lp.revised.response_start, lp.original.response_start)
        while p > 0 and chosen[:p] != rejected[:p]:
            p -= 1
        rows["prompt_ids"].append(chosen[:p])
        rows["chosen_ids"].append(chosen[p:])
        rows["rejected_ids"].append(rejected[p:])
    return datasets.Dataset.from_dict(rows)


def _pretokenized_dpo_trainer() -> type:
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        """TRL's DPOTrainer, fed ``prompt_ids``/``chosen_ids``/``rejected_ids`` directly.

        TRL tokenizes text prompts itself; only that step is skipped here (and its
        ``max_length`` filter kept), so DPO trains on FIGA's exact token ids.
        """

        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any,
                             dataset_name: str) -> Any:
            if "prompt_ids" not in dataset.column_names:
                return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            if args.max_length is not None and args.truncation_mode == "keep_start":
                before = len(dataset)
                dataset = dataset.filter(lambda ex: len(ex["prompt_ids"]) < args.max_length)
                if len(dataset) < before:
                    logger.info("%s: skipped %d pairs whose prompt fills max_length",
                                dataset_name, before - len(dataset))
            return dataset

    return PretokenizedDPOTrainer


def run_sft(argv: Sequence[str]) -> int:
    from trl import SFTConfig, SFTTrainer

    model_args, data_args, config = parse_train_args(SFTConfig, argv)
    model, tokenizer = load_policy(model_args, config)
    train, evaluation = data_args.load(tokenizer)
    trainer = SFTTrainer(model=model, args=config, train_dataset=sft_dataset(train),
                         eval_dataset=sft_dataset(evaluation) if evaluation else None,
                         processing_class=tokenizer)
    return finish(trainer, config, resume_arg(config))


def run_dpo(argv: Sequence[str]) -> int:
    from trl import DPOConfig

    model_args, data_args, config = parse_train_args(DPOConfig, argv)
    model, tokenizer = load_policy(model_args, config)
    train, evaluation = data_args.load(tokenizer)
    trainer = _pretokenized_dpo_trainer()(
        model=model, args=config, train_dataset=dpo_dataset(train),
        eval_dataset=dpo_dataset(evaluation) if evaluation else None,
        processing_class=tokenizer)
    return finish(trainer, config, resume_arg(config))
