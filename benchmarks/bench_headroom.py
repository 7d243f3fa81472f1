"""How much win rate each kind of error is worth: oracle policies on a finished benchmark run.

A method's win rate comes from the errors it stops making. This script asks what the win
rate against the initial policy would be for a policy that samples like the initial policy
but whose every response has one kind of error fixed by the programmatic reviser:

- ``initial``: nothing fixed (an independent draw; ≈ 0.5, the noise floor);
- ``phrases``: hedges, fillers and repeats deleted;
- ``values``: wrong values and wrong names replaced by the right ones;
- ``all``: the full minimal edit.

On the grounded task (``bench run --task grounded``) the value errors are split by where
the wrong value came from: ``distractor`` (the distractor card), ``invented`` (no card),
``swapped`` (the card's other town); ``values`` fixes all three and wrong names.

Pairs are independent draws: the "policy" responses are the initial policy's evaluation
samples of seed s+1 (the reference side of that seed's evaluation), fixed, against the
reference samples of seed s, on the same prompts. A one-seed run (``--quick``) pairs each
prompt's sample i with its sample i+1 (mod k) instead: also independent draws of the same
prompt. Compare with the methods' win rates and the error counts in the run's
``results.md``.

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
from editalign.bench.task import judge_summary
from editalign.data.jsonl import read_jsonl
from editalign.eval.winrate import bootstrap_interval

ORACLES = {"initial": (), "phrases": ("hedge", "filler", "repeat"),
           "values": ("wrong_value", "wrong_name", "distractor_value", "invented_value",
                      "swapped_value"), "all": None}
GROUNDED_ORACLES = {"distractor": ("distractor_value",), "invented": ("invented_value",),
                    "swapped": ("swapped_value",)}


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
    bench = Path(results.get("bench", run / "bench"))
    rows = {r["id"]: r["bench"] for r in read_jsonl(bench / "prompts.test.jsonl")}
    if len(seeds) > 1:
        samples = {s: read_jsonl(run / f"seed{s}" / args.method / "eval_samples.jsonl")
                   for s in seeds}
        draws = [list(zip(samples[s], samples[s_next], strict=True))
                 for s, s_next in zip(seeds, seeds[1:] + seeds[:1], strict=True)]
    else:
        one = read_jsonl(run / args.method / "eval_samples.jsonl")
        by_prompt: dict[str, list[dict]] = {}
        for record in one:
            by_prompt.setdefault(str(record["id"]), []).append(record)
        if min(len(v) for v in by_prompt.values()) < 2:
            sys.exit("a one-seed run needs at least two samples per prompt (independent draws)")
        draws = [[(v[i], v[(i + 1) % len(v)]) for v in by_prompt.values()
                  for i in range(len(v))]]
    grounded = any(info.get("task") == "grounded" for info in rows.values())
    oracles = {**ORACLES, **(GROUNDED_ORACLES if grounded else {})}
    judge = GoldJudge()
    result = {}
    for name, kinds in oracles.items():
        per_prompt: dict[str, list[float]] = {}
        fixed_texts, infos = [], []
        for pairs in draws:
            for ref, other in pairs:
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
        "pairing": "seeds" if len(seeds) > 1 else "samples",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "command": f"python benchmarks/bench_headroom.py --run {run} --out {args.out}"},
        indent=2) + "\n")
    Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
