"""``editalign bench run``: train every method on the same edit pairs, measure win rates.

Input: a directory written by ``editalign bench init`` (the initial policy, its revised
samples ``pairs.train.jsonl``, the held-out ``prompts.test.jsonl``). For every method the
runner calls the method's own ``editalign train`` entry point with the same flags (same
starting policy, pairs, optimizer steps, batch size, learning rate and seed) and then
``evaluate_winrate`` against the initial policy with the gold judge on the held-out
prompts. Methods:

- ``sft``: TRL SFT on the revised responses;
- ``dpo``: TRL DPO, revised preferred over original;
- ``dpo-sft``: TRL DPO plus SFT on the revised side (RPO);
- ``figa``: the FIGA loss;
- ``ppo-seq``: a sequence-level reward model (``rm``) then PPO with its last-token reward;
- ``ppo-token``: a token-level reward model (``token-rm``) then PPO with dense rewards;
- ``ppo-dpo``: PPO with the dense implicit reward β·(log π_DPO − log π_ref) of the run's
  ``dpo`` policy (RTO): a dense reward that needs no edit labels, only the pairs.

The PPO arms share every PPO hyper-parameter and differ only in the reward.
Only pairs with an edit are used (a pair whose sample needed no fix carries no edit
signal), identically for all methods. Results: ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

METHODS = ("sft", "dpo", "dpo-sft", "figa", "ppo-seq", "ppo-token", "ppo-dpo")
# What `bench run` trains unless --methods says otherwise (`--methods all`: every method):
# the first task's reported six, so its quick run (the demo) keeps its time.
DEFAULT_METHODS = ("sft", "dpo", "dpo-sft", "figa", "ppo-seq", "ppo-token")
# The `editalign train` command of each supervised method, and the flags that make it that
# method: dpo-sft is DPO plus SFT on the revised side (RPO, Pang et al. 2024; TRL 1.x writes
# it as two weighted loss types), the strongest pairwise baseline we know to run.
SUPERVISED = {"sft": ("sft", []), "dpo": ("dpo", []), "figa": ("figa", []),
              "dpo-sft": ("dpo", ["--loss_type", "sigmoid", "sft", "--loss_weights", "1", "1"])}

# Hyper-parameters chosen on a *tuning* task (another world: `bench init --seed 1`), never
# on the reported one: benchmarks/bench_tuning.py, results in
# benchmarks/results/bench_tuning_*.{json,md}; each method got the same learning-rate range.
TUNED_LEARNING_RATES = {"sft": 3e-3, "dpo": 1e-4, "dpo-sft": 1e-3, "figa": 3e-3}
TUNED_ARGS: dict[str, list[str]] = {
    "dpo": ["--beta", "0.3"],
    # The best FIGA with a push-down term: γ = 1 (every revised token), β = 0.25 on the
    # deletions. On the tuning task β = 0 was better still, but that is SFT exactly; γ < 1
    # and larger β lost at every tuned rate, and the official γ = 0 diverged at lr ≥ 1e-3.
    "figa": ["--gamma", "1", "--beta", "0.25"],
    # Kept tokens trained towards reward 0: without it the token RM gives every kept token
    # a negative reward (Σ ≈ −10 per response), a length penalty that PPO then follows.
    "token-rm": ["--equal_weight", "1"],
}
# TRL's DPOConfig β, what `ppo-dpo` reads the DPO policy with when no --beta was given.
DPO_DEFAULT_BETA = 0.1
# Done markers: a rerun into the same --out skips every stage whose marker exists.
# The held-out edit pairs (with an edit) of `bench init`'s pairs.test.jsonl, in the run
# directory beside pairs.edited.jsonl; the reward models are evaluated on them.
HELD_OUT_PAIRS = "pairs.test.edited.jsonl"
TRAIN_DONE = "train_done.json"  # in <run>/<method>/, after training
EVAL_DONE = "winrate.json"  # in <run>/<method>/, the evaluation result (the run's entry)


@dataclass
class RunConfig:
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    max_steps: int = 100  # optimizer steps of sft / dpo / figa and of each reward model
    batch_size: int = 16
    learning_rate: float | None = None  # sft / dpo / dpo-sft / figa; None: TUNED_LEARNING_RATES
    rm_learning_rate: float = 1e-3
    ppo_iterations: int = 100
    ppo_rollout_batch_size: int = 16
    ppo_learning_rate: float = 5e-5
    seed: int = 0  # the seed of one run (set from ``seeds`` by run_benchmark)
    seeds: list[int] = field(default_factory=lambda: [0])  # one full run per seed
    eval_limit: int | None = None
    eval_max_new_tokens: int = 64
    eval_temperature: float = 1.0
    eval_samples_per_prompt: int = 4  # responses per held-out prompt and side
    eval_batch_size: int = 72
    # Extra `editalign train` flags per stage, appended last so they override the shared
    # and tuned ones: keys are methods, the reward models (rm, token-rm) and ppo (both PPO
    # arms; keep arm-specific PPO flags for the reward).
    extra: dict[str, list[str]] = field(default_factory=dict)
    tuned: bool = True  # apply TUNED_ARGS (False: every trainer's own defaults)

    def stage_args(self, stage: str) -> list[str]:
        return [*(TUNED_ARGS.get(stage, []) if self.tuned else []), *self.extra.get(stage, [])]

    def method_learning_rate(self, method: str) -> float:
        return self.learning_rate if self.learning_rate is not None \
            else TUNED_LEARNING_RATES[method]


def _common(config: RunConfig, lr: float) -> list[str]:
    return ["--max_steps", str(config.max_steps),
            "--per_device_train_batch_size", str(config.batch_size),
            "--learning_rate", str(lr), "--seed", str(config.seed),
            # One schedule for every method (TRL's trainers default to linear decay, FIGA's
            # official code to constant): a method must not win by its schedule.
            "--lr_scheduler_type", "linear",
            "--report_to", "none", "--save_strategy", "no",
            "--logging_steps", str(max(1, min(10, config.max_steps // 5))),
            "--disable_tqdm", "True"]


def _train(method: str, argv: list[str]) -> float:
    from editalign.train.common import run_trainer

    logger.info("editalign train %s %s", method, " ".join(argv))
    started = time.perf_counter()
    code = run_trainer(method, argv)
    if code:
        raise RuntimeError(f"editalign train {method} exited with {code}")
    return time.perf_counter() - started


def _ppo_prompts(bench: Path, out: Path) -> Path:
    """The training prompts in the pairs layout ``editalign train ppo --prompts`` reads
    (its plain-rows fallback takes text prompts only; these are chat messages)."""
    from editalign.bench.task import read_jsonl, write_jsonl

    path = out / "ppo_prompts.jsonl"
    if not path.is_file():
        write_jsonl(path, ({"id": r["id"], "prompt": r["prompt"], "original": "-",
                            "revised": "-"} for r in read_jsonl(bench / "prompts.train.jsonl")))
    return path


def train_method(method: str, bench: Path, pairs: Path, out: Path, config: RunConfig
                 ) -> tuple[Path, float]:
    """Train one method; returns the policy directory and the seconds it took."""
    policy = str(bench / "policy")
    extra = config.stage_args(method)
    target = out / method
    marker = target / TRAIN_DONE
    if marker.is_file():  # resume: this stage finished in an earlier (interrupted) run
        logger.info("skip training %s (done: %s)", method, marker)
        return target, float(json.loads(marker.read_text())["seconds"])
    target, seconds = _train_method(method, bench, pairs, out, config, policy, extra)
    marker.write_text(json.dumps({"method": method, "seconds": seconds}) + "\n")
    return target, seconds


def _train_method(method: str, bench: Path, pairs: Path, out: Path, config: RunConfig,
                  policy: str, extra: list[str]) -> tuple[Path, float]:
    target = out / method
    if method in SUPERVISED:
        trainer, flags = SUPERVISED[method]
        seconds = _train(trainer, ["--model", policy, "--data", str(pairs), "--output_dir",
                                   str(target),
                                   *_common(config, config.method_learning_rate(method)),
                                   *flags, *extra])
        return target, seconds
    if method in ("ppo-seq", "ppo-token"):
        rm_method, reward = ("rm", "sequence") if method == "ppo-seq" else ("token-rm", "token")
        rm_dir = out / rm_method
        seconds = 0.0
        if not (rm_dir / "reward_config.json").is_file():  # both arms of a run share it
            held_out = pairs.parent / HELD_OUT_PAIRS
            seconds += _train(rm_method, [
                "--model", policy, "--data", str(pairs), "--output_dir", str(rm_dir),
                *_common(config, config.rm_learning_rate),
                *(["--eval_data", str(held_out)] if held_out.is_file() else []),
                *config.stage_args(rm_method)])
        seconds += _train("ppo", [
            "--model", policy, "--prompts", str(_ppo_prompts(bench, out)),
            "--reward_model", str(rm_dir), "--reward", reward, "--output_dir", str(target),
            "--num_iterations", str(config.ppo_iterations),
            "--rollout_batch_size", str(config.ppo_rollout_batch_size),
            "--per_device_train_batch_size", str(config.batch_size),
            "--learning_rate", str(config.ppo_learning_rate), "--seed", str(config.seed),
            "--report_to", "none", "--save_strategy", "no",
            *config.stage_args("ppo"), *extra])
        return target, seconds
    if method == "ppo-dpo":
        # The DPO policy of this run (trained here unless `dpo` already ran; its time is
        # reported with the dpo arm) and the β it was trained with.
        dpo_dir, _ = train_method("dpo", bench, pairs, out, config)
        dpo_args = [*_common(config, config.method_learning_rate("dpo")),
                    *SUPERVISED["dpo"][1], *config.stage_args("dpo")]
        beta = dpo_args[len(dpo_args) - 1 - dpo_args[::-1].index("--beta") + 1] \
            if "--beta" in dpo_args else str(DPO_DEFAULT_BETA)
        seconds = _train("ppo", [
            "--model", policy, "--prompts", str(_ppo_prompts(bench, out)),
            "--reward_model", str(dpo_dir), "--reward", "dpo", "--dpo_beta", beta,
            "--output_dir", str(target),
            "--num_iterations", str(config.ppo_iterations),
            "--rollout_batch_size", str(config.ppo_rollout_batch_size),
            "--per_device_train_batch_size", str(config.batch_size),
            "--learning_rate", str(config.ppo_learning_rate), "--seed", str(config.seed),
            "--report_to", "none", "--save_strategy", "no",
            *config.stage_args("ppo"), *extra])
        return target, seconds
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def run_benchmark(bench: str | Path, out: str | Path, config: RunConfig | None = None,
                  *, report: bool = True, progress: bool = True) -> list[dict[str, Any]]:
    """Train and evaluate every method for every seed; resumable (see the done markers).

    Writes ``results.json``, ``results.md`` and (``report=True``) the plots and
    ``report.html`` of :mod:`editalign.bench.report`.
    """
    from tqdm.auto import tqdm

    from editalign.bench.task import read_jsonl
    from editalign.data.pairs import load_pairs, save_pairs_jsonl
    from editalign.eval.judges import GoldWinJudge
    from editalign.eval.winrate import SamplingConfig, evaluate_winrate

    config = config or RunConfig()
    bench, out = Path(bench), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for method in config.methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    pairs, _ = load_pairs(bench / "pairs.train.jsonl")
    edited = [p for p in pairs if p.has_edit]
    if not edited:
        raise ValueError(f"{bench}/pairs.train.jsonl has no pair with an edit")
    pairs_file = save_pairs_jsonl(edited, out / "pairs.edited.jsonl")
    if (bench / "pairs.test.jsonl").is_file():  # older bench dirs have none
        test_pairs, _ = load_pairs(bench / "pairs.test.jsonl")
        save_pairs_jsonl([p for p in test_pairs if p.has_edit], out / HELD_OUT_PAIRS)
    rows = read_jsonl(bench / "prompts.test.jsonl")
    if config.eval_limit:
        rows = rows[:config.eval_limit]
    results = []
    reference = str(bench / "policy")
    for seed in config.seeds:
        run = replace(config, seed=seed)
        # Each seed trains every method afresh and samples the evaluation with that seed.
        run_out = out / f"seed{seed}" if len(config.seeds) > 1 else out
        sampling = SamplingConfig(max_new_tokens=config.eval_max_new_tokens,
                                  temperature=config.eval_temperature, seed=seed,
                                  batch_size=config.eval_batch_size,
                                  samples_per_prompt=config.eval_samples_per_prompt)
        bar = tqdm(config.methods, desc=f"bench run (seed {seed})", unit="method",
                   disable=not progress)
        for method in bar:
            bar.set_postfix(method=method)
            done = run_out / method / EVAL_DONE
            if done.is_file():  # resume: trained and evaluated in an earlier run
                entry = json.loads(done.read_text())
                results.append(entry)
                logger.info("skip %s seed %s (done: %s)", method, seed, done)
                continue
            policy_dir, seconds = train_method(method, bench, pairs_file, run_out, run)
            started = time.perf_counter()
            samples = run_out / method / "eval_samples.jsonl"
            result = evaluate_winrate(str(policy_dir), reference, rows, GoldWinJudge(),
                                      sampling, samples_out=samples)
            entry = {"method": method, "seed": seed, "train_seconds": seconds,
                     "eval_seconds": time.perf_counter() - started, **result.to_dict(),
                     "errors": _error_breakdown(samples, rows, sampling.samples_per_prompt)}
            rm_eval = _reward_model_eval(method, run_out)
            if rm_eval:
                entry["reward_model_eval"] = rm_eval
            done.write_text(json.dumps(entry, indent=2) + "\n")
            results.append(entry)
            bar.write(result.table().splitlines()[-1])
            # After every method, so an interrupted run still leaves what it measured.
            _write_results(out, config, bench, len(edited), results)
    found = comparisons(out, config)
    _write_results(out, config, bench, len(edited), results, found)
    table = results_table(results)
    if found:
        table += "\n\n" + comparisons_table(found)
    (out / "results.md").write_text(table + "\n")
    if report:
        from editalign.bench.report import write_report

        write_report(out, bench, results)
    return results


def _write_results(out: Path, config: RunConfig, bench: Path, n_pairs: int,
                   results: Sequence[dict[str, Any]],
                   found: Sequence[dict[str, Any]] = ()) -> None:
    (out / "results.json").write_text(json.dumps(
        {"config": asdict(config), "bench": str(bench), "pairs": n_pairs,
         "results": list(results), "summary": summarize(results),
         "comparisons": list(found)}, indent=2) + "\n")


def _error_breakdown(samples: Path, rows: Sequence[dict[str, Any]], k: int
                     ) -> dict[str, dict[str, float]]:
    """What the gold judge finds in both sides' evaluation samples (wrong values, unwanted
    phrases, right attributes): where a method's wins come from."""
    from editalign.bench.task import judge_summary, read_jsonl

    records = read_jsonl(samples)
    infos = [row["bench"] for row in rows for _ in range(k)]
    return {side: judge_summary([r[side] for r in records], infos)
            for side in ("policy", "reference")}


def _reward_model_eval(method: str, run_out: Path) -> dict[str, float] | None:
    """The PPO arm's reward model's metrics on the held-out edit pairs, if it has them."""
    rm = {"ppo-seq": "rm", "ppo-token": "token-rm"}.get(method)
    path = run_out / rm / "eval_results.json" if rm else None
    if path is None or not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    # The PPO arm reads a sequence RM at the last token and a token RM summed over tokens:
    # "pairwise_accuracy_last" / "_sum" is revised ≻ original as that arm sees it.
    keep = ("eval_pairwise_accuracy_last", "eval_pairwise_accuracy_sum", "eval_token_auroc",
            "eval_edit_auroc", "eval_calibration_mean_reward_original_equal", "eval_loss")
    return {k.removeprefix("eval_"): metrics[k] for k in keep if k in metrics}


# The comparisons the benchmark exists for (issue targets): FIGA against both baselines it
# must beat, and fine-grained against sequence-level PPO.
COMPARISONS = (("figa", "sft"), ("figa", "dpo"), ("figa", "dpo-sft"), ("ppo-token", "ppo-seq"),
               ("ppo-token", "ppo-dpo"))


def paired_comparison(out: Path, seeds: Sequence[int], a: str, b: str, *,
                      n_resamples: int = 2000) -> dict[str, Any] | None:
    """Win rate of ``a`` minus win rate of ``b``, paired: both were evaluated against the
    same reference samples (same prompts and sampling seeds), so per prompt the outcome
    difference (averaged over seeds and samples) is what the interval resamples.

    Returns the mean difference, its 95% bootstrap interval over prompts, the per-seed
    differences, and in how many seeds ``a`` was ahead; None if samples are missing.
    """
    from editalign.bench.task import read_jsonl
    from editalign.eval.winrate import bootstrap_interval

    per_prompt: dict[str, list[float]] = {}
    per_seed = []
    for seed in seeds:
        run_out = out / f"seed{seed}" if len(seeds) > 1 else out
        files = [run_out / m / "eval_samples.jsonl" for m in (a, b)]
        if not all(f.is_file() for f in files):
            return None
        rows_a, rows_b = (read_jsonl(f) for f in files)
        diffs = [ra["outcome"] - rb["outcome"] for ra, rb in zip(rows_a, rows_b, strict=True)]
        per_seed.append(sum(diffs) / len(diffs))
        for ra, d in zip(rows_a, diffs, strict=True):
            per_prompt.setdefault(str(ra["id"]), []).append(d)
    means = [sum(v) / len(v) for v in per_prompt.values()]
    low, high = bootstrap_interval(means, n_resamples=n_resamples, seed=0)
    return {"a": a, "b": b, "difference": sum(per_seed) / len(per_seed), "ci_low": low,
            "ci_high": high, "per_seed": per_seed,
            "seeds_ahead": sum(d > 0 for d in per_seed), "seeds": len(per_seed)}


def comparisons(out: Path, config: RunConfig) -> list[dict[str, Any]]:
    pairs = [(a, b) for a, b in COMPARISONS if a in config.methods and b in config.methods]
    found = (paired_comparison(out, config.seeds, a, b) for a, b in pairs)
    return [c for c in found if c is not None]


def comparisons_table(found: Sequence[dict[str, Any]]) -> str:
    lines = ["Paired differences (win rate of A minus win rate of B against the same "
             "reference samples; interval: bootstrap over prompts):", "",
             "| A − B | difference | 95% CI | seeds where A is ahead | per seed |",
             "|---|---|---|---|---|"]
    for c in found:
        lines.append(f"| {c['a']} − {c['b']} | {c['difference']:+.3f} | "
                     f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] | "
                     f"{c['seeds_ahead']}/{c['seeds']} | "
                     f"{', '.join(f'{d:+.3f}' for d in c['per_seed'])} |")
    return "\n".join(lines)


def summarize(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method: mean (and standard deviation over seeds) of the win rate, KL, score."""
    import statistics

    out = []
    for method in dict.fromkeys(r["method"] for r in results):
        rs = [r for r in results if r["method"] == method]
        rates = [r["win_rate"] for r in rs]
        kls = [r["kl"] for r in rs if r["kl"] is not None]
        out.append({"method": method, "seeds": [r["seed"] for r in rs],
                    "win_rate": statistics.fmean(rates),
                    "win_rate_sd": statistics.stdev(rates) if len(rates) > 1 else 0.0,
                    "kl": statistics.fmean(kls) if kls else None,
                    "score_policy": statistics.fmean(r["score_policy"] for r in rs),
                    "score_reference": statistics.fmean(r["score_reference"] for r in rs),
                    **{f"{key}_{side}": statistics.fmean(r["errors"][side][key] for r in rs)
                       for key in ("wrong_per_response", "unwanted_per_response")
                       for side in ("policy", "reference") if all("errors" in r for r in rs)},
                    "length_policy": statistics.fmean(r["length_policy"] for r in rs)})
    return out


def results_table(results: Sequence[dict[str, Any]]) -> str:
    """Markdown: one row per (method, seed); with several seeds, a per-method mean table."""
    lines = ["| method | seed | win rate vs initial | 95% CI | gold score | initial's score | "
             "KL | length | train s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        kl = "n/a" if r["kl"] is None else f"{r['kl']:.2f}"
        lines.append(f"| {r['method']} | {r.get('seed', 0)} | {r['win_rate']:.3f} | "
                     f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['score_policy']:.3f} | "
                     f"{r['score_reference']:.3f} | {kl} | {r['length_policy']:.1f} | "
                     f"{r['train_seconds']:.0f} |")
    if len({r.get("seed", 0) for r in results}) > 1:
        errors = all("errors" in r for r in results)
        head = ("| method | seeds | mean win rate ± sd | gold score | initial's score | KL | "
                "length |")
        if errors:  # where the wins come from: the gold judge's error counts, both sides
            head += " wrong values / response (initial's) | unwanted phrases / response |"
        lines += ["", head, "|" + "---|" * (head.count("|") - 1)]
        for m in summarize(results):
            kl = "n/a" if m["kl"] is None else f"{m['kl']:.2f}"
            row = (f"| {m['method']} | {len(m['seeds'])} | {m['win_rate']:.3f} ± "
                   f"{m['win_rate_sd']:.3f} | {m['score_policy']:.3f} | "
                   f"{m['score_reference']:.3f} | {kl} | {m['length_policy']:.1f} |")
            if errors:
                row += (f" {m['wrong_per_response_policy']:.2f} "
                        f"({m['wrong_per_response_reference']:.2f}) | "
                        f"{m['unwanted_per_response_policy']:.2f} "
                        f"({m['unwanted_per_response_reference']:.2f}) |")
            lines.append(row)
    rm_rows = [r for r in results if r.get("reward_model_eval")]
    if rm_rows:
        lines += ["", "Reward models on the held-out edit pairs (the initial policy's test "
                  "samples, revised): revised ≻ original as the PPO arm reads the reward "
                  "(last token / sum of tokens), and AUROC of telling the original's "
                  "deleted/substituted tokens from its kept ones.", "",
                  "| PPO arm | seed | pair accuracy (as read) | token AUROC |", "|---|---|---|---|"]
        for r in rm_rows:
            ev = r["reward_model_eval"]
            acc = ev.get("pairwise_accuracy_last" if r["method"] == "ppo-seq"
                         else "pairwise_accuracy_sum", float("nan"))
            lines.append(f"| {r['method']} | {r.get('seed', 0)} | {acc:.3f} | "
                         f"{ev.get('token_auroc', float('nan')):.3f} |")
    return "\n".join(lines)
