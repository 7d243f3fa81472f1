"""The command-line plumbing every ``editalign train METHOD`` shares: parse the flags, load
the policy, train and save.

One flag, one owner: the data options (``--data``, ``--granularity``, ``--max_length``, ...)
are declared by :class:`~editalign.train.common.DataArguments` alone. A trainer config that
needs one of them too (TRL's ``SFTConfig``/``DPOConfig`` and FIGA's cut ``max_length``,
the reward config's) declares no second flag for it: :class:`TrainParser` hands the parsed
value to every dataclass that has a field of that name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from trl import TrlParser

from editalign.train.common import DataArguments, ModelArguments


class TrainParser(TrlParser):
    """TRL's parser (``--config x.yaml``, every TrainingArguments flag), where a field that
    several of the dataclasses have is one flag, declared by the first dataclass that lists
    it, and its value goes to each of them."""

    def _add_dataclass_arguments(self, dtype: Any) -> None:
        declared = {action.dest for action in self._actions}
        if not declared & {f.name for f in dataclasses.fields(dtype)}:
            super()._add_dataclass_arguments(dtype)
            return
        from typing import get_type_hints

        hints = get_type_hints(dtype)
        for f in dataclasses.fields(dtype):
            if f.init and f.name not in declared:
                f.type = hints[f.name]
                self._parse_dataclass_field(self, f)

    def parse_args_into_dataclasses(self, args: Any = None, return_remaining_strings: bool = False,
                                    **_: Any) -> tuple[Any, ...]:
        namespace, remaining = self.parse_known_args(args=args)
        values = vars(namespace)
        outputs = [dtype(**{f.name: values[f.name] for f in dataclasses.fields(dtype)
                            if f.init and f.name in values})
                   for dtype in self.dataclass_types]
        if return_remaining_strings:
            return (*outputs, remaining)
        if remaining:
            raise ValueError(f"Some specified arguments are not used by the HfArgumentParser: "
                             f"{remaining}")
        return tuple(outputs)


def parse_train_args(config_cls: type, argv: Sequence[str],
                     ) -> tuple[ModelArguments, DataArguments, Any]:
    """Parse ``editalign train METHOD`` flags: model/LoRA, data and the trainer config.

    ``--config x.yaml`` (values become defaults) and every TrainingArguments flag work as in
    TRL's own scripts; a data option the trainer config also has (``max_length``) reaches
    both from its one flag.
    """
    argv = list(argv)
    if not _has_accelerator() and "--use_cpu" not in argv:
        argv += ["--use_cpu", "True"]  # TRL's configs would otherwise ask for bf16 on CPU
    parser = TrainParser((ModelArguments, DataArguments, config_cls))
    model_args, data_args, config = parser.parse_args_and_config(argv)
    # Seed before any model is built: a new reward head or LoRA adapter is initialised from
    # the global RNG, so without this two runs with the same --seed start differently.
    from transformers import set_seed

    set_seed(config.seed)
    return model_args, data_args, config


def _has_accelerator() -> bool:
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def resume_arg(config: Any) -> Any:
    """``--resume_from_checkpoint DIR``, or ``true``/``last`` for the newest checkpoint."""
    value = config.resume_from_checkpoint
    if isinstance(value, str) and value.lower() in ("true", "last"):
        return True
    return value


def load_policy(model_args: ModelArguments, config: Any) -> tuple[Any, Any]:
    """The policy (LoRA-wrapped when ``--lora_r`` > 0) and its tokenizer."""
    from editalign.models import load_model, load_tokenizer, resolve_model_path

    path = resolve_model_path(model_args.model)
    tokenizer = load_tokenizer(path)
    model = load_model(path, dtype=model_args.torch_dtype())
    peft_config = model_args.peft_config()
    if peft_config is not None:
        from peft import get_peft_model

        if getattr(config, "gradient_checkpointing", False):
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=config.gradient_checkpointing_kwargs)
        model = get_peft_model(model, peft_config)
        model.print_trainable_parameters()
    return model, tokenizer


def finish(trainer: Any, config: Any, resume: Any) -> int:
    """Train (resuming when asked), save the model and tokenizer, log the final metrics."""
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(config.output_dir)
    trainer.save_state()  # trainer_state.json: log_history (loss curves for reports)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    if trainer.eval_dataset is not None and len(trainer.eval_dataset):
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return 0
