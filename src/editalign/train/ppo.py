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
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainingArguments

import editalign.reward_sources as sources
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
from editalign.options import check_choice
from editalign.padding import pad_rows
from editalign.reward_model import NonFiniteRewardError, check_finite_rewards
from editalign.train.common import check_max_steps

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


# A reward source maps a right-padded batch to a (batch, response length) reward tensor:
# the sources of :mod:`editalign.reward_sources`, read in the layout PPO shapes
# (``ResponseScores.per_token``: a sequence score sits on the last response token).
RewardSource = Callable[[Tensor, Tensor, Tensor], Tensor]


def _per_token(source: sources.RewardSource) -> RewardSource:
    def score(input_ids: Tensor, attention_mask: Tensor, response_start: Tensor) -> Tensor:
        return source.score(input_ids, attention_mask, response_start).per_token()

    return score


def reward_model_source(reward_model: Any, kind: str = "token") -> RewardSource:
    """A :class:`~editalign.reward_model.TokenRewardModel` as a reward source.

    ``kind="token"`` reads every response position (fine-grained PPO); ``"sequence"``
    reads only the last response token (ordinary PPO with a sequence-level reward model).
    """
    check_choice("reward", kind, ("token", "sequence"))
    return _per_token(sources.make_source(kind, reward_model=reward_model))


def dpo_reward_source(dpo_model: torch.nn.Module, ref_model: torch.nn.Module,
                      beta: float) -> RewardSource:
    """The dense implicit reward of a DPO policy (RTO): ``β·(log π_DPO − log π_ref)`` on every
    response token (:class:`editalign.reward_sources.DPOSource`)."""
    return _per_token(sources.dpo_source(dpo_model, ref_model, beta))


def text_reward_source(fn: Callable[[list[str], list[str]], Sequence[float]],
                       tokenizer: PreTrainedTokenizerBase) -> RewardSource:
    """A Python judge ``fn(prompts, responses) -> scores`` as a sparse (last-token) source."""
    return _per_token(sources.text_source(fn, tokenizer))


@dataclass
class Rollout:
    """One batch of sampled responses in the right-padded layout, and what scoring adds."""

    input_ids: Tensor  # (B, L) prompt + response + padding
    attention_mask: Tensor  # (B, L)
    response_start: Tensor  # (B,)
    response_mask: Tensor  # (B, R) true on response tokens (EOS included)
    hit_max_length: Tensor  # (B,) no EOS within max_new_tokens
    logprobs: Tensor | None = None  # (B, R) under the policy at sampling time
    ref_logprobs: Tensor | None = None
    values: Tensor | None = None
    rewards: Tensor | None = None  # (B, R) from the reward source
    advantages: Tensor | None = None
    returns: Tensor | None = None


def response_lengths(response_ids: Tensor, eos_token_id: int) -> tuple[Tensor, Tensor]:
    """Length of each sampled response up to and including its first EOS.

    When the pad token is the EOS token (SmolLM2, AlpacaFarm's off-by-one), generate() fills
    finished rows with EOS, so only the *first* EOS ends the response. Returns (lengths,
    hit_max_length) where rows without EOS keep every sampled token.
    """
    is_eos = response_ids == eos_token_id
    first = torch.where(is_eos.any(-1), is_eos.int().argmax(-1), response_ids.shape[1] - 1)
    hit_max = ~is_eos.any(-1)
    return first + 1, hit_max


def gather_response(values: Tensor, response_start: Tensor, width: int, shift: int = 0) -> Tensor:
    """``values[b, response_start[b] + shift + j]`` for j < width (clamped at the end)."""
    cols = torch.arange(width, device=values.device)
    index = (response_start[:, None] + shift + cols).clamp(0, values.shape[1] - 1)
    if values.dim() == 3:
        return values.gather(1, index[..., None].expand(-1, -1, values.shape[-1]))
    return values.gather(1, index)


def policy_logprobs(model: torch.nn.Module, rollout: Rollout, temperature: float
                    ) -> tuple[Tensor, Tensor]:
    """Log-probability and entropy of every response token under ``model`` (B, R)."""
    width = rollout.response_mask.shape[1]
    logits = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                   use_cache=False).logits
    # Position p's logits predict token p + 1: response token j is predicted at start + j − 1.
    logits = gather_response(logits, rollout.response_start, width, shift=-1).float()
    logp = F.log_softmax(logits / temperature, dim=-1)
    tokens = gather_response(rollout.input_ids, rollout.response_start, width)
    token_logp = logp.gather(-1, tokens[..., None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return token_logp, entropy


class AdaptiveKLController:
    """β_KL ← β_KL·(1 + clip(KL/target − 1, ±0.2)·n/horizon) (Ziegler et al. 2019)."""

    def __init__(self, init: float, target: float, horizon: int) -> None:
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, kl: float, n_steps: int) -> None:
        error = max(-0.2, min(0.2, kl / self.target - 1.0))
        self.value *= 1.0 + error * n_steps / self.horizon


class PPOTrainer:
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
                mb = _select(rollout, idx)
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

    # ------------------------------------------------------------------ checkpoints

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

    def save_model(self, directory: str | Path | None = None) -> None:
        directory = Path(directory or self.config.output_dir)
        if self.accelerator.is_main_process:
            self.accelerator.unwrap_model(self.policy).save_pretrained(directory)
            self.tokenizer.save_pretrained(directory)


LOG_NAME = "ppo_log.jsonl"
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


def _select(rollout: Rollout, idx: Tensor) -> Rollout:
    """Rows ``idx`` of a rollout, trimmed to the longest selected sequence and response."""
    mask = rollout.response_mask[idx]
    width = int(mask.sum(-1).max())
    length = int(rollout.attention_mask[idx].sum(-1).max())

    def cut(t: Tensor | None, w: int) -> Tensor | None:
        return None if t is None else t[idx][:, :w]

    return Rollout(
        input_ids=rollout.input_ids[idx][:, :length],
        attention_mask=rollout.attention_mask[idx][:, :length],
        response_start=rollout.response_start[idx], response_mask=mask[:, :width],
        hit_max_length=rollout.hit_max_length[idx], logprobs=cut(rollout.logprobs, width),
        ref_logprobs=cut(rollout.ref_logprobs, width), values=cut(rollout.values, width),
        rewards=cut(rollout.rewards, width), advantages=cut(rollout.advantages, width),
        returns=cut(rollout.returns, width))



# ---------------------------------------------------------------------------- command line


@dataclass
class PPOScriptArguments:
    """Where prompts and rewards come from (``editalign train ppo``)."""

    prompts: str | None = field(default=None, metadata={
        "help": "prompts: any pairs file `editalign label` reads (its prompts are used), or "
                "JSON/JSONL rows with a prompt field"})
    prompt_field: str = field(default="prompt", metadata={"help": "prompt column of --prompts"})
    limit: int | None = field(default=None, metadata={"help": "use only the first N prompts"})
    reward_model: str | None = field(default=None, metadata={
        "help": "directory of a reward model trained with `editalign train token-rm|rm`, or "
                "with --reward dpo a policy trained with `editalign train dpo`"})
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


def _check_same_tokenizer(tokenizer: PreTrainedTokenizerBase, directory: str) -> None:
    """A DPO reward model must read the policy's token ids as the same tokens."""
    from editalign.models import load_tokenizer, tokenizer_fingerprint

    if tokenizer_fingerprint(load_tokenizer(directory)) != tokenizer_fingerprint(tokenizer):
        raise ValueError(f"--reward dpo: {directory} has another tokenizer than --model; the "
                         "implicit reward needs the policy's token ids")


def run(argv: Sequence[str]) -> int:
    """``editalign train ppo``: PPO with a token-level or sequence-level reward model, or a
    DPO policy's implicit token reward (``--reward dpo``)."""
    from trl import TrlParser

    from editalign.data.pairs import load_prompts
    from editalign.models import load_model, load_tokenizer, resolve_model_path
    from editalign.reward_model import RewardModelConfig, TokenRewardModel
    from editalign.train.cli import load_policy, resume_arg
    from editalign.train.common import ModelArguments

    parser = TrlParser([ModelArguments, PPOScriptArguments, PPOConfig])
    model_args, script, config = parser.parse_args_and_config(list(argv))
    check_choice("reward", script.reward, REWARD_KINDS)
    check_choice("value_init", script.value_init, ("reward_model", "policy"))
    if not script.prompts or not script.reward_model:
        raise ValueError("--prompts and --reward_model are required")
    from editalign.train.cli import check_train_options, claim_output_dir, stop_if_parse_only

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
        _check_same_tokenizer(tokenizer, script.reward_model)
        dpo_model = load_model(script.reward_model, dtype=dtype).requires_grad_(False).eval()
        # The reference PPO keeps is the DPO reference too unless another one is named.
        dpo_ref = ref_model if ref_model is not None and not script.dpo_reference else \
            load_model(script.dpo_reference or model_args.model, dtype=dtype)
        dpo_ref.requires_grad_(False).eval()
        source = dpo_reward_source(dpo_model.to(config.device), dpo_ref.to(config.device),
                                   script.dpo_beta)
    else:
        source = reward_model_source(reward_model.to(config.device), script.reward)
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
