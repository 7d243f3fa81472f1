"""editalign's dense group advantage as a verl advantage estimator.

``algorithm.adv_estimator=editalign_dense_group`` selects it. verl's ``compute_advantage``
(verl/trainer/ppo/ray_trainer.py, reached from the v1 trainer through
``compute_advantage_for_multi_trajectories``) hands every registered estimator the same
arguments: ``token_level_rewards`` (N, T), ``response_mask`` (N, T), ``index`` (the prompt
uids, one group per uid) and ``config`` (the ``algorithm`` section). The advantage itself is
``editalign.losses.dense_group_advantages``, the function ``editalign train grpo`` uses on
TRL, so the method is the same on both engines:

    A_{i,t} = (R_i − mean_g R) / (std_g R + ε) + λ · (u_{i,t} − mean_g u) / (std_g u + ε)

with R_i = Σ_t token_level_rewards[i, t] (what verl's own GRPO takes as the outcome) and u
the reward-to-go (or the reward) of ``token_level_rewards``. Its settings come from
``algorithm.editalign`` (added with Hydra's ``+``): ``token_coef`` (λ, default 1.0),
``token_term`` (``reward_to_go``/``reward``), ``scale`` (``group``/``batch``/``none``; default
from verl's ``norm_adv_by_std_in_grpo``: ``group`` when true, ``none`` when false) and ``eps``
(1e-4, TRL's). Two differences from verl's ``grpo`` at λ = 0, both editalign's (and TRL's)
rule: ε is 1e-4 (verl: 1e-6), and a prompt with a single sample gets advantage 0 (verl: its
raw score divided by 1 + ε).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from verl.trainer.ppo.core_algos import register_adv_est

ESTIMATOR_NAME = "editalign_dense_group"
SETTINGS_KEY = "editalign"  # algorithm.editalign.{token_coef,token_term,scale,eps}


def group_ids(index: Any, device: torch.device | None = None) -> torch.Tensor:
    """verl's ``index`` (an object array of uid strings) as integer group ids, in order of
    first appearance; ``dense_group_advantages`` groups by equal ids, whatever they are."""
    codes: dict[Any, int] = {}
    ids = [codes.setdefault(uid, len(codes)) for uid in np.asarray(index, dtype=object).tolist()]
    return torch.tensor(ids, dtype=torch.long, device=device)


def estimator_settings(config: Any) -> dict[str, Any]:
    """The keyword arguments of ``dense_group_advantages`` from the ``algorithm`` config."""
    section = (config.get(SETTINGS_KEY) if config is not None else None) or {}
    section = dict(section.items())
    unknown = set(section) - {"token_coef", "token_term", "scale", "eps"}
    if unknown:
        raise ValueError(f"algorithm.{SETTINGS_KEY}: unknown keys {sorted(unknown)}; allowed: "
                         "token_coef, token_term, scale, eps")
    by_std = True if config is None else bool(config.get("norm_adv_by_std_in_grpo", True))
    return {
        "token_coef": float(section.get("token_coef", 1.0)),
        "token_term": str(section.get("token_term", "reward_to_go")),
        "scale": str(section.get("scale", "group" if by_std else "none")),
        "eps": float(section.get("eps", 1e-4)),
    }


@register_adv_est(ESTIMATOR_NAME)
def compute_editalign_dense_group_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    config: Any = None,
    **_: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), both (N, T), as verl's group estimators return them (the
    returns of a critic-free method are its advantages). ``**_`` takes the optional
    arguments verl passes to some estimators (``reward_baselines``)."""
    from editalign.losses import dense_group_advantages  # torch only; imported on first use

    settings = estimator_settings(config)
    with torch.no_grad():
        rewards = token_level_rewards.float()
        mask = response_mask.to(rewards.dtype)
        advantages = dense_group_advantages(
            (rewards * mask).sum(dim=-1), rewards, mask,
            group_ids(index, device=rewards.device), **settings)
    return advantages, advantages
