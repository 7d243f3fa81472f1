"""``reward.reward_manager.name=editalign``: per-token rewards from an editalign reward source.

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

Scores come from ``editalign.reward_sources`` (the interface ``editalign train grpo`` and
PPO use), so a source means the same on TRL and on verl. Settings
(``+reward.reward_kwargs.KEY=...``, verl's place for a reward manager's options):

- ``source``: ``token`` (default; every response token's reward from a token RM, read
  through ``TokenRewardModel.response_rewards``), ``sequence`` (the RM's last-token reward
  only, on the last token) or ``dpo`` (RTO's implicit reward β·(log π_DPO − log π_ref) on
  every token);
- ``model_path``: the reward model directory (``editalign train token-rm`` / ``rm``), or
  for ``dpo`` the DPO policy (``editalign train dpo``);
- ``dpo_reference`` (default: ``actor_rollout_ref.model.path``, the policy's start) and
  ``dpo_beta`` (0.1): the DPO policy's reference and β;
- ``device`` (``auto``: CUDA when the worker sees a GPU, else CPU), ``dtype``
  (``float32``/``bfloat16``/``float16``), ``batch_size`` (rows per forward pass, 16).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from verl import DataProto
from verl.experimental.reward_loop.reward_manager import register
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

MANAGER_NAME = "editalign"
ROUTE_PATH = "pkg://editalign_verl.reward_manager"
ROUTE_NAME = "compute_score"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

SETTINGS = ("source", "model_path", "dpo_reference", "dpo_beta", "device", "dtype",
            "batch_size")

# One loaded source per setting and process: verl builds a manager per reward-loop worker,
# and a worker must not hold the same weights twice.
_SOURCES: dict[tuple[Any, ...], Any] = {}


def compute_score(**_: Any) -> float:
    """What ``reward.custom_reward_function.path=pkg://editalign_verl.reward_manager`` names.

    verl's reward-loop worker calls a reward manager's ``run_single`` on the colocated
    reward-model path only when a custom reward function is configured; this is that
    function. The ``editalign`` manager never calls it: its rewards come from its source.
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
    """``reward.reward_kwargs`` checked, with the defaults filled in."""
    kwargs = dict((config.reward.get("reward_kwargs") or {}).items())
    unknown = set(kwargs) - set(SETTINGS)
    if unknown:
        raise ValueError(f"reward.reward_kwargs: unknown keys {sorted(unknown)} for the "
                         f"{MANAGER_NAME!r} manager; allowed: {', '.join(SETTINGS)}")
    source = str(kwargs.get("source", "token"))
    if source not in ("token", "sequence", "dpo"):
        raise ValueError(f"reward.reward_kwargs.source: {source!r}; allowed: token, sequence, dpo")
    if not kwargs.get("model_path"):
        what = "the DPO policy" if source == "dpo" else "an editalign reward model"
        raise ValueError(f"the {MANAGER_NAME!r} reward manager needs "
                         f"+reward.reward_kwargs.model_path=DIR ({what})")
    dtype = str(kwargs.get("dtype", "float32"))
    if dtype not in DTYPES:
        raise ValueError(f"reward.reward_kwargs.dtype: {dtype!r}; allowed: {', '.join(DTYPES)}")
    device = str(kwargs.get("device", "auto"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    batch_size = int(kwargs.get("batch_size", 16))
    if batch_size < 1:
        raise ValueError(f"reward.reward_kwargs.batch_size must be ≥ 1, got {batch_size}")
    reference = kwargs.get("dpo_reference") or config.actor_rollout_ref.model.path
    return {"source": source, "model_path": str(kwargs["model_path"]),
            "dpo_reference": str(reference) if source == "dpo" else None,
            "dpo_beta": float(kwargs.get("dpo_beta", 0.1)) if source == "dpo" else None,
            "device": device, "dtype": dtype, "batch_size": batch_size}


def load_source(settings: dict[str, Any], tokenizer: Any) -> Any:
    """The ``editalign.reward_sources`` source ``settings`` name, its models on their
    device, loaded once per process; ``tokenizer`` (the policy's) must be the models' own,
    since token ids reach them as they are."""
    # editalign's model code (transformers) is imported here, when a manager needs a model.
    from editalign import reward_sources
    from editalign.models import load_model, load_tokenizer, tokenizer_fingerprint
    from editalign.reward_model import TokenizerMismatchError, TokenRewardModel

    key = (*(settings[name] for name in SETTINGS if name != "batch_size"),
           tokenizer_fingerprint(tokenizer))  # a cached source is checked against it too
    if key in _SOURCES:
        return _SOURCES[key]

    dtype, device = DTYPES[settings["dtype"]], settings["device"]
    if settings["source"] == "dpo":
        for path in (settings["model_path"], settings["dpo_reference"]):
            if tokenizer_fingerprint(load_tokenizer(path)) != tokenizer_fingerprint(tokenizer):
                raise TokenizerMismatchError(
                    f"tokenizer mismatch: {path} has another tokenizer than the policy; its "
                    "token ids would mean different tokens")
        models = [load_model(path, dtype=dtype).requires_grad_(False).eval().to(device)
                  for path in (settings["model_path"], settings["dpo_reference"])]
        source = reward_sources.dpo_source(models[0], models[1], settings["dpo_beta"])
    else:
        model = TokenRewardModel.from_pretrained(settings["model_path"], tokenizer=tokenizer,
                                                 dtype=dtype)
        source = reward_sources.make_source(settings["source"],
                                            reward_model=model.requires_grad_(False).to(device))
    _SOURCES[key] = source
    return source


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
class EditalignRewardManager(RewardManagerBase):
    """Scores each rollout with an editalign reward source, one reward per response token."""

    def __init__(self, config: Any, tokenizer: Any, compute_score: Any,
                 reward_router_address: str | None = None, reward_model_tokenizer: Any = None,
                 **_: Any) -> None:
        super().__init__(config, tokenizer, compute_score)
        check_route(config)
        self.settings = reward_settings(config)
        self.source = load_source(self.settings, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._pending: list[tuple[list[int], list[int], asyncio.Future]] = []

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
            self._pending.append((prompt.tolist(), response.tolist(), future))
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
                    None, self.score_rows, [p for p, _, _ in chunk], [r for _, r, _ in chunk])
            except Exception as err:  # every waiting row sees the reward model's error
                for _, _, future in chunk:
                    future.set_exception(err)
                continue
            for (_, _, future), row in zip(chunk, scores, strict=True):
                future.set_result(row)

    def score_rows(self, prompts: Sequence[list[int]], responses: Sequence[list[int]]
                   ) -> list[list[float]]:
        """Token rewards of each (prompt ids, response ids) row: one list per row, as long as
        its response. The rows go right-padded into one batch, the layout every editalign
        reward source reads."""
        from editalign.reward_sources import right_padded

        input_ids, attention_mask, start = right_padded(prompts, responses, self.pad_id,
                                                        device=self.settings["device"])
        rewards = self.source.score(input_ids, attention_mask, start).per_token().float().cpu()
        return [rewards[i, :len(response)].tolist() for i, response in enumerate(responses)]

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
