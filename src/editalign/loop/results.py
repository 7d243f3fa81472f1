"""The loop's results: the per-round table, paired differences between rounds, the plot
and the report."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from editalign.data.jsonl import read_jsonl
from editalign.eval.winrate import bootstrap_interval
from editalign.loop.config import STAGES


def read_rows(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.is_file() else []


def paired_difference(a: Path, b: Path) -> dict[str, float] | None:
    """Win rate in ``a`` minus in ``b`` (two rounds' eval_samples.jsonl, judged against the
    same reference samples), with a 95% bootstrap interval over prompts."""
    rows_a, rows_b = read_rows(a), read_rows(b)
    if not rows_a or len(rows_a) != len(rows_b):
        return None
    per_prompt: dict[str, list[float]] = {}
    for ra, rb in zip(rows_a, rows_b, strict=True):
        per_prompt.setdefault(str(ra["id"]), []).append(ra["outcome"] - rb["outcome"])
    means = [sum(v) / len(v) for v in per_prompt.values()]
    low, high = bootstrap_interval(means, seed=0)
    return {"difference": sum(means) / len(means), "ci_low": low, "ci_high": high}


def write_results(out: Path, cfg: Mapping[str, Any], rounds: Sequence[dict[str, Any]]
                  ) -> dict[str, Any]:
    """``results.json``, ``results.md``, ``winrate.png`` and ``report.md``."""
    table = []
    for r in rounds:
        result = json.loads((out / f"round{r['round']}" / "winrate.json").read_text())
        row = {"round": r["round"], "win_rate": result["win_rate"], "ci_low": result["ci_low"],
               "ci_high": result["ci_high"], "kl": result["kl"], "n": result["n"],
               "length_policy": result["length_policy"], "judge": result["judge"],
               "samples": r["sample"]["rows"], "pairs_kept": r["revise"]["kept"],
               "pairs_with_edit": r["revise"]["with_edit"],
               "train_loss": r["train"].get("train_loss"),
               "seconds": sum(r[s]["seconds"] for s in STAGES)}
        if "sample_gold_score" in r["revise"]:
            row["sample_gold_score"] = r["revise"]["sample_gold_score"]
        if r["round"] > 1:
            row["vs_previous_round"] = paired_difference(
                out / f"round{r['round']}" / "eval_samples.jsonl",
                out / f"round{r['round'] - 1}" / "eval_samples.jsonl")
        table.append(row)
    best = best_round(table)
    data = {"config": dict(cfg), "rounds": table, "stages": list(rounds),
            "best_round": best, "best_policy": str(out / f"round{best}" / "policy")
            if best is not None else None}
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    markdown = results_markdown(table)
    (out / "results.md").write_text(markdown + "\n")
    plot_win_rates(table, out / "winrate.png")
    (out / "report.md").write_text(report_markdown(cfg, table, markdown))
    return data


def best_round(table: Sequence[dict[str, Any]]) -> int | None:
    """The round whose policy won most against the initial one (the earliest on a tie)."""
    if not table:
        return None
    return int(max(table, key=lambda r: (r["win_rate"], -r["round"]))["round"])


def lost_to_previous(row: Mapping[str, Any]) -> bool:
    """The round is worse than the one before it with a 95% interval that excludes 0."""
    prev = row.get("vs_previous_round")
    return bool(prev) and prev["ci_high"] < 0


def results_markdown(table: Sequence[dict[str, Any]]) -> str:
    gold = any("sample_gold_score" in r for r in table)
    head = ("| round | win rate vs initial | 95% CI | vs previous round (95% CI) | KL | length "
            "| samples | pairs kept / with edit |" + (" gold score of its samples |" if gold
                                                      else "") + " train loss | seconds |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in table:
        prev = r.get("vs_previous_round")
        prev_text = "" if not prev else (f"{prev['difference']:+.3f} [{prev['ci_low']:+.3f}, "
                                         f"{prev['ci_high']:+.3f}]")
        kl = "n/a" if r["kl"] is None else f"{r['kl']:.2f}"
        loss = "n/a" if r["train_loss"] is None else f"{r['train_loss']:.4f}"
        lines.append(
            f"| {r['round']} | {r['win_rate']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | "
            f"{prev_text} | {kl} | {r['length_policy']:.1f} | {r['samples']} | "
            f"{r['pairs_kept']} / {r['pairs_with_edit']} |"
            + (f" {r.get('sample_gold_score', float('nan')):.3f} |" if gold else "")
            + f" {loss} | {r['seconds']:.0f} |")
    best = best_round(table)
    if best is not None:
        lines += ["", f"Best round: {best} (the highest win rate against the initial policy); "
                      f"its policy is round{best}/policy."]
    return "\n".join(lines)


def plot_win_rates(table: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in table]
    rates = [r["win_rate"] for r in table]
    errors = [[r["win_rate"] - r["ci_low"] for r in table],
              [r["ci_high"] - r["win_rate"] for r in table]]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.errorbar(rounds, rates, yerr=errors, marker="o", capsize=4)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="initial policy (tie)")
    ax.set_xlabel("round")
    ax.set_ylabel("win rate vs initial policy")
    ax.set_xticks(rounds)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report_markdown(cfg: Mapping[str, Any], table: Sequence[dict[str, Any]],
                    markdown: str) -> str:
    revise = cfg["revise"]
    reviser = ("the generated task's programmatic reviser" if revise["reviser"] == "bench"
               else f"{revise['model']} at {revise['api_base']}")
    lines = [
        "# editalign loop report", "",
        f"Initial policy `{cfg['policy']}`, prompts `{cfg['prompts']}`; each round: sample "
        f"the current policy, revise with {reviser}, label, train "
        f"`{cfg['train']['method']}`, then judge against the initial policy "
        f"(`{cfg['eval']['judge']}` judge, prompts `{cfg['eval']['prompts']}`).", "",
        f"Rounds finished: {len(table)} of {cfg['rounds']}.", "",
        "![win rate per round](winrate.png)", "",
        markdown, "",
        "Win rates come with a 95% bootstrap interval over prompts; \"vs previous round\" is "
        "the paired difference (the same reference samples every round). KL is the policy's "
        "KL to the initial policy on its own samples.", "",
        "Per round: `roundK/sample.jsonl` (samples), `roundK/revised.jsonl` and "
        "`revised.dropped.jsonl` (edits and what was dropped, why), `roundK/labels/preview.html`"
        " (token labels), `roundK/policy/` (the trained policy), `roundK/eval_samples.jsonl`, "
        "and one log per stage.", ""]
    return "\n".join(lines)
