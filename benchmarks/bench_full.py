"""The reported benchmark: `editalign bench run --full`, timed, with its results kept here.

Runs the whole pipeline as a user would (one process, torch's default threads): the task
and initial policy (task seed 0), six methods at their tuned settings for 10 seeds, the
evaluation, the report. Writes ``benchmarks/results/bench_full.json`` (every run, the
per-method summary, the paired comparisons, the wall time, the machine and the command) and
``bench_full.md`` (the tables of ``results.md``). Resumable: rerunning continues an
interrupted run in the same ``--out`` (the wall time then covers only the rest).

    python benchmarks/bench_full.py                     # into bench-full/ (~15 min, 2 cores)
    python benchmarks/bench_full.py --out /tmp/bench-full
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-full")
    args, extra = parser.parse_known_args()  # anything else goes to `bench run`
    command = [sys.executable, "-m", "editalign.cli", "bench", "run", "--full", "--out",
               args.out, *extra]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    out = Path(args.out)
    results = json.loads((out / "results.json").read_text())
    import torch

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_full.json").write_text(json.dumps({
        "what": "editalign bench run --full: win rate of each method against the initial "
                "policy on the held-out prompts (gold judge), 10 seeds",
        "wall_seconds": seconds,
        "command": "editalign bench run --full --out " + args.out + "".join(
            " " + x for x in extra),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version()},
        "init": json.loads((Path(results["bench"]) / "summary.json").read_text()),
        **results}, indent=2) + "\n")
    (RESULTS / "bench_full.md").write_text(
        f"`{' '.join(command[2:])}` — {seconds / 60:.1f} min wall on {os.cpu_count()} CPU "
        f"cores ({platform.processor() or platform.machine()})\n\n"
        + (out / "results.md").read_text())
    print(f"{seconds / 60:.1f} min; wrote {RESULTS / 'bench_full.json'}")


if __name__ == "__main__":
    main()
