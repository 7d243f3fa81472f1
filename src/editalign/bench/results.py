"""What a benchmark run measured, read back and summarised: the run directory's files,
per-method summaries over seeds, the Markdown tables, and the paired comparisons.

The runner (:mod:`editalign.bench.runner`) only orchestrates training and evaluation; the
report (:mod:`editalign.bench.report`) draws from what this module computes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from editalign.bench.task import judge_summary
from editalign.data.jsonl import nan_to_none, read_jsonl
from editalign.eval.winrate import bootstrap_interval, seeds_and_prompts_interval
from editalign.outputs import write_text

# Done markers: a rerun into the same --out skips every stage whose marker exists.
# The held-out edit pairs (with an edit) of `bench init`'s pairs.test.jsonl, in the run
# directory beside pairs.edited.jsonl; the reward models are evaluated on them.
HELD_OUT_PAIRS = "pairs.test.edited.jsonl"
TRAIN_DONE = "train_done.json"  # in <run>/<method>/, after training
EVAL_DONE = "winrate.json"  # in <run>/<method>/, the evaluation result (the run's entry)


def write_results(out: Path, config: Any, bench: Path, n_pairs: int,
                   results: Sequence[dict[str, Any]],
                   found: Sequence[dict[str, Any]] = ()) -> None:
    # strict JSON: an undefined number (a spread over one seed, an AUROC without both
    # classes) is null, never NaN
    # replaced whole, never torn: the seed shards of one --out each write it
    write_text(out / "results.json", json.dumps(nan_to_none(
        {"config": asdict(config), "bench": str(bench), "pairs": n_pairs,
         "results": list(results), "summary": summarize(results),
         "comparisons": list(found)}), indent=2, allow_nan=False) + "\n")


def error_breakdown(samples: Path, rows: Sequence[dict[str, Any]], k: int
                     ) -> dict[str, dict[str, float]]:
    """What the gold judge finds in both sides' evaluation samples (wrong values, unwanted
    phrases, right attributes): where a method's wins come from."""
    records = read_jsonl(samples)
    infos = [row["bench"] for row in rows for _ in range(k)]
    return {side: judge_summary([r[side] for r in records], infos)
            for side in ("policy", "reference")}


def reward_model_eval(method: str, run_out: Path) -> dict[str, float] | None:
    """The PPO arm's reward model's metrics on the held-out edit pairs, if it has them."""
    rm = {"ppo-seq": "rm", "ppo-token": "token-rm", "grpo-seq": "rm",
          "grpo-token": "token-rm"}.get(method)
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
               ("ppo-token", "ppo-dpo"), ("figa-online", "figa"), ("sft-online", "sft"),
               ("grpo-token", "grpo-seq"), ("grpo-token", "ppo-token"), ("grpo-token", "grpo-dpo"),
               ("grpo-seq", "ppo-seq"), ("grpo-token", "sft"), ("grpo-seq", "sft"),
               ("grpo-dpo", "sft"))


def paired_comparison(out: Path, seeds: Sequence[int], a: str, b: str, *,
                      n_resamples: int = 2000) -> dict[str, Any] | None:
    """Win rate of ``a`` minus win rate of ``b``, paired: both were evaluated against the
    same reference samples (same prompts and sampling seeds), so per prompt the outcome
    difference is what the intervals resample.

    Returns the mean difference; two 95% bootstrap intervals: ``ci_low``/``ci_high`` over
    prompts (the per-prompt difference averaged over seeds and samples: these trained
    models on other prompts) and ``seeds_ci_low``/``seeds_ci_high`` over seeds and prompts
    (another training run too; the one to read for a claim about the method); the per-seed
    differences, and in how many seeds ``a`` was ahead. None if samples are missing.
    """
    by_seed: list[dict[str, list[float]]] = []
    for seed in seeds:
        run_out = out / f"seed{seed}" if len(seeds) > 1 else out
        files = [run_out / m / "eval_samples.jsonl" for m in (a, b)]
        if not all(f.is_file() for f in files):
            return None
        rows_a, rows_b = (read_jsonl(f) for f in files)
        per_prompt: dict[str, list[float]] = {}
        for ra, rb in zip(rows_a, rows_b, strict=True):
            per_prompt.setdefault(str(ra["id"]), []).append(ra["outcome"] - rb["outcome"])
        by_seed.append(per_prompt)
    prompts = list(by_seed[0])
    if any(list(p) != prompts for p in by_seed):
        raise ValueError(f"{out}: the seeds of {a} and {b} were evaluated on different prompts")
    # The per-seed difference weighs every sample alike, as the win rate does.
    per_seed = [sum(sum(v) for v in p.values()) / sum(len(v) for v in p.values())
                for p in by_seed]
    table = [[sum(p[q]) / len(p[q]) for q in prompts] for p in by_seed]  # seeds × prompts
    pooled = [sum(sum(p[q]) for p in by_seed) / sum(len(p[q]) for p in by_seed)
              for q in prompts]
    low, high = bootstrap_interval(pooled, n_resamples=n_resamples, seed=0)
    seeds_low, seeds_high = seeds_and_prompts_interval(table, n_resamples=n_resamples, seed=0)
    return {"a": a, "b": b, "difference": sum(per_seed) / len(per_seed), "ci_low": low,
            "ci_high": high, "seeds_ci_low": seeds_low, "seeds_ci_high": seeds_high,
            "per_seed": per_seed, "seeds_ahead": sum(d > 0 for d in per_seed),
            "seeds": len(per_seed)}


def comparisons(out: Path, config: Any) -> list[dict[str, Any]]:
    pairs = [(a, b) for a, b in COMPARISONS if a in config.methods and b in config.methods]
    found = (paired_comparison(out, config.seeds, a, b) for a, b in pairs)
    return [c for c in found if c is not None]


def comparisons_table(found: Sequence[dict[str, Any]]) -> str:
    lines = ["Paired differences (win rate of A minus win rate of B against the same "
             "reference samples; 95% bootstrap intervals over prompts, and over seeds and "
             "prompts, which also carries the spread between training runs):", "",
             "| A − B | difference | CI, prompts | CI, seeds and prompts "
             "| seeds where A is ahead | per seed |",
             "|---|---|---|---|---|---|"]
    for c in found:
        # results written before the second interval existed have only the first
        seeds_ci = (f"[{c['seeds_ci_low']:+.3f}, {c['seeds_ci_high']:+.3f}]"
                    if "seeds_ci_low" in c else "n/a")
        lines.append(f"| {c['a']} − {c['b']} | {c['difference']:+.3f} | "
                     f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] | {seeds_ci} | "
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
            acc = ev.get("pairwise_accuracy_last" if r["method"] in ("ppo-seq", "grpo-seq")
                         else "pairwise_accuracy_sum", float("nan"))
            lines.append(f"| {r['method']} | {r.get('seed', 0)} | {acc:.3f} | "
                         f"{ev.get('token_auroc', float('nan')):.3f} |")
    return "\n".join(lines)
