"""Keep a finished `editalign bench run` under benchmarks/results/, with how it was made.

For runs started directly with `editalign bench run ...` (not through a timing script):
writes ``benchmarks/results/TAG.json`` (the run's results.json, the init summary, the
command, the machine, and the wall time read from the run directory's file times: from the
task's ``config.json`` to ``results.json``) and ``TAG.md`` (the tables of results.md).

    python benchmarks/collect_run.py --run /work/runs/online-full --tag bench_online_full \
        --command "editalign bench run --full --methods figa,sft,figa-online,sft-online" \
        --note "2 cores shared with two other jobs (load ~4-5)"
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from _common import RESULTS, machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the run's --out directory")
    parser.add_argument("--tag", required=True, help="file name under benchmarks/results/")
    parser.add_argument("--command", required=True, help="the command that made the run")
    parser.add_argument("--note", default="", help="conditions worth knowing (machine load)")
    parser.add_argument("--wall-seconds", type=float, help="the wall time, when the file times "
                        "do not tell it (a run that reused another run's finished stages)")
    args = parser.parse_args()
    run = Path(args.run)
    results = json.loads((run / "results.json").read_text())
    bench = Path(results["bench"])
    wall = args.wall_seconds if args.wall_seconds is not None else \
        (run / "results.json").stat().st_mtime - (bench / "config.json").stat().st_mtime
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.tag}.json").write_text(json.dumps({
        "command": args.command, "note": args.note,
        "wall_seconds": round(wall, 1),
        "wall_from": "--wall-seconds" if args.wall_seconds is not None else "file times",
        "machine": machine(),
        "init": json.loads((bench / "summary.json").read_text()),
        **results}, indent=2, allow_nan=False) + "\n")
    (RESULTS / f"{args.tag}.md").write_text(
        f"`{args.command}`: {wall / 60:.1f} min wall on "
        f"{os.cpu_count()} CPU cores{'; ' + args.note if args.note else ''}\n\n"
        + (run / "results.md").read_text())
    print(f"wrote {RESULTS / (args.tag + '.json')} ({wall / 60:.1f} min)")


if __name__ == "__main__":
    main()
