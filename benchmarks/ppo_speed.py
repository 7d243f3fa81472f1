"""Time per PPO iteration: dense vs sparse rewards, and editalign vs TRL 1.12's PPOTrainer.

Same tiny configuration for every arm: policy `tiny` (2-layer Llama, 260-token vocabulary),
16 prompts per iteration, responses up to 32 new tokens, 2 PPO epochs over 2 mini-batches,
a value model and a reward model of the same backbone (weights untrained: this measures
speed only). editalign's arms split each iteration into rollout / scoring / update.

TRL 1.13+ has no PPO trainer; TRL 1.12.0 (the last with one, `trl.experimental.ppo`) is
installed by this script into its own directory (`--trl-site`, default
/tmp/editalign-trl112) and run in a subprocess with that directory first on PYTHONPATH, so
the project's TRL stays untouched. Its time per iteration is measured with a callback at
every PPO update.

    python benchmarks/ppo_speed.py [--iterations 12] [--warmup 2] [--skip-trl]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

from _common import write_result
from editalign.models import load_model, load_tokenizer, resolve_model_path
from editalign.reward_model import RewardModelConfig, TokenRewardModel
from editalign.train.ppo import PPOConfig, PPOTrainer
from editalign.train.ppo_rollout import reward_model_source

SETTINGS = dict(rollout_batch_size=16, per_device_train_batch_size=8, ppo_epochs=2,
                max_new_tokens=32, learning_rate=1e-5, kl_coef=0.05)
PROMPTS = [f"Question {i}: tell me about item {i}." for i in range(64)]


def editalign_arms(iterations: int, warmup: int, model: str) -> dict[str, dict]:
    """Dense and sparse trainers stepped in turn (A B A B ...), so machine drift hits both."""
    tok = load_tokenizer(model)
    trainers = {}
    for kind in ("sequence", "token"):
        torch.manual_seed(0)
        config = PPOConfig(output_dir=tempfile.mkdtemp(), use_cpu=True, seed=0, report_to=[],
                           save_strategy="no", disable_tqdm=True,
                           num_iterations=iterations + warmup, **SETTINGS)
        reward_model = TokenRewardModel.from_backbone(model).requires_grad_(False)
        value = TokenRewardModel.from_backbone(model, RewardModelConfig(transform="identity"))
        trainers[kind] = PPOTrainer(config, load_model(model), value, tok,
                                    reward_model_source(reward_model, kind), PROMPTS,
                                    ref_model=load_model(model))
    for _ in range(iterations + warmup):
        for trainer in trainers.values():
            trainer.step()
    return {kind: _summary(trainer.history[warmup:]) for kind, trainer in trainers.items()}


def _summary(history: list[dict]) -> dict:
    total = [h["time_rollout"] + h["time_scoring"] + h["time_update"] for h in history]
    return {
        "seconds_per_iteration_median": statistics.median(total),
        "rollout_median": statistics.median(h["time_rollout"] for h in history),
        "scoring_median": statistics.median(h["time_scoring"] for h in history),
        "update_median": statistics.median(h["time_update"] for h in history),
        "response_length_mean": statistics.mean(h["response_length"] for h in history),
        "iterations_timed": len(history),
    }


TRL_SCRIPT = textwrap.dedent('''
    import json, os, sys, time, warnings
    warnings.filterwarnings("ignore")
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                              AutoTokenizer, TrainerCallback)
    import trl
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    path, iterations, warmup, settings = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
    prompts = json.loads(sys.argv[5])
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(path)
    ref = AutoModelForCausalLM.from_pretrained(path)
    value = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    reward = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    for m in (value, reward):
        m.config.pad_token_id = tok.pad_token_id
    ds = Dataset.from_dict({"input_ids": [tok(p)["input_ids"] for p in prompts]})
    n = settings["rollout_batch_size"]
    config = PPOConfig(output_dir=sys.argv[6], use_cpu=True, seed=0, report_to=[], save_strategy="no",
                       per_device_train_batch_size=n, num_mini_batches=n // settings["per_device_train_batch_size"],
                       num_ppo_epochs=settings["ppo_epochs"], response_length=settings["max_new_tokens"],
                       learning_rate=settings["learning_rate"], kl_coef=settings["kl_coef"],
                       total_episodes=n * (iterations + warmup), num_sample_generations=0,
                       stop_token="eos", local_rollout_forward_batch_size=n, disable_tqdm=True)
    stamps = []
    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())
    trainer = PPOTrainer(args=config, processing_class=tok, model=policy, ref_model=ref,
                         reward_model=reward, value_model=value, train_dataset=ds, callbacks=[Stamp()])
    start = time.perf_counter()
    trainer.train()
    times = [b - a for a, b in zip([start] + stamps[:-1], stamps)]
    print("RESULT " + json.dumps({"trl_version": trl.__version__, "per_iteration": times[warmup:]}))
''')


def trl_arm(iterations: int, warmup: int, model: str, site: Path) -> dict:
    if not (site / "trl" / "__init__.py").exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                        str(site), "trl==1.12.0"], check=True)
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               TRL_EXPERIMENTAL_SILENCE="1")
    out = subprocess.run(
        [sys.executable, "-c", TRL_SCRIPT, resolve_model_path(model), str(iterations),
         str(warmup), json.dumps(SETTINGS), json.dumps(PROMPTS), tempfile.mkdtemp()],
        env=env, capture_output=True, text=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"TRL 1.12 arm failed:\n{out.stderr[-3000:]}")
    result = json.loads(line[len("RESULT "):])
    times = result["per_iteration"]
    return {"trl_version": result["trl_version"],
            "seconds_per_iteration_median": statistics.median(times),
            "iterations_timed": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--trl-site", type=Path, default=Path("/tmp/editalign-trl112"))
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.perf_counter()
    arms = editalign_arms(args.iterations, args.warmup, args.model)
    dense, sparse = arms["token"], arms["sequence"]
    result = {
        "setup": {"model": args.model, **SETTINGS, "iterations": args.iterations,
                  "warmup": args.warmup, "torch_threads": torch.get_num_threads()},
        "editalign_sparse": sparse,
        "editalign_dense": dense,
        "dense_over_sparse": dense["seconds_per_iteration_median"]
        / sparse["seconds_per_iteration_median"],
        "target_dense_over_sparse": 1.10,
    }
    if not args.skip_trl:
        trl = trl_arm(args.iterations, args.warmup, args.model, args.trl_site)
        result["trl_1_12"] = trl
        result["editalign_sparse_over_trl"] = (sparse["seconds_per_iteration_median"]
                                               / trl["seconds_per_iteration_median"])
        result["target_editalign_over_trl"] = 1.0
    result["wall_seconds"] = time.perf_counter() - started
    write_result("ppo_speed", result)
    print(json.dumps({k: v for k, v in result.items() if k != "setup"}, indent=2))


if __name__ == "__main__":
    main()
