"""The command-line plumbing every ``editalign train METHOD`` shares: parse the flags, load
the policy, train and save.

One flag, one owner: the data options (``--data``, ``--granularity``, ``--max_length``, ...)
are declared by :class:`~editalign.data.arguments.DataArguments` alone. A trainer config that
needs one of them too (TRL's ``SFTConfig``/``DPOConfig`` and FIGA's cut ``max_length``,
the reward config's) declares no second flag for it: :class:`TrainParser` hands the parsed
value to every dataclass that has a field of that name.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from trl import TrlParser

from editalign.data.arguments import DataArguments
from editalign.models import (
    load_model,
    load_tokenizer,
    resolve_model_path,
    tokenizer_fingerprint,
    weights_problem,
)
from editalign.outputs import check_dir, check_finite, claim_dir
from editalign.train.common import ModelArguments, check_max_steps, given_options, run_trainer

logger = logging.getLogger(__name__)


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
    if not sys.stderr.isatty():
        # A log file or a child process gets the logging steps' lines, not a bar redrawn
        # hundreds of times; a --config value or --disable_tqdm False still wins.
        parser.set_defaults(disable_tqdm=True)
    model_args, data_args, config = parser.parse_args_and_config(argv)
    check_max_steps(config.max_steps)
    check_train_options(model_args, data_args, config)
    stop_if_parse_only()
    # Before any model is loaded: the output directory is ours to write, and ours alone.
    claim_output_dir(config.output_dir, inputs={"--model": model_args.model,
                                                "--data": data_args.data,
                                                "--eval_data": data_args.eval_data})
    # What the user set (command line or --config), so a labelled directory can refuse
    # labelling options it would silently ignore.
    defaults = DataArguments()
    data_args.explicit = frozenset(
        given_options(argv) | {f.name for f in dataclasses.fields(DataArguments)
                               if getattr(data_args, f.name) != getattr(defaults, f.name)})
    # Seed before any model is built: a new reward head or LoRA adapter is initialised from
    # the global RNG, so without this two runs with the same --seed start differently.
    from transformers import set_seed

    set_seed(config.seed)
    return model_args, data_args, config


class _ParsedOnly(Exception):
    """Raised by :func:`stop_if_parse_only` inside :func:`check_train_argv`."""


_PARSE_ONLY: list[bool] = []


def stop_if_parse_only() -> None:
    """Every trainer calls this once its options are parsed and checked, before it touches
    a file or a model: inside :func:`check_train_argv` the run stops there."""
    if _PARSE_ONLY:
        raise _ParsedOnly


def check_train_argv(method: str, argv: Sequence[str]) -> None:
    """Parse ``editalign train METHOD ARGV`` with the trainer's own parser and checks, and
    stop before anything is read, written or loaded: raises ``ValueError`` with the
    parser's message when the options are wrong (``editalign loop`` validates its train
    stage this way before any other stage runs)."""
    import contextlib
    import io

    _PARSE_ONLY.append(True)
    messages = io.StringIO()
    try:
        with contextlib.redirect_stderr(messages), contextlib.redirect_stdout(io.StringIO()):
            run_trainer(method, list(argv))
    except _ParsedOnly:
        return
    except SystemExit as err:  # argparse: the message went to stderr
        lines = [line for line in messages.getvalue().splitlines() if line.strip()]
        raise ValueError(lines[-1] if lines else f"invalid options (exit {err.code})") from None
    finally:
        _PARSE_ONLY.pop()
    raise ValueError(f"editalign train {method} does not support checking its options "
                     "before it runs")


# Directories an `editalign train` wrote before the output marker existed.
TRAIN_LEGACY = (("trainer_state.json",), ("train_results.json",), ("checkpoint-*",),
                ("ppo_log.jsonl",), ("reward_config.json",))


def check_train_options(*parsed: Any) -> None:
    """NaN or infinite numbers refused, as every other command does (``--learning_rate
    nan``)."""
    check_finite({f.name: getattr(obj, f.name) for obj in parsed
                  for f in dataclasses.fields(obj) if f.init}, dashes=False)


def claim_output_dir(output_dir: str | None, *, inputs: dict[str, Any]) -> Path:
    """``--output_dir`` checked (an earlier training output, empty or new; not a file, not
    the starting model) and locked for this run: see :mod:`editalign.outputs`."""
    if not output_dir:
        raise ValueError("--output_dir is required")
    if launch_rank() != 0:
        # Under torchrun / accelerate launch every process parses the same command line:
        # the first process claims the directory for the run, the others only check it
        # (each taking the lock would refuse its own run as "in use").
        return check_dir(output_dir, flag="--output_dir", command="train", inputs=inputs,
                         legacy=TRAIN_LEGACY)
    return claim_dir(output_dir, flag="--output_dir", command="train", inputs=inputs,
                     legacy=TRAIN_LEGACY)


def launch_rank() -> int:
    """This process's global rank as torchrun and accelerate launch set it (0 unlaunched)."""
    rank = os.environ.get("RANK", "0")
    return int(rank) if rank.isdigit() else 0


def _has_accelerator() -> bool:
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def resume_arg(config: Any) -> str | None:
    """The checkpoint directory to resume from, one rule for every trainer (PPO too).

    ``--resume_from_checkpoint DIR`` must be a complete checkpoint; ``true``/``last`` is the
    newest complete ``checkpoint-N`` in ``--output_dir``: an incomplete newer one (a save
    interrupted by a crash) is skipped with a warning. Complete means the trainer state
    file, which every trainer writes last, is valid JSON and the weights it saved are all
    readable (see :func:`checkpoint_problem`). Problems raise ``ValueError`` naming the file.
    """
    import re

    value = config.resume_from_checkpoint
    if value is None or value is False or (isinstance(value, str) and not value):
        return None
    if value is True or str(value).lower() in ("true", "last"):
        output = Path(config.output_dir)
        numbered = sorted(((int(m.group(1)), d) for d in output.glob("checkpoint-*")
                           if d.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", d.name))),
                          reverse=True)
        for _, directory in numbered:
            problem = checkpoint_problem(directory)
            if problem is None:
                return str(directory)
            logger.warning("skipping incomplete checkpoint %s: %s", directory, problem)
        raise ValueError(f"--resume_from_checkpoint {value}: no complete checkpoint-N directory "
                         f"in {output}" + (f" ({len(numbered)} incomplete)" if numbered else ""))
    problem = checkpoint_problem(value)
    if problem is not None:
        raise ValueError(f"--resume_from_checkpoint {value}: {problem}")
    return str(value)


CHECKPOINT_STATE = "trainer_state.json"  # transformers' Trainer and PPO both write it last


def checkpoint_problem(directory: str | Path) -> str | None:
    """Why ``directory`` is not a complete checkpoint (naming the file), or ``None``.

    A finished checkpoint has ``trainer_state.json`` (written after everything else by
    transformers' ``Trainer`` and by PPO) holding valid JSON, and readable weights: the
    model files in the directory itself, or PPO's ``policy/`` sub-directory.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return f"{directory}: no such checkpoint directory"
    state = directory / CHECKPOINT_STATE
    if not state.is_file():
        return (f"{state}: missing (the file a checkpoint gets last: the save was "
                "interrupted)")
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return f"{state}: not valid JSON ({err}); the checkpoint is corrupt or half-written"
    weights = directory / "policy" if (directory / "policy").is_dir() else directory
    return weights_problem(weights)


def load_policy(model_args: ModelArguments, config: Any) -> tuple[Any, Any]:
    """The policy (LoRA-wrapped when ``--lora_r`` > 0) and its tokenizer."""
    path = resolve_model_path(model_args.model)
    tokenizer = load_tokenizer(path)
    model = load_model(path, **model_args.model_kwargs())
    peft_config = model_args.peft_config()
    if peft_config is not None:
        from peft import get_peft_model

        if getattr(config, "gradient_checkpointing", False):
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=config.gradient_checkpointing_kwargs)
        model = get_peft_model(model, peft_config)
        model.print_trainable_parameters()
    return model, tokenizer


def check_same_tokenizer(tokenizer: Any, directory: str) -> None:
    """A DPO policy read as a reward (``--reward dpo``, PPO and GRPO) must read the policy's
    token ids as the same tokens."""
    if tokenizer_fingerprint(load_tokenizer(directory)) != tokenizer_fingerprint(tokenizer):
        raise ValueError(f"--reward dpo: {directory} has another tokenizer than --model; the "
                         "implicit reward needs the policy's token ids")


def finish(trainer: Any, config: Any, resume: Any) -> int:
    """Train (resuming when asked), save the model and tokenizer, log the final metrics.

    SIGTERM or Ctrl-C saves a checkpoint at the end of the step and says how to resume
    (exit 130); a full disk and a checkpoint holding a pickle are one-line errors (see
    :mod:`editalign.train.stopping`)."""
    import pickle

    from editalign.train.stopping import StopOnSignal, disk_full, refused_pickle

    stop = StopOnSignal()
    trainer.add_callback(stop)
    try:
        with stop.installed():
            result = trainer.train(resume_from_checkpoint=resume)
    except pickle.UnpicklingError:
        raise refused_pickle(resume) from None
    except Exception as err:  # torch, safetensors and Python each say a full disk their way
        full = disk_full(err, config.output_dir)
        if full is None:
            raise
        raise full from None
    if stop.stopped_at is not None:
        saved = Path(config.output_dir) / f"checkpoint-{stop.stopped_at}"
        print(f"interrupted: stopped after step {stop.stopped_at} of {trainer.state.max_steps};"
              f" checkpoint saved to {saved}. Resume with the same command and "
              "--resume_from_checkpoint last", flush=True)
        return 130
    trainer.save_model(config.output_dir)
    trainer.save_state()  # trainer_state.json: log_history (loss curves for reports)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    if trainer.eval_dataset is not None and len(trainer.eval_dataset):
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return 0
