"""``reward.reward_manager.name=editalign_token``: per-token rewards from an editalign reward model.

Where per-token scores can arrive in verl 0.9.1 (read from its code):

- The streaming reward loop (no ``reward.reward_model.enable``, or a reward model on its own
  resource pool) scores inside the agent loop: ``AgentLoopWorker._compute_score``
  (verl/experimental/agent_loop/agent_loop.py) stores ``result["reward_score"]`` in
  ``AgentLoopOutput.reward_score: float`` and ``AgentLoopOutput.as_dict`` /
  ``_postprocess`` put that one number at the last response token. One float per
  trajectory; nothing per token gets through.
- The colocated reward-model path (``reward.reward_model.enable=True``,
  ``enable_resource_pool=False``): the trainer (``_compute_reward_colocate`` in
  verl/trainer/ppo/v1/trainer_base.py and in the legacy ray_trainer.py) calls
  ``RewardLoopManager.compute_rm_score`` (verl/experimental/reward_loop/reward_loop.py),
  which gathers each row's ``run_single(...)["reward_score"]`` from the reward-loop workers
  and hands the list to the manager class's ``assemble_rm_scores(data, scores)`` classmethod
  (``RewardManagerBase``, PR #6242). Its result is ``rm_scores`` (batch, response length),
  which becomes ``token_level_scores`` unchanged. This is the supported per-token path, and
  the one used here: ``run_single`` returns the row's token rewards as a list and
  ``assemble_rm_scores`` lays them out, exactly 0 on padding.

The colocated path calls the reward manager only when ``reward.custom_reward_function.path``
is set (``RewardLoopWorker.compute_score``; otherwise it queries verl's own discriminative
reward model), so the recipe points that path at :func:`compute_score` below, which only
routes and is never called; and ``reward.reward_model.enable=True`` also makes verl start
its own reward-model inference server for ``reward.reward_model.model_path`` (the manager
does not query it; docs/verl.md sizes it small). The constructor checks these settings,
because on the streaming path the token rewards would be cut to nothing.

Settings (``+reward.reward_kwargs.KEY=...``, verl's place for a reward manager's options):
``model_path`` (a directory written by ``editalign train token-rm`` or ``editalign train rm``:
a token RM fills every response position, a sequence RM its last one), ``device``
(``auto``: CUDA when the worker sees a GPU, else CPU), ``dtype`` (``float32``/``bfloat16``/
``float16``) and ``batch_size`` (rows per forward pass, default 16).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from verl import DataProto
from verl.experimental.reward_loop.reward_manager import register
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))

MANAGER_NAME = "editalign_token"
ROUTE_PATH = "pkg://editalign_verl.reward_manager"
ROUTE_NAME = "compute_score"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# One loaded reward model per (path, device, dtype) and process: verl builds a manager per
# reward-loop worker, and a worker must not hold the same weights twice.
_MODELS: dict[tuple[str, str, str], Any] = {}


def compute_score(**_: Any) -> float:
    """What ``reward.custom_reward_function.path=pkg://editalign_verl.reward_manager`` names.

    verl's reward-loop worker calls a reward manager's ``run_single`` on the colocated
    reward-model path only when a custom reward function is configured; this is that
    function. ``editalign_token`` never calls it: its rewards come from the reward model.
    """
    raise RuntimeError(
        "editalign_verl.reward_manager.compute_score only routes verl's reward loop to the "
        f"{MANAGER_NAME!r} reward manager; set reward.reward_manager.name={MANAGER_NAME}")


def check_route(config: Any) -> None:
    """Raise ``ValueError`` unless ``config`` sends rewards through the per-token path."""
    reward = config.reward
    problems = []
    if not reward.reward_model.enable:
        problems.append("reward.reward_model.enable=True")
    if reward.reward_model.get("enable_resource_pool", False):
        problems.append("reward.reward_model.enable_resource_pool=False")
    if reward.custom_reward_function.get("path") is None:
        problems.append(f"reward.custom_reward_function.path={ROUTE_PATH} "
                        f"reward.custom_reward_function.name={ROUTE_NAME}")
    if problems:
        raise ValueError(
            f"the {MANAGER_NAME!r} reward manager returns one reward per token, which verl "
            "0.9.1 only carries on its colocated reward-model path (RewardLoopManager."
            "compute_rm_score -> assemble_rm_scores); the streaming path keeps one float per "
            "trajectory. Set: " + " ".join(problems))


def reward_settings(config: Any) -> dict[str, Any]:
    """``reward.reward_kwargs`` checked: model_path, device, dtype, batch_size."""
    kwargs = dict((config.reward.get("reward_kwargs") or {}).items())
    unknown = set(kwargs) - {"model_path", "device", "dtype", "batch_size"}
    if unknown:
        raise ValueError(f"reward.reward_kwargs: unknown keys {sorted(unknown)} for the "
                         f"{MANAGER_NAME!r} manager; allowed: model_path, device, dtype, "
                         "batch_size")
    if not kwargs.get("model_path"):
        raise ValueError(f"the {MANAGER_NAME!r} reward manager needs "
                         "+reward.reward_kwargs.model_path=DIR (an editalign reward model)")
    dtype = str(kwargs.get("dtype", "float32"))
    if dtype not in DTYPES:
        raise ValueError(f"reward.reward_kwargs.dtype: {dtype!r}; allowed: {', '.join(DTYPES)}")
    device = str(kwargs.get("device", "auto"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    batch_size = int(kwargs.get("batch_size", 16))
    if batch_size < 1:
        raise ValueError(f"reward.reward_kwargs.batch_size must be ≥ 1, got {batch_size}")
    return {"model_path": str(kwargs["model_path"]), "device": device, "dtype": dtype,
            "batch_size": batch_size}


def load_reward_model(model_path: str, device: str, dtype: str) -> Any:
    """The editalign reward model at ``model_path``, loaded once per process."""
    key = (model_path, device, dtype)
    if key not in _MODELS:
        from editalign.reward_model import TokenRewardModel  # the transformers stack, on use

        model = TokenRewardModel.from_pretrained(model_path, dtype=DTYPES[dtype])
        _MODELS[key] = model.to(device).eval()
    return _MODELS[key]


def row_tokens(data: DataProto) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt ids, response ids) of a one-row ``DataProto``, padding removed.

    The legacy trainer left-pads prompts, the v1 trainer right-pads them; either way the
    prompt's attention mask marks its tokens. The response is right-padded: its first
    ``attention_mask[prompt_length:].sum()`` tokens are real (verl's own managers read it so).
    """
    item = data[0]
    prompts, responses = item.batch["prompts"], item.batch["responses"]
    mask = item.batch["attention_mask"].bool()
    prompt_length = prompts.shape[-1]
    length = int(mask[prompt_length:].sum())
    return prompts[mask[:prompt_length]], responses[:length]


@register(MANAGER_NAME)
class EditalignTokenRewardManager(RewardManagerBase):
    """Scores each rollout with an editalign reward model, one reward per response token."""

    def __init__(self, config: Any, tokenizer: Any, compute_score: Any,
                 reward_router_address: str | None = None, reward_model_tokenizer: Any = None,
                 **_: Any) -> None:
        super().__init__(config, tokenizer, compute_score)
        check_route(config)
        self.settings = reward_settings(config)
        self.model = load_reward_model(self.settings["model_path"], self.settings["device"],
                                       self.settings["dtype"])
        # Token ids go to the reward model as they are: it must share the policy's tokenizer.
        self.model.check_tokenizer(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._pending: list[tuple[torch.Tensor, int, asyncio.Future]] = []

    async def run_single(self, data: DataProto) -> dict:
        """{"reward_score": the row's token rewards (a list, one per response token), ...}.

        The reward-loop worker starts ``run_single`` for every row of its chunk at once
        (``compute_score_batch``); the rows that arrive together are scored in one padded
        forward pass (at most ``batch_size`` rows) instead of one pass each.
        """
        data = data[-1:]  # multi-output agent loops: the last output is the trajectory
        prompt, response = row_tokens(data)
        if response.numel() == 0:
            rewards: list[float] = []
        else:
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            self._pending.append((torch.cat([prompt, response]), prompt.numel(), future))
            if len(self._pending) == 1:
                loop.call_soon(lambda: asyncio.ensure_future(self._flush()))
            rewards = await future
        total = float(sum(rewards))
        return {"reward_score": rewards,
                "reward_extra_info": {"editalign_reward_sum": total,
                                      "editalign_reward_mean": total / max(len(rewards), 1)}}

    async def _flush(self) -> None:
        pending, self._pending = self._pending, []
        size = self.settings["batch_size"]
        for start in range(0, len(pending), size):
            chunk = pending[start:start + size]
            try:
                scores = await asyncio.get_running_loop().run_in_executor(
                    None, self.score_rows, [ids for ids, _, _ in chunk], [s for _, s, _ in chunk])
            except Exception as err:  # every waiting row sees the reward model's error
                for _, _, future in chunk:
                    future.set_exception(err)
                continue
            for (_, _, future), row in zip(chunk, scores, strict=True):
                future.set_result(row)

    def score_rows(self, rows: Sequence[torch.Tensor], response_start: Sequence[int]
                   ) -> list[list[float]]:
        """Token rewards of whole sequences (prompt + response ids): one list per row, its
        length the row's response length. Rows are right-padded into one batch."""
        width = max(int(ids.numel()) for ids in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(rows):
            input_ids[i, :ids.numel()] = ids
            attention_mask[i, :ids.numel()] = 1
        device = self.settings["device"]
        rewards = self.model.response_rewards(input_ids.to(device), attention_mask.to(device),
                                              torch.tensor(list(response_start), device=device))
        rewards = rewards.float().cpu()
        return [rewards[i, :int(ids.numel()) - start].tolist()
                for i, (ids, start) in enumerate(zip(rows, response_start, strict=True))]

    @classmethod
    def assemble_rm_scores(cls, data: DataProto, scores: list[Any]) -> torch.Tensor:
        """``rm_scores`` (batch, response length): row i's token rewards on its response
        tokens, exactly 0 on padding (verl's outcome estimators sum rows unmasked)."""
        responses = data.batch["responses"]
        prompt_length = data.batch["prompts"].size(1)
        lengths = data.batch["attention_mask"][:, prompt_length:].sum(dim=-1).tolist()
        out = torch.zeros(responses.shape, dtype=torch.float32, device=responses.device)
        if len(scores) != len(lengths):
            raise ValueError(f"{len(scores)} reward rows for a batch of {len(lengths)}")
        for i, (row, length) in enumerate(zip(scores, lengths, strict=True)):
            if not isinstance(row, list | tuple | np.ndarray | torch.Tensor):
                raise TypeError(
                    f"row {i}: got one score ({row!r}) where {MANAGER_NAME!r} expects a list of "
                    "token rewards; verl called its own reward model instead of the manager "
                    f"(set reward.custom_reward_function.path={ROUTE_PATH})")
            values = torch.as_tensor(row, dtype=torch.float32).flatten()
            if values.numel() != length:
                raise ValueError(f"row {i}: {values.numel()} token rewards for a response of "
                                 f"{length} tokens")
            if not torch.isfinite(values).all():
                raise ValueError(f"row {i}: the reward model returned NaN or inf rewards")
            out[i, :length] = values.to(out.device)
        return out
