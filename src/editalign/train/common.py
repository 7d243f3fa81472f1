"""What every trainer shares: model/LoRA arguments and the trainer registry (the data
arguments are :class:`editalign.data.arguments.DataArguments`).

Each method lives in its own module (config + trainer side by side) with a ``run(argv)``
entry point named in the :data:`TRAINERS` table; ``editalign train METHOD ...`` dispatches
to it. Arguments are parsed with TRL's ``TrlParser`` so ``--config x.yaml``
(values become defaults) and every ``transformers.TrainingArguments`` flag work the same
way as in TRL's own scripts.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from editalign.outputs import lock_scope

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
    "grpo": TrainerSpec("editalign.train.grpo:run",
                        "GRPO (TRL GRPOTrainer) with per-token advantages from a token RM or "
                        "a DPO policy's implicit reward"),
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
    # The --output_dir lock a trainer takes is released when it returns (the benchmark runs
    # many trainers in one process).
    if name in TRAINERS or name in _EXTRA:
        trainer = TRAINERS[name].load() if name in TRAINERS else _EXTRA[name][0]
        try:
            with lock_scope():
                return trainer(argv)
        finally:
            _end_process_group()
    raise ValueError(f"unknown trainer {name!r}; available: "
                     f"{', '.join(sorted([*TRAINERS, *_EXTRA]))}")


def _end_process_group() -> None:
    """Under torchrun / accelerate launch the Trainer leaves its process group up; left to
    interpreter exit, gloo's threads sometimes abort a rank ("terminate called without an
    active exception", exit -6) after the run has saved everything, failing the launch."""
    if "torch.distributed" not in sys.modules:  # nothing was launched: keep torch unloaded
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_max_steps(max_steps: int) -> None:
    """``--max_steps``: a positive step count, or -1 (transformers' "not set": train by
    ``--num_train_epochs``). transformers itself trains one step for 0 and silently trains
    by epochs for any other negative value."""
    if max_steps == -1 or max_steps >= 1:
        return
    raise ValueError(f"--max_steps must be a positive number of optimizer steps, or -1 to "
                     f"train by --num_train_epochs; got {max_steps}")


@dataclass
class RLScriptArguments:
    """Where an RL trainer's prompts and reward model come from: the options ``editalign
    train ppo`` and ``editalign train grpo`` share (each adds its ``--reward`` and the rest)."""

    prompts: str | None = field(default=None, metadata={
        "help": "prompts: any pairs file `editalign label` reads (its prompts are used), or "
                "JSON/JSONL rows with a prompt field"})
    prompt_field: str = field(default="prompt", metadata={"help": "prompt column of --prompts"})
    limit: int | None = field(default=None, metadata={"help": "use only the first N prompts"})
    reward_model: str | None = field(default=None, metadata={
        "help": "directory of a reward model trained with `editalign train token-rm|rm`, or "
                "with --reward dpo a policy trained with `editalign train dpo`"})


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
