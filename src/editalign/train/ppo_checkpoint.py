"""PPO checkpoints: save and resume a :class:`~editalign.train.ppo.PPOTrainer` without
pickles (safetensors weights, tensors loaded with ``weights_only=True``, a JSON state)."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

STATE_NAME = "trainer_state.json"
STATE_FORMAT = "editalign-ppo-1"
LEGACY_STATE_NAME = "trainer_state.pt"  # a pickle (editalign before the JSON state)
VALUE_NAME = "value_model.pt"
OPTIMIZER_NAME = "optimizer.pt"
RNG_NAME = "rng_state.pt"


def _load_tensors(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never code."""
    import pickle

    if not path.is_file():
        raise ValueError(f"{path}: missing; the checkpoint is incomplete")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: refused: it holds objects other than tensors and plain "
                         f"containers, and loading it could run code ({first})") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path}: unreadable ({err}); the file is truncated or corrupt"
                         ) from None


def _read_state(path: Path) -> dict[str, Any]:
    """``trainer_state.json``, with its fields checked (a wrong value names the field)."""
    state = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: not a PPO trainer state (format {STATE_FORMAT!r} expected)")
    expected = {"iteration": int, "kl_coef": (int, float), "history": list,
                "prompt_order": list, "python_rng": list}
    for key, kind in expected.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise ValueError(f"{path}: field {key!r} is missing or not "
                             f"{getattr(kind, '__name__', 'a number')}")
    rng = state["python_rng"]
    if len(rng) != 3 or not isinstance(rng[1], list):
        raise ValueError(f"{path}: field 'python_rng' is not a Python random state")
    return state


class CheckpointMixin:
    """``save_checkpoint``/``load_checkpoint`` of :class:`~editalign.train.ppo.PPOTrainer`,
    apart from the training steps; they read and restore these attributes of the trainer."""

    accelerator: Any
    policy: Any
    value_model: Any
    optimizer: Any
    tokenizer: Any
    kl_ctl: Any
    iteration: int
    history: list[dict[str, float]]
    _prompt_order: list[int]


    def save_checkpoint(self, directory: str | Path) -> None:
        """Policy, value model, optimizer, iteration, KL coefficient and RNG states.

        Nothing in a checkpoint is a pickle of arbitrary objects: weights are safetensors,
        the optimizer and RNG states are tensors in plain containers (loaded with
        ``torch.load(weights_only=True)``), the rest is ``trainer_state.json``, written last
        so that a checkpoint without it is known to be incomplete.
        """
        directory = Path(directory)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / STATE_NAME).unlink(missing_ok=True)  # incomplete until rewritten
            self.accelerator.unwrap_model(self.policy).save_pretrained(directory / "policy")
            self.tokenizer.save_pretrained(directory / "policy")
            value_state = self.accelerator.unwrap_model(self.value_model).state_dict()
            torch.save({k: v.detach().cpu() for k, v in value_state.items()},
                       directory / VALUE_NAME)
            torch.save(self.optimizer.state_dict(), directory / OPTIMIZER_NAME)
            rng: dict[str, Tensor] = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng.update({f"cuda{i}": state
                            for i, state in enumerate(torch.cuda.get_rng_state_all())})
            torch.save(rng, directory / RNG_NAME)
            version, internal, gauss = random.getstate()
            state = {"format": STATE_FORMAT, "iteration": self.iteration,
                     "kl_coef": self.kl_ctl.value, "history": self.history,
                     "prompt_order": self._prompt_order,
                     "python_rng": [version, list(internal), gauss]}
            tmp = directory / f".{STATE_NAME}.tmp"
            tmp.write_text(json.dumps(state, allow_nan=False), encoding="utf-8")
            tmp.replace(directory / STATE_NAME)
        self.accelerator.wait_for_everyone()

    def load_checkpoint(self, directory: str | Path) -> None:
        """Resume from :meth:`save_checkpoint`'s directory. Every file is loaded without
        running code from it (safetensors, ``weights_only=True``, JSON); a file holding
        anything else, or one that is missing or corrupt, raises ``ValueError`` naming it."""
        from peft import set_peft_model_state_dict

        from editalign.train.cli import checkpoint_problem

        directory = Path(directory)
        if (directory / LEGACY_STATE_NAME).is_file() and not (directory / STATE_NAME).is_file():
            raise ValueError(
                f"{directory / LEGACY_STATE_NAME}: a checkpoint of an older editalign whose "
                "trainer state is a pickle; it is not loaded because unpickling can run code. "
                "Start a fresh run (or resume from a checkpoint written by this version)")
        problem = checkpoint_problem(directory)
        if problem is not None:
            raise ValueError(f"cannot resume from {directory}: {problem}")
        state = _read_state(directory / STATE_NAME)
        policy = self.accelerator.unwrap_model(self.policy)
        if hasattr(policy, "peft_config"):
            from safetensors.torch import load_file

            adapter = directory / "policy" / "adapter_model.safetensors"
            if not adapter.is_file():
                raise ValueError(f"{adapter}: missing (the policy is a LoRA model)")
            set_peft_model_state_dict(policy, load_file(str(adapter)))
        else:
            from transformers import AutoModelForCausalLM

            from editalign.models import SAFE_LOAD

            loaded = AutoModelForCausalLM.from_pretrained(directory / "policy", **SAFE_LOAD)
            policy.load_state_dict(loaded.state_dict())
        self.accelerator.unwrap_model(self.value_model).load_state_dict(
            _load_tensors(directory / VALUE_NAME))
        self.optimizer.load_state_dict(_load_tensors(directory / OPTIMIZER_NAME))
        rng = _load_tensors(directory / RNG_NAME)
        self.iteration, self.kl_ctl.value = state["iteration"], state["kl_coef"]
        self.history, self._prompt_order = state["history"], state["prompt_order"]
        version, internal, gauss = state["python_rng"]
        random.setstate((version, tuple(internal), gauss))
        torch.set_rng_state(rng["torch"])
        cuda = [rng[f"cuda{i}"] for i in range(len(rng) - 1) if f"cuda{i}" in rng]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda[:torch.cuda.device_count()])
        logger.info("resumed PPO from %s at iteration %d", directory, self.iteration)
