"""Dense GRPO on TRL's ``GRPOTrainer``: per-token advantages from editalign's reward sources.

TRL computes one advantage per completion (the group-normalised outcome reward). This
subclass keeps all of TRL (generation with or without vLLM, LoRA, accelerate/DeepSpeed/FSDP,
every ``loss_type``, ``num_iterations``, ``beta``, the logging) and adds one term:

    A_{i,t} = A_i^TRL + λ·(u_{i,t} − mean_g u) / (std_g u + ε)        (docs/methods.md §4b)

where A_i^TRL is TRL's own advantage (so at λ = 0 the run *is* stock GRPO), u the token
rewards of an editalign reward source (``--reward token``: a token RM; ``dpo``: a DPO
policy's implicit reward; or their reward-to-go) and g the completion's group, normalised
over every response token of the group by :func:`editalign.losses.group_token_term`, the
token term of :func:`editalign.losses.dense_group_advantages`. TRL's ``_compute_loss``
takes advantages of shape (B, T) as they are.

How it hooks TRL 1.16 (``tests/test_grpo.py`` fails, naming the method, if they change):

- ``_generate`` is wrapped to keep each rollout's prompt ids, so the reward source reads
  exactly the token ids the policy saw;
- the reward source is one of TRL's reward functions (its ``sequence`` score is the
  completion's reward, weighted and group-normalised by TRL like any other), and while
  scoring it keeps its (rows, T) token rewards;
- ``_generate_and_score_completions`` calls TRL's, then gathers the token rewards of every
  process (padded to one width), computes the token term over the whole groups and adds
  λ times it to this process's rows.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from trl import GRPOConfig, GRPOTrainer

import editalign.reward_sources as sources
from editalign.losses import TOKEN_TERMS, group_token_term
from editalign.options import check_choice
from editalign.train.common import ModelArguments, RLScriptArguments

logger = logging.getLogger(__name__)

# The TRL version whose private hooks this trainer overrides (pyproject pins the range).
HOOKED_TRL = "1.16"
HOOKS = {
    "_generate": ["prompts"],
    "_generate_and_score_completions": ["inputs"],
    "_calculate_rewards": ["inputs", "prompts", "completions", "completion_ids_list"],
    "_compute_loss": ["model", "inputs"],
}
# Lines of TRL's source this trainer relies on: where the hooks are called, what the output
# carries, and that the loss takes (B, T) advantages as they are.
LANDMARKS = {
    "_generate": ["return prompt_ids, completion_ids,"],
    "_generate_and_score_completions": [
        "= self._generate(prompts)",
        "self._calculate_rewards(inputs, prompts, completions, completion_ids_list)",
        "advantages = advantages[process_slice]", '"advantages": advantages',
        '"completion_mask": completion_mask'],
    "_calculate_rewards": ["completion_ids=completion_ids_list"],
    "_compute_loss": ["if advantages.dim() == 1:"],
}


@dataclass
class DenseGRPOConfig(GRPOConfig):
    """TRL's ``GRPOConfig`` (every option applies) plus the token term of the advantage."""

    token_coef: float = field(default=1.0, metadata={
        "help": "λ: weight of the group-normalised token term; 0 = stock GRPO"})
    token_term: str = field(default="reward_to_go", metadata={
        "help": f"per-token term: {', '.join(TOKEN_TERMS)} (Σ_{{s≥t}} r_s, or r_t itself)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("token_term", self.token_term, TOKEN_TERMS)


class SourceReward:
    """An editalign reward source as a TRL reward function (one float per completion).

    TRL calls it inside ``_calculate_rewards`` with this process's completions; it scores
    them with the source on ``prompt ids + completion ids`` and leaves the token rewards
    for the trainer."""

    def __init__(self, source: sources.RewardSource, trainer: DenseGRPOTrainer) -> None:
        self.source = source
        self.trainer = trainer
        self.__name__ = source.name  # TRL names the metric rewards/<name>/mean

    def __call__(self, prompts: list[Any], completions: list[Any],
                 completion_ids: list[list[int]], **_: Any) -> list[float]:
        prompt_ids = self.trainer._rollout_prompt_ids
        if prompt_ids is None or len(prompt_ids) != len(completion_ids):
            raise RuntimeError("the rollout's prompt ids are missing: DenseGRPOTrainer._generate "
                               "did not run before the rewards (a TRL change?)")
        device = self.trainer.accelerator.device
        pad = self.trainer.processing_class.pad_token_id
        batch = sources.right_padded(prompt_ids, completion_ids, pad, device)
        scores = self.source.score(*batch)
        self.trainer._token_rewards = scores.tokens
        return scores.sequence.float().tolist()


class DenseGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose advantages are per token (see the module docstring).

    ``reward_source``: an :mod:`editalign.reward_sources` source; it is appended to
    ``reward_funcs`` (which may hold any TRL reward functions beside it). Without a dense
    source, or with ``token_coef = 0``, the advantages are TRL's.
    """

    def __init__(self, model: Any, reward_funcs: Any = None, args: DenseGRPOConfig | None = None,
                 *, reward_source: sources.RewardSource | None = None, **kwargs: Any) -> None:
        check_trl_hooks()  # fail loudly, naming the method, on a TRL this was not built on
        funcs = list(reward_funcs) if isinstance(reward_funcs, list | tuple) else \
            ([] if reward_funcs is None else [reward_funcs])
        self._rollout_prompt_ids: list[list[int]] | None = None
        self._token_rewards: Tensor | None = None
        self.reward_source = reward_source
        if reward_source is not None:
            funcs.append(SourceReward(reward_source, self))
        if not funcs:
            raise ValueError("no reward: give a reward source or a TRL reward function")
        super().__init__(model, reward_funcs=funcs, args=args, **kwargs)
        self.token_coef = float(getattr(self.args, "token_coef", 0.0))
        self.token_term = getattr(self.args, "token_term", "reward_to_go")

    @property
    def dense(self) -> bool:
        return self.reward_source is not None and self.reward_source.dense and \
            self.token_coef != 0

    def _generate(self, prompts: list) -> tuple:
        out = super()._generate(prompts)
        self._rollout_prompt_ids = [list(ids) for ids in out[0]]
        return out

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        self._token_rewards = None
        output = super()._generate_and_score_completions(inputs)
        if not self.dense:
            return output
        if self._token_rewards is None:
            raise RuntimeError("the reward source was not called during scoring (a TRL change?)")
        mask = output["completion_mask"]
        if "tool_mask" in output:
            mask = mask * output["tool_mask"]
        term = self._token_term(self._token_rewards, mask)
        # TRL's (B,) outcome advantage over the response, plus λ·token term (0 on padding).
        output["advantages"] = output["advantages"][:, None] * mask + self.token_coef * term
        mode = "train" if self.model.training else "eval"
        picked = self._token_rewards[mask[:, :self._token_rewards.shape[1]].bool()]
        # One gather for the logged means: token reward sum and count, |term| sum, tokens.
        stats = torch.stack([picked.sum(), picked.new_tensor(float(picked.numel())),
                             term.abs().sum().to(picked.dtype), mask.sum().to(picked.dtype)])
        total = self.accelerator.gather(stats).view(-1, 4).sum(0)
        self._metrics[mode]["token_reward/mean"].append((total[0] / total[1].clamp(min=1)).item())
        self._metrics[mode]["token_term/abs_mean"].append((total[2] / total[3].clamp(min=1)).item())
        return output

    def _token_term(self, token_rewards: Tensor, mask: Tensor) -> Tensor:
        """group_token_term over the global batch; this process's rows, (B, C) like ``mask``.

        A group's completions can sit on several processes (TRL's sampler spreads the G
        copies of a prompt over the global batch in order), so the token rewards and masks
        of every process are gathered, each padded to the widest process's width first.
        """
        rows, width = mask.shape
        local = token_rewards.new_zeros(rows, width)
        keep = min(width, token_rewards.shape[1])
        local[:, :keep] = token_rewards[:, :keep].to(local.dtype)
        local_mask = mask.to(local.dtype)
        stacked = torch.stack([local, local_mask])  # (2, B, C): one gather for both
        padded = self.accelerator.pad_across_processes(stacked, dim=2, pad_index=0)
        everything = self.accelerator.gather(padded.transpose(0, 1).contiguous())  # (N, 2, C')
        all_rewards, all_mask = everything[:, 0], everything[:, 1]
        mode = "train" if self.model.training else "eval"
        size = self.num_generations if mode == "train" else self.num_generations_eval
        group_ids = torch.arange(all_rewards.shape[0], device=all_rewards.device) // size
        term = group_token_term(all_rewards, all_mask, group_ids, token_term=self.token_term,
                                scale=self.scale_rewards)
        start = self.accelerator.process_index * rows
        return term[start:start + rows, :width]


def check_trl_hooks() -> None:
    """Raise naming the TRL method whose signature is not the one this trainer hooks."""
    import trl

    if not trl.__version__.startswith(HOOKED_TRL + "."):
        raise RuntimeError(f"DenseGRPOTrainer hooks TRL {HOOKED_TRL}.x private methods; "
                           f"TRL {trl.__version__} is installed")
    for name, params in HOOKS.items():
        method = getattr(GRPOTrainer, name, None)
        if method is None:
            raise RuntimeError(f"GRPOTrainer.{name} is gone from TRL {trl.__version__}")
        found = [p for p in inspect.signature(method).parameters if p != "self"]
        if found[:len(params)] != params:
            raise RuntimeError(f"GRPOTrainer.{name}{inspect.signature(method)} changed in TRL "
                               f"{trl.__version__}; DenseGRPOTrainer expects {params}")
    for name, lines in LANDMARKS.items():
        text = inspect.getsource(getattr(GRPOTrainer, name))
        missing = [line for line in lines if line not in text]
        if missing:
            raise RuntimeError(f"GRPOTrainer.{name} in TRL {trl.__version__} no longer has "
                               f"{missing}, which DenseGRPOTrainer relies on")


# ---------------------------------------------------------------------------- command line


@dataclass
class GRPOScriptArguments(RLScriptArguments):
    """Where prompts and rewards come from (``editalign train grpo``)."""

    reward: str = field(default="token", metadata={
        "help": "token: a token RM's rewards (sequence reward = their sum, plus the dense "
                "token term); sequence: the RM's last-token reward only (stock GRPO); dpo: "
                "the DPO policy's implicit reward β·(log π_DPO − log π_ref) per token (RTO); "
                "none: only --reward_funcs"})
    reward_funcs: list[str] = field(default_factory=list, metadata={
        "help": "TRL reward functions beside the source, as module:function (each "
                "fn(prompts, completions, **kwargs) -> list[float])"})
    dpo_beta: float = field(default=0.1, metadata={
        "help": "--reward dpo: the β the DPO policy was trained with"})
    dpo_reference: str | None = field(default=None, metadata={
        "help": "--reward dpo: the DPO policy's reference model (default: --model)"})
    chat_template: str = field(default="auto", metadata={
        "help": "prompt rendering: auto, always, never (as in editalign label)"})


GRPO_REWARDS = (*sources.SOURCE_KINDS, "none")


def trl_prompt(prompt: str | list[dict[str, str]], tokenizer: Any, mode: str) -> Any:
    """A prompt as TRL's GRPOTrainer takes it, rendered by editalign's one prompt rule:
    chat messages when the chat template applies (TRL applies it with the generation
    prompt, as ``render_prompt`` does), otherwise the text ``render_prompt`` gives."""
    from editalign.data.prompts import render_prompt

    has_template = getattr(tokenizer, "chat_template", None) is not None
    if has_template and mode != "never" and (isinstance(prompt, list) or mode == "always"):
        return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return render_prompt(prompt, tokenizer, mode)[0]  # type: ignore[arg-type]


def load_reward_funcs(names: Sequence[str]) -> list[Callable[..., Any]]:
    import importlib

    funcs = []
    for name in names:
        module, _, attr = name.partition(":")
        if not attr:
            raise ValueError(f"--reward_funcs {name!r}: expected module:function")
        funcs.append(getattr(importlib.import_module(module), attr))
    return funcs


def build_source(script: GRPOScriptArguments, model_args: Any, tokenizer: Any,
                 device: Any) -> sources.RewardSource | None:
    """The reward source ``--reward`` names, its models loaded onto ``device``."""
    from editalign.models import load_model
    from editalign.reward_model import TokenRewardModel
    from editalign.train.cli import check_same_tokenizer

    if script.reward == "none":
        return None
    if not script.reward_model:
        raise ValueError(f"--reward {script.reward} needs --reward_model")
    dtype = model_args.torch_dtype()
    if script.reward == "dpo":
        check_same_tokenizer(tokenizer, script.reward_model)
        dpo = load_model(script.reward_model, dtype=dtype).requires_grad_(False).eval()
        ref = load_model(script.dpo_reference or model_args.model, dtype=dtype)
        return sources.dpo_source(dpo.to(device), ref.requires_grad_(False).eval().to(device),
                                  script.dpo_beta)
    reward_model = TokenRewardModel.from_pretrained(script.reward_model, tokenizer=tokenizer)
    reward_model.requires_grad_(False).eval().to(device)
    return sources.make_source(script.reward, reward_model=reward_model)


def check_vllm(config: DenseGRPOConfig) -> None:
    if config.use_vllm:
        from trl.import_utils import is_vllm_available

        if not is_vllm_available():
            raise ValueError("--use_vllm: vLLM is not installed (pip install 'trl[vllm]'); "
                             "drop --use_vllm to generate with transformers")


def prompt_dataset(script: GRPOScriptArguments, tokenizer: Any) -> Any:
    """``--prompts`` as the ``datasets.Dataset`` of prompts GRPOTrainer samples from."""
    from datasets import Dataset

    from editalign.data.pairs import load_prompts

    prompts = load_prompts(script.prompts, field=script.prompt_field, limit=script.limit)
    if not prompts:
        raise ValueError(f"--prompts {script.prompts}: no prompts")
    return Dataset.from_dict({"prompt": [trl_prompt(p, tokenizer, script.chat_template)
                                         for p in prompts]})


def run(argv: Sequence[str]) -> int:
    """``editalign train grpo``: TRL's GRPO with per-token advantages from a token RM, a DPO
    policy's implicit reward, or (``--reward sequence``) stock GRPO on a sequence RM."""
    from trl import TrlParser

    from editalign.models import load_model, load_tokenizer, resolve_model_path
    from editalign.train.cli import (
        _has_accelerator,
        check_train_options,
        claim_output_dir,
        finish,
        resume_arg,
        stop_if_parse_only,
    )

    argv = list(argv)
    if not _has_accelerator() and "--use_cpu" not in argv:
        argv += ["--use_cpu", "True"]
    parser = TrlParser([ModelArguments, GRPOScriptArguments, DenseGRPOConfig])
    model_args, script, config = parser.parse_args_and_config(argv)
    check_choice("reward", script.reward, GRPO_REWARDS)
    check_vllm(config)
    check_trl_hooks()
    if not script.prompts:
        raise ValueError("--prompts is required")
    funcs = load_reward_funcs(script.reward_funcs)
    if script.reward == "none" and not funcs:
        raise ValueError("--reward none needs --reward_funcs")
    check_train_options(model_args, script, config)
    stop_if_parse_only()
    # Before any model is loaded: the output directory is ours to write, and ours alone.
    claim_output_dir(config.output_dir, inputs={"--model": model_args.model,
                                                "--reward_model": script.reward_model,
                                                "--prompts": script.prompts})
    config.resume_from_checkpoint = resume_arg(config)
    from transformers import set_seed

    set_seed(config.seed)
    path = resolve_model_path(model_args.model)
    tokenizer = load_tokenizer(path)
    source = build_source(script, model_args, tokenizer, config.device)
    policy = load_model(path, **model_args.model_kwargs())
    trainer = DenseGRPOTrainer(policy, funcs, config, reward_source=source,
                               train_dataset=prompt_dataset(script, tokenizer),
                               processing_class=tokenizer,
                               peft_config=model_args.peft_config())
    code = finish(trainer, config, config.resume_from_checkpoint)
    if code:
        return code
    rewards = [e["reward"] for e in trainer.state.log_history if "reward" in e]
    last = f"{rewards[-1]:.4f}" if rewards else "n/a"
    print(f"GRPO ({script.reward} rewards, λ={config.token_coef}): "
          f"{trainer.state.global_step} steps; last logged reward {last}; policy saved to "
          f"{config.output_dir}")
    return 0
