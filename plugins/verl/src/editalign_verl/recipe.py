"""The one-GPU recipe of docs/verl.md: prompts as verl reads them, and verl's trainer with
editalign's rewards, one arm at a time.

    python -m editalign_verl.recipe prompts --data PAIRS [--preset P] --out DIR
    python -m editalign_verl.recipe ppo|dense_group --policy DIR --reward_model DIR \\
        --data DIR [--steps N] [--print] [HYDRA_OVERRIDE ...]
    python -m editalign_verl.recipe summary --data LOG.jsonl [LOG.jsonl ...] --out FILE

``prompts`` writes ``DIR/train.parquet`` and ``DIR/val.parquet`` in verl's RL data layout
(``prompt`` as chat messages, ``data_source``, ``reward_model.ground_truth`` = the revised
text, unused by editalign's rewards). An arm runs ``python -m verl.trainer.main_ppo`` with
:func:`overrides` (``--print`` prints them instead), every extra argument appended as one
more Hydra override, so anything here can be changed from the command line:

- ``ppo``: PPO with a critic, ``algorithm.adv_estimator=gae``: verl's GAE reads
  ``token_level_rewards`` per token (``compute_gae_advantage_return``), so the token
  rewards are used as they are, with no extra code;
- ``dense_group``: ``algorithm.adv_estimator=editalign_dense_group`` with 4 samples per
  prompt and no critic (editalign's dense group advantage, ``advantage.py``).

``summary`` reads verl's file-logger lines (``VERL_FILE_LOGGER_PATH``) of each arm and
writes, per arm, the reward's course (``critic/score/mean``: the mean over the batch of each
response's summed token rewards, before any KL) and the step time.

Both arms score with the ``editalign`` reward manager on verl's colocated reward-model
path (``reward_manager.py`` explains why that path). Sized for one GPU and a 135M policy.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

ARMS = ("ppo", "dense_group")


def overrides(arm: str, *, policy: str, reward_model: str, data: str, steps: int = 20,
              token_coef: float = 1.0) -> list[str]:
    """verl's Hydra overrides for one arm on one GPU."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; allowed: {', '.join(ARMS)}")
    group = arm == "dense_group"
    common = [
        f"data.train_files={os.path.join(data, 'train.parquet')}",
        f"data.val_files={os.path.join(data, 'val.parquet')}",
        "data.train_batch_size=32",
        "data.max_prompt_length=256",
        "data.max_response_length=128",
        "data.filter_overlong_prompts=True",
        "data.truncation=error",
        f"actor_rollout_ref.model.path={policy}",
        "actor_rollout_ref.actor.optim.lr=2e-6",
        "actor_rollout_ref.actor.ppo_mini_batch_size=16",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=16",
        "actor_rollout_ref.actor.use_kl_loss=False",
        "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.3",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16",
        f"actor_rollout_ref.rollout.n={4 if group else 1}",
        "algorithm.use_kl_in_reward=False",
        # editalign's rewards, per token: the colocated reward-model path
        "reward.reward_manager.name=editalign",
        "reward.reward_model.enable=True",
        "reward.reward_model.enable_resource_pool=False",
        "reward.custom_reward_function.path=pkg://editalign_verl.reward_manager",
        "reward.custom_reward_function.name=compute_score",
        # verl starts an inference server for reward_model.model_path on this path; the
        # editalign manager never queries it, so it gets the small policy and little memory.
        f"reward.reward_model.model_path={policy}",
        "reward.reward_model.rollout.name=vllm",
        "reward.reward_model.rollout.tensor_model_parallel_size=1",
        "reward.reward_model.rollout.gpu_memory_utilization=0.1",
        "reward.reward_model.rollout.prompt_length=256",
        "reward.reward_model.rollout.response_length=128",
        "reward.num_workers=2",
        f"+reward.reward_kwargs.model_path={reward_model}",
        "+reward.reward_kwargs.source=token",
        # verl's reward-loop workers are CPU actors: the token RM runs there, batched.
        "+reward.reward_kwargs.device=cpu",
        "trainer.n_gpus_per_node=1",
        "trainer.nnodes=1",
        f"trainer.total_training_steps={steps}",
        "trainer.save_freq=-1",
        "trainer.test_freq=-1",
        "trainer.val_before_train=False",
        "trainer.critic_warmup=0",
        "trainer.logger=[console,file]",
        "trainer.project_name=editalign_verl",
        f"trainer.experiment_name={arm}",
    ]
    if group:
        return [*common, "algorithm.adv_estimator=editalign_dense_group",
                f"+algorithm.editalign.token_coef={token_coef}",
                "+algorithm.editalign.token_term=reward_to_go", "critic.enable=False"]
    return [*common, "algorithm.adv_estimator=gae", "algorithm.gamma=1.0", "algorithm.lam=0.95",
            f"critic.model.path={policy}", "critic.optim.lr=1e-5",
            "critic.ppo_micro_batch_size_per_gpu=16"]


def write_prompts(data: str, preset: str | None, out: str, val_size: int, limit: int | None
                  ) -> tuple[int, int]:
    """verl's RL parquet files from editalign pairs: (train rows, val rows)."""
    import pandas as pd

    from editalign.data.pairs import load_pairs

    pairs, _ = load_pairs(data, preset=preset, limit=limit)
    rows = [{
        "data_source": f"editalign/{preset or 'pairs'}",
        "prompt": pair.prompt if isinstance(pair.prompt, list)
        else [{"role": "user", "content": pair.prompt}],
        "ability": "edit",
        "reward_model": {"style": "model", "ground_truth": pair.revised},
        "extra_info": {"id": pair.id, "index": i},
    } for i, pair in enumerate(pairs)]
    if len(rows) <= val_size:
        raise ValueError(f"{data}: {len(rows)} pairs, not more than --val_size {val_size}")
    os.makedirs(out, exist_ok=True)
    pd.DataFrame(rows[val_size:]).to_parquet(os.path.join(out, "train.parquet"))
    pd.DataFrame(rows[:val_size]).to_parquet(os.path.join(out, "val.parquet"))
    return len(rows) - val_size, val_size


SUMMARY_METRICS = ("critic/score/mean", "critic/rewards/mean", "response_length/mean",
                   "actor/pg_loss", "timing_s/step")


def summarize(paths: Sequence[str]) -> dict[str, Any]:
    """Per log file (one arm): steps logged, and per metric its first and last value and
    the means of the first and last quarter of the steps (at least one step each)."""
    import json
    import statistics

    arms: dict[str, Any] = {}
    for path in paths:
        with open(path) as handle:
            steps = [json.loads(line) for line in handle if line.strip()]
        steps = [s for s in steps if "critic/score/mean" in s["data"]]  # training steps only
        if not steps:
            raise ValueError(f"{path}: no training step logged (critic/score/mean)")
        quarter = max(1, len(steps) // 4)
        metrics = {}
        for name in SUMMARY_METRICS:
            values = [s["data"][name] for s in steps if name in s["data"]]
            if values:
                metrics[name] = {"first": values[0], "last": values[-1],
                                 "mean_first_quarter": statistics.fmean(values[:quarter]),
                                 "mean_last_quarter": statistics.fmean(values[-quarter:])}
        arms[os.path.splitext(os.path.basename(path))[0]] = {"steps": len(steps),
                                                              "metrics": metrics}
    return arms


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m editalign_verl.recipe",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("prompts", *ARMS, "summary"))
    parser.add_argument("--data", required=True, nargs="+", help="prompts: pairs (any "
                        "editalign format); an arm: the folder `prompts` wrote; summary: "
                        "verl's file-logger .jsonl files, one per arm")
    parser.add_argument("--preset", help="prompts: editalign's --preset (e.g. mlqe-pe)")
    parser.add_argument("--out", help="prompts: output folder; summary: the JSON file")
    parser.add_argument("--val_size", type=int, default=64)
    parser.add_argument("--limit", type=int, help="prompts: read at most this many rows")
    parser.add_argument("--policy", help="an arm: the policy (a local HF model folder)")
    parser.add_argument("--reward_model", help="an arm: an editalign token reward model folder")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--token_coef", type=float, default=1.0, help="dense_group: λ")
    parser.add_argument("--print", action="store_true", help="print the overrides, run nothing")
    args, extra = parser.parse_known_args(argv)
    if args.what != "summary" and len(args.data) != 1:
        parser.error(f"{args.what} takes one --data")
    if args.what in ("prompts", "summary") and not args.out:
        parser.error(f"{args.what} needs --out")
    if args.what == "summary":
        import json

        result = summarize(args.data)
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=2)
        for arm, info in result.items():
            score = info["metrics"]["critic/score/mean"]
            print(f"{arm}: {info['steps']} steps, critic/score/mean {score['first']:.4f} -> "
                  f"{score['last']:.4f} (first quarter {score['mean_first_quarter']:.4f}, last "
                  f"quarter {score['mean_last_quarter']:.4f})")
        return 0
    if args.what == "prompts":
        train, val = write_prompts(args.data[0], args.preset, args.out, args.val_size,
                                   args.limit)
        print(f"prompts: {train} train, {val} val rows in {args.out}")
        return 0
    if not args.policy or not args.reward_model:
        parser.error(f"{args.what} needs --policy and --reward_model")
    cmd = overrides(args.what, policy=args.policy, reward_model=args.reward_model,
                    data=args.data[0], steps=args.steps, token_coef=args.token_coef) + extra
    if args.print:
        print("\n".join(cmd))
        return 0
    # VERL_USE_EXTERNAL_MODULES: the registrations in the driver and every Ray worker, and
    # a loud error if the plugin cannot be imported (entry points fail quietly).
    env = {**os.environ, "VERL_USE_EXTERNAL_MODULES": "editalign_verl"}
    return subprocess.call([sys.executable, "-m", "verl.trainer.main_ppo", *cmd], env=env)


if __name__ == "__main__":
    sys.exit(main())
