"""How much win rate each kind of error is worth: oracle policies on a finished benchmark run.

A method's win rate comes from the errors it stops making. This script asks what the win
rate against the initial policy would be for a policy that samples like the initial policy
but whose every response has one kind of error fixed by the programmatic reviser:

- ``initial``: nothing fixed (an independent draw; ≈ 0.5, the noise floor);
- ``phrases``: hedges, fillers and repeats deleted;
- ``values``: wrong values and wrong names replaced by the right ones;
- ``all``: the full minimal edit.

Pairs are independent draws: the "policy" responses are the initial policy's evaluation
samples of seed s+1 (the reference side of that seed's evaluation), fixed, against the
reference samples of seed s, on the same prompts. Compare with the methods' win rates and
the error counts in the run's ``results.md``.

    python benchmarks/bench_headroom.py --run bench-full     # after benchmarks/bench_full.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from editalign.bench import GoldJudge
from editalign.bench.reviser import revise
from editalign.bench.task import judge_summary, read_jsonl
from editalign.eval.winrate import bootstrap_interval

ORACLES = {"initial": (), "phrases": ("hedge", "filler", "repeat"),
           "values": ("wrong_value", "wrong_name"), "all": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="bench-full",
                        help="a finished `bench run` directory with several seeds (default: "
                        "bench_full.py's)")
    parser.add_argument("--method", default="sft",
                        help="any method of the run: only its reference samples are read")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "bench_headroom.json"))
    args = parser.parse_args()
    run = Path(args.run)
    results = json.loads((run / "results.json").read_text())
    seeds = results["config"]["seeds"]
    if len(seeds) < 2:
        sys.exit("needs a run with at least two seeds (independent draws)")
    bench = Path(results.get("bench", run / "bench"))
    rows = {r["id"]: r["bench"] for r in read_jsonl(bench / "prompts.test.jsonl")}
    samples = {s: read_jsonl(run / f"seed{s}" / args.method / "eval_samples.jsonl")
               for s in seeds}
    judge = GoldJudge()
    result = {}
    for name, kinds in ORACLES.items():
        per_prompt: dict[str, list[float]] = {}
        fixed_texts, infos = [], []
        for s, s_next in zip(seeds, seeds[1:] + seeds[:1], strict=True):
            for ref, other in zip(samples[s], samples[s_next], strict=True):
                info = rows[ref["id"]]
                fixed = revise(other["reference"], info, kinds=kinds).text
                a, b = judge.score(fixed, info), judge.score(ref["reference"], info)
                per_prompt.setdefault(ref["id"], []).append(1.0 if a > b else
                                                             0.5 if a == b else 0.0)
                fixed_texts.append(fixed)
                infos.append(info)
        outcomes = [o for v in per_prompt.values() for o in v]
        low, high = bootstrap_interval([sum(v) / len(v) for v in per_prompt.values()])
        errors = judge_summary(fixed_texts, infos)
        result[name] = {"win_rate": sum(outcomes) / len(outcomes), "ci_low": low,
                        "ci_high": high, "n": len(outcomes), "score": errors["score"],
                        "wrong_per_response": errors["wrong_per_response"],
                        "unwanted_per_response": errors["unwanted_per_response"]}
    lines = ["| oracle (initial policy, then fixed) | win rate vs initial | 95% CI | gold score "
             "| wrong values / resp | unwanted / resp |", "|---|---|---|---|---|---|"]
    for name, r in result.items():
        lines.append(f"| {name} | {r['win_rate']:.3f} | [{r['ci_low']:.3f}, "
                     f"{r['ci_high']:.3f}] | {r['score']:.3f} | "
                     f"{r['wrong_per_response']:.2f} | {r['unwanted_per_response']:.2f} |")
    print("\n".join(lines))
    Path(args.out).write_text(json.dumps({
        "what": __doc__.splitlines()[0], "run": str(run), "seeds": seeds, "oracles": result,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "command": f"python benchmarks/bench_headroom.py --run {run}"}, indent=2) + "\n")
    Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
