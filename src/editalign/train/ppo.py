"""PPO with dense (token-level) or sparse (sequence-level) rewards: config and trainer.

TRL 1.13+ has no PPO trainer, so this is editalign's own, on accelerate, written to be read
top to bottom like AlpacaFarm's reference PPO. One iteration is four named steps:

1. ``rollout``: sample responses to a batch of prompts (batched ``generate``, KV cache);
2. ``score``: log-probabilities under the policy and the reference, values, and the
   reward source's (batch, response length) tensor;
3. ``estimate_advantages``: r_t = −β_KL·KL_t + c·reward_t, then GAE(γ, λ), whitening;
4. ``update``: several PPO epochs of clipped policy and value losses over mini-batches.

Dense and sparse PPO are one code path: a sequence-level reward model fills the last
response token of the reward tensor, a token-level one fills every token (docs/methods.md §4). For a
fair comparison the two arms share every hyper-parameter and seed.

Sequences are kept right-padded, one row = prompt (no padding) + response (up to and
including its first EOS) + padding, with each row's ``response_start``; every model (policy,
reference, value, reward) reads that one layout.

Beside this module: :mod:`editalign.train.ppo_rollout` (the :class:`Rollout` batch, the
reward-source adapters, log-probabilities at the response tokens) and
:mod:`editalign.train.ppo_checkpoint` (saving and resuming without pickles). Here: the
config, the trainer's four steps and loop, and ``editalign train ppo`` (:func:`run`).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainingArguments

from editalign.data.jsonl import write_jsonl
from editalign.generation import encode_prompt, generate_new_tokens
from editalign.losses import (
    KL_ESTIMATORS,
    gae,
    kl_per_token,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    shape_rewards,
    whiten,
)
from editalign.models import load_model, load_tokenizer, resolve_model_path
from editalign.options import check_choice
from editalign.padding import pad_rows
from editalign.reward_model import (
    NonFiniteRewardError,
    RewardModelConfig,
    TokenRewardModel,
    check_finite_rewards,
)
from editalign.train.common import ModelArguments, RLScriptArguments, check_max_steps
from editalign.train.ppo_checkpoint import CheckpointMixin
from editalign.train.ppo_rollout import (
    RewardSource,
    Rollout,
    dpo_reward_source,
    gather_response,
    policy_logprobs,
    response_lengths,
    reward_model_source,
    select_rows,
)

logger = logging.getLogger(__name__)

REWARD_KINDS = ("token", "sequence", "dpo")


@dataclass
class PPOConfig(TrainingArguments):
    """PPO settings; every ``TrainingArguments`` option (learning rate, seed, logging,
    ``report_to``, ``save_steps``, ``resume_from_checkpoint``, ``use_cpu``...) applies.

    ``per_device_train_batch_size`` is the PPO mini-batch; ``gradient_accumulation_steps``
    accumulates mini-batches; ``max_grad_norm`` clips.
    """

    num_iterations: int = field(default=20, metadata={"help": "PPO iterations (rollout + update)"})
    rollout_batch_size: int = field(default=16, metadata={
        "help": "prompts sampled per iteration on each process"})
    ppo_epochs: int = field(default=2, metadata={"help": "passes over each rollout batch"})
    max_new_tokens: int = field(default=48, metadata={"help": "longest sampled response"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_k: int = field(default=0, metadata={"help": "top-k sampling; 0 = off"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling; 1 = off"})
    kl_coef: float = field(default=0.05, metadata={"help": "β_KL, the initial KL coefficient"})
    kl_estimator: str = field(default="k1", metadata={
        "help": f"per-token KL estimator: {', '.join(KL_ESTIMATORS)}"})
    adaptive_kl: bool = field(default=False, metadata={
        "help": "adapt β_KL towards --kl_target (Ziegler et al. 2019)"})
    kl_target: float = field(default=6.0, metadata={"help": "target KL per sequence (adaptive)"})
    kl_horizon: int = field(default=10_000, metadata={"help": "adaptive controller horizon"})
    gamma: float = field(default=1.0, metadata={"help": "GAE discount γ"})
    lam: float = field(default=0.95, metadata={"help": "GAE λ"})
    whiten_advantages: bool = field(default=True, metadata={"help": "normalise advantages"})
    cliprange: float = field(default=0.2, metadata={"help": "policy clip ε"})
    cliprange_value: float = field(default=0.2, metadata={"help": "value clip"})
    vf_coef: float = field(default=0.1, metadata={"help": "value loss coefficient"})
    reward_coef: float = field(default=1.0, metadata={"help": "c: scale of the reward source"})
    reward_clip: float | None = field(default=None, metadata={
        "help": "clip every reward into [−x, x] before shaping"})
    missing_eos_penalty: float | None = field(default=None, metadata={
        "help": "subtract this from the last reward of responses that hit max_new_tokens"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        if self.rollout_batch_size < 1 or self.ppo_epochs < 1 or self.num_iterations < 1:
            raise ValueError("rollout_batch_size, ppo_epochs and num_iterations must be >= 1")
        check_max_steps(self.max_steps)
        if self.max_steps != -1:
            raise ValueError(f"--max_steps {self.max_steps}: PPO counts --num_iterations (one "
                             "rollout and its update each), not optimizer steps; set "
                             "--num_iterations instead")


class AdaptiveKLController:
    """β_KL ← β_KL·(1 + clip(KL/target − 1, ±0.2)·n/horizon) (Ziegler et al. 2019)."""

    def __init__(self, init: float, target: float, horizon: int) -> None:
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, kl: float, n_steps: int) -> None:
        error = max(-0.2, min(0.2, kl / self.target - 1.0))
        self.value *= 1.0 + error * n_steps / self.horizon


class PPOTrainer(CheckpointMixin):
    """PPO on a causal-LM policy with a value model and any reward source.

    ``ref_model=None`` with a PEFT (LoRA) policy uses the policy with its adapter disabled as
    the reference, so no second copy of the weights is held. ``value_model`` is any module
    whose output has ``.logits`` of shape (batch, length) — e.g. a
    :class:`~editalign.reward_model.TokenRewardModel` with the identity transform,
    optionally initialised from the reward model.
    """

    def __init__(self, config: PPOConfig, policy: PreTrainedModel, value_model: torch.nn.Module,
                 tokenizer: PreTrainedTokenizerBase, reward_source: RewardSource,
                 prompts: Sequence[str | list[dict[str, str]]], *,
                 ref_model: PreTrainedModel | None = None, chat_template: str = "auto") -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.config = config
        self.tokenizer = tokenizer
        self.reward_source = reward_source
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token")
        if not prompts:
            raise ValueError("no prompts to train on")
        trackers = [r for r in (config.report_to or []) if r in ("tensorboard", "wandb")]
        self.accelerator = Accelerator(
            cpu=config.use_cpu, gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=trackers or None, project_dir=config.output_dir,
            mixed_precision="bf16" if config.bf16 else ("fp16" if config.fp16 else "no"))
        set_seed(config.seed + self.accelerator.process_index)
        self.prompt_ids = [encode_prompt(p, tokenizer, chat_template) for p in prompts]
        empty = [i for i, ids in enumerate(self.prompt_ids) if not ids]
        if empty:  # generate() cannot start from nothing
            raise ValueError(f"prompts {empty[:10]} render to no tokens (empty text); remove "
                             "them or give them text")
        if ref_model is None and not hasattr(policy, "disable_adapter"):
            raise ValueError("a reference model is needed unless the policy is a PEFT model "
                             "(then the policy without its adapter is the reference)")
        self.ref_model = ref_model
        if ref_model is not None:
            ref_model.requires_grad_(False).eval()
            ref_model.to(self.accelerator.device)
        if config.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
        params = [p for m in (policy, value_model) for p in m.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate,
                                      weight_decay=config.weight_decay,
                                      betas=(config.adam_beta1, config.adam_beta2),
                                      eps=config.adam_epsilon)
        self.policy, self.value_model, self.optimizer = self.accelerator.prepare(
            policy, value_model, optimizer)
        self.kl_ctl = AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
        self.iteration = 0
        self.history: list[dict[str, float]] = []
        self._prompt_order: list[int] = []
        if trackers:
            self.accelerator.init_trackers("editalign-ppo", config={
                k: v for k, v in asdict(config).items() if isinstance(v, int | float | str | bool)})

    # ------------------------------------------------------------------ data

    def _next_prompts(self) -> list[list[int]]:
        """Prompts for this process, reshuffled each pass (a different shard per process)."""
        n, world = self.config.rollout_batch_size, self.accelerator.num_processes
        batch = []
        while len(batch) < n:
            if not self._prompt_order:
                order = list(range(len(self.prompt_ids)))
                random.Random(self.config.seed + len(self.history)).shuffle(order)
                self._prompt_order = order[self.accelerator.process_index::world] or order
            batch.append(self.prompt_ids[self._prompt_order.pop()])
        return batch

    # ------------------------------------------------------------------ 1. rollout

    @torch.no_grad()
    def rollout(self, prompt_ids: list[list[int]]) -> Rollout:
        tok, device, cfg = self.tokenizer, self.accelerator.device, self.config
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        policy = self.accelerator.unwrap_model(self.policy)
        was_training = policy.training
        policy.eval()
        # top_k=0 becomes None here (the model's generation config decides), unlike
        # SamplingConfig's explicit 0: kept as it was, since changing it changes every
        # PPO rollout and the benchmark's PPO arms with them.
        responses = generate_new_tokens(
            policy, prompt_ids, pad_token_id=pad, eos_token_id=tok.eos_token_id,
            max_new_tokens=cfg.max_new_tokens, device=device, do_sample=True,
            temperature=cfg.temperature, top_k=cfg.top_k or None, top_p=cfg.top_p,
            use_cache=True).cpu()
        policy.train(was_training)
        lengths, hit_max = response_lengths(responses, tok.eos_token_id)
        rows = [ids + responses[i, : lengths[i]].tolist() for i, ids in enumerate(prompt_ids)]
        input_ids, attention_mask = pad_rows(rows, pad)
        cols = torch.arange(int(lengths.max()))
        return Rollout(input_ids.to(device), attention_mask.to(device),
                       torch.tensor([len(p) for p in prompt_ids], device=device),
                       (cols[None] < lengths[:, None]).to(device), hit_max.to(device))

    # ------------------------------------------------------------------ 2. score

    @torch.no_grad()
    def score(self, rollout: Rollout) -> Rollout:
        temperature = self.config.temperature
        rollout.logprobs, _ = policy_logprobs(self.policy, rollout, temperature)
        if self.ref_model is not None:
            rollout.ref_logprobs, _ = policy_logprobs(self.ref_model, rollout, temperature)
        else:
            with self.accelerator.unwrap_model(self.policy).disable_adapter():
                rollout.ref_logprobs, _ = policy_logprobs(self.policy, rollout, temperature)
        rollout.values = self._values(self.value_model, rollout)
        try:
            rewards = self.reward_source(rollout.input_ids, rollout.attention_mask,
                                         rollout.response_start).to(rollout.logprobs)
        except NonFiniteRewardError as err:  # raised by a reward model: add where we are
            raise NonFiniteRewardError(f"iteration {self.iteration}: {err}") from None
        width = rollout.response_mask.shape[1]
        if rewards.shape != (rollout.input_ids.shape[0], width):
            raise ValueError(f"the reward source returned shape {tuple(rewards.shape)}, expected "
                             f"(batch, response length) = {(rollout.input_ids.shape[0], width)}")
        check_finite_rewards(rewards, rollout.response_mask,
                             rows=[f"rollout row {b}" for b in range(len(rewards))],
                             source=f"iteration {self.iteration}: the reward source")
        rollout.rewards = torch.where(rollout.response_mask, rewards, torch.zeros_like(rewards))
        return rollout

    def _values(self, model: torch.nn.Module, rollout: Rollout) -> Tensor:
        logits = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask).logits
        # V_t is read where token t is predicted: the state before emitting it.
        return gather_response(logits.float(), rollout.response_start,
                               rollout.response_mask.shape[1], shift=-1)

    # ------------------------------------------------------------------ 3. advantages

    def estimate_advantages(self, rollout: Rollout) -> tuple[Rollout, dict[str, float]]:
        cfg, mask = self.config, rollout.response_mask
        assert rollout.rewards is not None and rollout.logprobs is not None
        rewards = cfg.reward_coef * rollout.rewards
        if cfg.reward_clip is not None:
            rewards = rewards.clamp(-cfg.reward_clip, cfg.reward_clip)
        if cfg.missing_eos_penalty is not None:
            last = (mask.sum(-1) - 1).clamp(min=0)
            rows = torch.arange(len(last), device=last.device)
            rewards[rows, last] -= cfg.missing_eos_penalty * rollout.hit_max_length.float()
        kl = kl_per_token(rollout.logprobs, rollout.ref_logprobs, cfg.kl_estimator) * mask
        shaped = shape_rewards(rewards, kl, mask, self.kl_ctl.value)
        advantages, returns = gae(shaped, rollout.values, mask, gamma=cfg.gamma, lam=cfg.lam)
        if cfg.whiten_advantages:
            advantages = whiten(advantages, mask)
        rollout.advantages, rollout.returns = advantages, returns
        stats = {
            "reward": float((rollout.rewards * mask).sum(-1).mean()),
            "kl": float(kl.sum(-1).mean()),
            "kl_coef": self.kl_ctl.value,
            "response_length": float(mask.sum(-1).float().mean()),
            "hit_max_length": float(rollout.hit_max_length.float().mean()),
        }
        return rollout, stats

    # ------------------------------------------------------------------ 4. update

    def update(self, rollout: Rollout) -> dict[str, float]:
        cfg, n = self.config, rollout.input_ids.shape[0]
        self.policy.train()
        self.value_model.train()
        totals: dict[str, float] = {"policy_loss": 0.0, "value_loss": 0.0, "clip_fraction": 0.0,
                                    "value_clip_fraction": 0.0, "approx_kl": 0.0, "entropy": 0.0}
        steps = 0
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(n)
            for start in range(0, n, cfg.per_device_train_batch_size):
                idx = order[start:start + cfg.per_device_train_batch_size].to(rollout.input_ids.device)
                mb = select_rows(rollout, idx)
                with self.accelerator.accumulate(self.policy, self.value_model):
                    logprobs, entropy = policy_logprobs(self.policy, mb, cfg.temperature)
                    values = self._values(self.value_model, mb)
                    pg = ppo_policy_loss(logprobs, mb.logprobs, mb.advantages, mb.response_mask,
                                         clip=cfg.cliprange)
                    vf_loss, vf_clip = ppo_value_loss(values, mb.values, mb.returns,
                                                      mb.response_mask, clip=cfg.cliprange_value)
                    loss = pg.loss + cfg.vf_coef * vf_loss
                    self.accelerator.backward(loss)
                    if self.accelerator.sync_gradients and cfg.max_grad_norm:
                        self.accelerator.clip_grad_norm_(
                            [p for g in self.optimizer.param_groups for p in g["params"]],
                            cfg.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad()
                totals["policy_loss"] += float(pg.loss.detach())
                totals["value_loss"] += float(vf_loss.detach())
                totals["clip_fraction"] += float(pg.clip_fraction.detach())
                totals["value_clip_fraction"] += float(vf_clip.detach())
                totals["approx_kl"] += float(pg.approx_kl.detach())
                totals["entropy"] += float(masked_mean(entropy.detach(), mb.response_mask))
                steps += 1
        return {k: v / max(steps, 1) for k, v in totals.items()}

    # ------------------------------------------------------------------ loop

    def step(self) -> dict[str, float]:
        """One PPO iteration; returns its logged statistics."""
        t0 = time.perf_counter()
        rollout = self.rollout(self._next_prompts())
        t1 = time.perf_counter()
        rollout = self.score(rollout)
        rollout, stats = self.estimate_advantages(rollout)
        t2 = time.perf_counter()
        stats.update(self.update(rollout))
        t3 = time.perf_counter()
        if self.config.adaptive_kl:
            self.kl_ctl.update(stats["kl"], self.config.rollout_batch_size
                               * self.accelerator.num_processes)
        stats.update(iteration=self.iteration, time_rollout=t1 - t0, time_scoring=t2 - t1,
                     time_update=t3 - t2)
        diverged = [k for k, v in stats.items() if not math.isfinite(v)]
        if diverged:  # the log and checkpoints are strict JSON: say why, not "invalid float"
            raise FloatingPointError(f"iteration {self.iteration}: {', '.join(diverged)} "
                                     "became NaN or inf (training diverged); lower "
                                     "--learning_rate or set --max_grad_norm")
        self.iteration += 1
        self.history.append(stats)
        return stats

    def train(self) -> list[dict[str, float]]:
        from tqdm.auto import tqdm

        cfg = self.config
        if cfg.resume_from_checkpoint:
            self.load_checkpoint(cfg.resume_from_checkpoint)
        bar = tqdm(total=cfg.num_iterations, initial=self.iteration, desc="ppo",
                   disable=not self.accelerator.is_local_main_process or cfg.disable_tqdm)
        log_path = Path(cfg.output_dir) / LOG_NAME
        if self.accelerator.is_main_process:
            # The log is rewritten from the history: a fresh run starts an empty log (not
            # appended to an earlier run's), a resumed one holds exactly the checkpoint's
            # iterations 0..N-1, so the rows that follow continue from N without repeats.
            write_jsonl(log_path, self.history, allow_nan=False)
        while self.iteration < cfg.num_iterations:
            stats = self.step()
            bar.update(1)
            bar.set_postfix(reward=f"{stats['reward']:.3f}", kl=f"{stats['kl']:.3f}")
            if self.accelerator.is_main_process:
                with log_path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(stats, allow_nan=False) + "\n")
            self.accelerator.log({f"ppo/{k}": v for k, v in stats.items()}, step=self.iteration)
            every = int(cfg.save_steps) if cfg.save_strategy != "no" and cfg.save_steps else 0
            if every and self.iteration % every == 0:
                self.save_checkpoint(Path(cfg.output_dir) / f"checkpoint-{self.iteration}")
        bar.close()
        self.accelerator.end_training()
        return self.history

    def save_model(self, directory: str | Path | None = None) -> None:
        directory = Path(directory or self.config.output_dir)
        if self.accelerator.is_main_process:
            self.accelerator.unwrap_model(self.policy).save_pretrained(directory)
            self.tokenizer.save_pretrained(directory)


LOG_NAME = "ppo_log.jsonl"


# ---------------------------------------------------------------------------- command line


@dataclass
class PPOScriptArguments(RLScriptArguments):
    """Where prompts and rewards come from (``editalign train ppo``)."""

    reward: str = field(default="token", metadata={
        "help": "token: every response token's reward (fine-grained PPO); sequence: the last "
                "token's only (ordinary PPO); dpo: the DPO policy's implicit reward "
                "β·(log π_DPO − log π_ref) on every token (RTO)"})
    dpo_beta: float = field(default=0.1, metadata={
        "help": "--reward dpo: the β the DPO policy was trained with"})
    dpo_reference: str | None = field(default=None, metadata={
        "help": "--reward dpo: the DPO policy's reference model (default: --model)"})
    value_init: str = field(default="reward_model", metadata={
        "help": "initialise the value model from the reward_model (with --reward dpo: the "
                "DPO policy's backbone and a new head) or the policy backbone"})
    chat_template: str = field(default="auto", metadata={
        "help": "prompt rendering: auto, always, never (as in editalign label)"})


def _ppo_models(model_args: ModelArguments, script: PPOScriptArguments, config: PPOConfig,
                tokenizer: PreTrainedTokenizerBase) -> tuple[Any, Any, Any, RewardSource]:
    """The policy, its reference (None with LoRA), the value model and the reward source, in
    the order that fixes what each draws from the global RNG (a LoRA adapter, a head)."""
    from editalign.train.cli import check_same_tokenizer, load_policy  # trl: when run

    dtype = model_args.torch_dtype()
    if script.reward != "dpo":
        reward_model = TokenRewardModel.from_pretrained(script.reward_model, tokenizer=tokenizer)
        reward_model.requires_grad_(False)
    # After the reward model, as before: loading it draws from the global RNG (its head).
    # No config: PPOTrainer turns gradient checkpointing on itself, after wrapping.
    policy, _ = load_policy(model_args, None)
    # With LoRA the reference is the policy without its adapter.
    ref_model = None if model_args.lora_r > 0 else load_model(model_args.model, dtype=dtype)
    value_config = RewardModelConfig(transform="identity")
    if script.value_init == "reward_model" and script.reward == "dpo":
        value_model = TokenRewardModel.from_backbone(script.reward_model, value_config,
                                                     tokenizer=tokenizer)
    elif script.value_init == "reward_model":
        value_model = TokenRewardModel.from_pretrained(script.reward_model)
        value_model.reward_config = value_config
    else:
        value_model = TokenRewardModel.from_backbone(resolve_model_path(model_args.model),
                                                     value_config, tokenizer=tokenizer)
    if script.reward == "dpo":
        check_same_tokenizer(tokenizer, script.reward_model)
        dpo_model = load_model(script.reward_model, dtype=dtype).requires_grad_(False).eval()
        # The reference PPO keeps is the DPO reference too unless another one is named.
        dpo_ref = ref_model if ref_model is not None and not script.dpo_reference else \
            load_model(script.dpo_reference or model_args.model, dtype=dtype)
        dpo_ref.requires_grad_(False).eval()
        source = dpo_reward_source(dpo_model.to(config.device), dpo_ref.to(config.device),
                                   script.dpo_beta)
    else:
        source = reward_model_source(reward_model.to(config.device), script.reward)
    return policy, ref_model, value_model, source


def run(argv: Sequence[str]) -> int:
    """``editalign train ppo``: PPO with a token-level or sequence-level reward model, or a
    DPO policy's implicit token reward (``--reward dpo``)."""
    from trl import TrlParser

    from editalign.data.pairs import load_prompts
    from editalign.train.cli import (  # trl loads with them: only when the command runs
        check_train_options,
        claim_output_dir,
        resume_arg,
        stop_if_parse_only,
    )

    parser = TrlParser([ModelArguments, PPOScriptArguments, PPOConfig])
    model_args, script, config = parser.parse_args_and_config(list(argv))
    check_choice("reward", script.reward, REWARD_KINDS)
    check_choice("value_init", script.value_init, ("reward_model", "policy"))
    if not script.prompts or not script.reward_model:
        raise ValueError("--prompts and --reward_model are required")
    check_train_options(model_args, script, config)
    stop_if_parse_only()
    claim_output_dir(config.output_dir, inputs={"--model": model_args.model,
                                                "--reward_model": script.reward_model,
                                                "--prompts": script.prompts})
    # `last`/`true` and explicit directories: the same rule (and checks) as every trainer,
    # before any model is loaded.
    config.resume_from_checkpoint = resume_arg(config)
    from transformers import set_seed

    set_seed(config.seed)  # before building models: a LoRA adapter or value head is random
    tokenizer = load_tokenizer(model_args.model)
    policy, ref_model, value_model, source = _ppo_models(model_args, script, config, tokenizer)
    prompts = load_prompts(script.prompts, field=script.prompt_field, limit=script.limit)
    trainer = PPOTrainer(config, policy, value_model.train(), tokenizer, source,
                         prompts, ref_model=ref_model, chat_template=script.chat_template)
    history = trainer.train()
    trainer.save_model()
    last = history[-1] if history else {}
    print(f"PPO ({script.reward} rewards): {len(history)} iterations; last reward "
          f"{last.get('reward', float('nan')):.4f}, KL {last.get('kl', float('nan')):.4f}; "
          f"policy saved to {config.output_dir}")
    return 0
