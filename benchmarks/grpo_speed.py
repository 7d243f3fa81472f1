"""Time per GRPO step: dense GRPO (editalign's DenseGRPOTrainer, token RM) vs stock TRL
GRPOTrainer (the same reward model read as a sequence reward), side by side in one run.

Same settings for both arms: the same policy, prompts, group size, batch, generation length
and seed; the reward model is one TokenRewardModel on the policy's backbone (untrained
weights: this measures speed, not quality). The stock arm's reward is a TRL reward function
that scores the same token ids with the reward model read at the last token, so both arms
do one reward-model forward per step; what dense GRPO adds is the token term (gathered,
group-normalised) on top. Each step is split into generation (``_generate``), reward (the
reward functions) and update (the rest of the step: log-probabilities, loss, backward,
optimizer). The arms run in turn, twice (stock, dense, stock, dense), and each reports its
least disturbed repeat, so a noisy neighbour on a shared machine does not decide the ratio.

    python benchmarks/grpo_speed.py [--models tiny smollm2-135m] [--steps 6] [--warmup 1]

Writes benchmarks/results/grpo_speed.json. ``part`` is reused by benchmarks/gpu_suite.py.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import torch

SETTINGS = dict(per_device_train_batch_size=16, num_generations=4, max_completion_length=32,
                learning_rate=1e-6, beta=0.0, temperature=1.0)
PROMPTS = [f"Question {i}: tell me about item {i}." for i in range(64)]


class StepClock:
    """Seconds per step in generation, reward and the whole step, by wrapping the trainer's
    ``_generate``, its reward functions and ``training_step``."""

    def __init__(self, trainer: Any, sync: bool) -> None:
        self.sync = sync
        self.rows: list[dict[str, float]] = []
        self._current: dict[str, float] = {}
        generate, step = trainer._generate, trainer.training_step
        trainer._generate = self._timed("generation", generate)
        trainer.training_step = self._step(step)
        trainer.reward_funcs = [self._timed("reward", f) for f in trainer.reward_funcs]
        if hasattr(trainer, "_token_term"):  # dense GRPO's own extra work (gather + term)
            trainer._token_term = self._timed("token_term", trainer._token_term)
        self.tokens = 0
        self.trainer = trainer

    def _now(self) -> float:
        if self.sync and torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def _timed(self, key: str, fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            start = self._now()
            out = fn(*args, **kwargs)
            self._current[key] = self._current.get(key, 0.0) + self._now() - start
            if key == "generation":
                self.tokens += sum(len(ids) for ids in out[1])
            return out

        wrapped.__name__ = getattr(fn, "__name__", key)  # TRL names reward metrics by it
        return wrapped

    def _step(self, fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self._current = {}
            tokens = self.tokens
            start = self._now()
            out = fn(*args, **kwargs)
            total = self._now() - start
            gen, reward = self._current.get("generation", 0.0), self._current.get("reward", 0.0)
            self.rows.append({"step": total, "generation": gen, "reward": reward,
                              "token_term": self._current.get("token_term", 0.0),
                              "update": total - gen - reward,
                              "rollout_tokens": float(self.tokens - tokens)})
            return out

        return wrapped


def build(model_name: str, dense: bool, gpu: bool, vllm: bool, steps: int) -> tuple[Any, Any]:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from editalign.models import load_model, load_tokenizer, resolve_model_path
    from editalign.reward_model import RewardModelConfig, TokenRewardModel
    from editalign.reward_sources import right_padded, sequence_rm_source, token_rm_source
    from editalign.train.grpo import DenseGRPOConfig, DenseGRPOTrainer

    torch.manual_seed(0)
    path = resolve_model_path(model_name)
    tok = load_tokenizer(path)
    device = "cuda" if gpu else "cpu"
    dtype = torch.bfloat16 if gpu else torch.float32
    rm = TokenRewardModel.from_backbone(path, RewardModelConfig(), tokenizer=tok, dtype=dtype)
    rm.requires_grad_(False).eval().to(device)
    common = dict(output_dir=tempfile.mkdtemp(prefix="grpo-speed-"), use_cpu=not gpu, bf16=gpu,
                  report_to=[], save_strategy="no", disable_tqdm=True, logging_steps=1000,
                  seed=0, max_steps=steps, gradient_checkpointing=False, **SETTINGS)
    if vllm:
        import os

        # Colocated vLLM runs as an external-launcher worker of this process's group: a
        # single process launched with plain `python` must name that group itself.
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                           ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29513")):
            os.environ.setdefault(key, value)
        common.update(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3)
    data = Dataset.from_dict({"prompt": PROMPTS})
    policy = load_model(path, dtype=dtype)
    if dense:
        trainer = DenseGRPOTrainer(policy, None, DenseGRPOConfig(**common, token_coef=1.0),
                                   reward_source=token_rm_source(rm), train_dataset=data,
                                   processing_class=tok)
        return trainer, rm
    source = sequence_rm_source(rm)

    def rm_reward(prompts: list[str], completions: list[str], completion_ids: list[list[int]],
                  **_: Any) -> list[float]:
        prompt_ids = [tok(p)["input_ids"] for p in prompts]  # what TRL tokenized
        batch = right_padded(prompt_ids, completion_ids, tok.pad_token_id, device)
        return source.score(*batch).sequence.float().tolist()

    trainer = GRPOTrainer(policy, [rm_reward], GRPOConfig(**common), train_dataset=data,
                          processing_class=tok)
    return trainer, rm


def summary(rows: list[dict[str, float]]) -> dict[str, float]:
    out = {f"{k}_seconds_median": round(statistics.median(r[k] for r in rows), 4)
           for k in ("step", "generation", "reward", "token_term", "update")}
    # The least disturbed step: on a shared machine the minimum tracks the work, the
    # median the neighbours.
    out["step_seconds_min"] = round(min(r["step"] for r in rows), 4)
    out["steps_seconds"] = [round(r["step"], 4) for r in rows]
    out["rollout_tokens_per_s"] = round(sum(r["rollout_tokens"] for r in rows)
                                        / max(sum(r["generation"] for r in rows), 1e-9), 1)
    return out


def part(model_name: str, *, steps: int, warmup: int, repeats: int = 2, gpu: bool = False,
         vllm: bool = False) -> dict[str, Any]:
    """Both arms on one model, ``repeats`` times in the order stock, dense, stock, dense...:
    each run ``warmup`` untimed steps then ``steps`` timed ones; per arm the repeat with the
    fastest median step is reported (the least disturbed by a noisy neighbour)."""
    import os

    runs: dict[str, list[dict[str, Any]]] = {"stock_trl": [], "dense": []}
    load_before = os.getloadavg()[0]
    for _ in range(repeats):
        for name, dense in (("stock_trl", False), ("dense", True)):
            trainer, _ = build(model_name, dense, gpu, vllm, steps=warmup + steps)
            clock = StepClock(trainer, sync=gpu)
            trainer.train()
            runs[name].append(summary(clock.rows[warmup:]))
            del trainer
    result: dict[str, Any] = {"model": model_name, "settings": SETTINGS, "steps": steps,
                              "warmup": warmup, "repeats": repeats, "vllm": vllm,
                              # a shared machine's load while measuring (1-min average)
                              "load_average": [round(load_before, 2),
                                               round(os.getloadavg()[0], 2)]}
    for name, summaries in runs.items():
        result[name] = min(summaries, key=lambda r: r["step_seconds_median"])
        result[f"{name}_all_repeats"] = summaries
    result["dense_over_stock_step_time"] = round(
        result["dense"]["step_seconds_median"] / result["stock_trl"]["step_seconds_median"], 3)
    fastest = {name: min(r["step_seconds_min"] for r in summaries)
               for name, summaries in runs.items()}
    result["dense_over_stock_fastest_step"] = round(fastest["dense"] / fastest["stock_trl"], 3)
    # What dense GRPO adds besides the reward model (which both arms run): its token term,
    # as a share of the dense arm's median step.
    result["token_term_share_of_step"] = round(
        result["dense"]["token_term_seconds_median"] / result["dense"]["step_seconds_median"], 4)
    return result


def main() -> None:
    from _common import write_result

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "smollm2-135m"])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--name", default="grpo_speed", help="results file name (no suffix)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = {"command": "python benchmarks/grpo_speed.py " + " ".join(
        f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()), "models": {}}
    for model in args.models:
        try:
            results["models"][model] = part(model, steps=args.steps, warmup=args.warmup,
                                            repeats=args.repeats)
        except Exception as err:  # a model that is not in the cache is reported, not faked
            results["models"][model] = {"status": "failed", "error": f"{type(err).__name__}: "
                                        f"{err}"[:500]}
        print(model, results["models"][model], flush=True)
        path = write_result(args.name, results)  # after every model: nothing measured is lost
    print(path)


if __name__ == "__main__":
    main()
