"""`editalign loop` on its built-in defaults (the generated task), and with a third of the
steps per round: win rate per round against the initial policy, one seed.

Runs ``editalign loop --out OUT/steps100`` (the defaults: 3 rounds of FIGA, 100 steps each)
and the same loop with ``train.args.max_steps: 34`` (three rounds ≈ the benchmark's one-round
budget) on the same task and initial policy, then writes
``benchmarks/results/loop_default.json`` (per round: win rate, interval, KL, the gold score
of the round's training samples; wall and CPU time; machine; commands) and ``.md``.
Resumable (the loop's done-markers). ``--collect A B`` only reads two finished loop
directories (100 and 34 steps a round).

    python benchmarks/loop_default.py --out /tmp/loop-bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _run(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "editalign.cli", *argv], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="loop-bench")
    parser.add_argument("--collect", nargs=2, metavar=("STEPS100", "STEPS34"),
                        help="read two finished loop directories instead of running")
    args = parser.parse_args()
    walls: dict[str, float | None] = {"steps100": None, "steps34": None}
    if args.collect:
        dirs = dict(zip(("steps100", "steps34"), map(Path, args.collect), strict=True))
    else:
        base = Path(args.out)
        dirs = {"steps100": base / "steps100", "steps34": base / "steps34"}
        walls["steps100"] = _run(["loop", "--out", str(dirs["steps100"])])
        config = base / "steps34.yaml"
        config.write_text(json.dumps({"out": str(dirs["steps34"]),
                                      "bench": str(dirs["steps100"] / "bench"),
                                      "train": {"args": {"max_steps": 34}}}))
        walls["steps34"] = _run(["loop", "--config", str(config)])
    import torch

    runs = {}
    for name, directory in dirs.items():
        results = json.loads((directory / "results.json").read_text())
        runs[name] = {"dir": str(directory), "wall_seconds": walls[name],
                      "train_args": results["config"]["train"]["args"],
                      "rounds": results["rounds"]}
    RESULTS.mkdir(exist_ok=True)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    (RESULTS / "loop_default.json").write_text(json.dumps({
        "what": "editalign loop on the generated task (tiny-bench, programmatic reviser, gold "
                "judge), 3 rounds of FIGA; win rate per round against the initial policy on "
                "the held-out prompts; one seed: preliminary",
        "commands": ["editalign loop --out OUT/steps100",
                     "editalign loop --config steps34.yaml  (out: OUT/steps34, bench: "
                     "OUT/steps100/bench, train: {args: {max_steps: 34}})"],
        "reproduce": "python benchmarks/loop_default.py --out OUT",
        "cpu_seconds_children": None if args.collect else usage.ru_utime + usage.ru_stime,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version(),
                    "load_average_at_write": os.getloadavg()},
        "runs": runs}, indent=2) + "\n")
    lines = ["| steps a round | round | win rate vs initial | 95% CI | KL | gold score of the "
             "round's training samples |", "|---|---|---|---|---|---|"]
    for run in runs.values():
        for r in run["rounds"]:
            lines.append(f"| {run['train_args']['max_steps']} | {r['round']} | "
                         f"{r['win_rate']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | "
                         f"{r['kl']:.2f} | {r.get('sample_gold_score', float('nan')):.3f} |")
    (RESULTS / "loop_default.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
