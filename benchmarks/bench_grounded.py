"""The grounded task: `editalign bench run --task grounded --methods all`, timed, results kept.

Runs the whole pipeline as a user would: the grounded task and its initial policy (task
seed 0, ``tiny-bench-grounded``), every method (the first task's six and ``ppo-dpo``) at the
settings tuned on the grounded tuning task (``editalign.bench.tuned.TUNED["grounded"]``),
the evaluation, the report. ``--quick`` (default) is one seed, ``--full`` ten. ``--jobs 2``
trains the seeds in two processes of one torch thread each (same ``--out``; each seed has
its own folder), then one last ``bench run`` of every seed, which finds every seed done,
writes the comparisons and the report. Writes
``benchmarks/results/bench_grounded_<preset>.json`` (every run, the summary, the paired
comparisons, the wall time of ``bench run`` and of the init, the machine and the command)
and ``.md`` (the tables). Resumable like ``bench run``: an init or stage finished earlier in
the same ``--out`` is skipped, and the wall time then covers only the rest (the init's own
time is kept from its ``summary.json``).

    python benchmarks/bench_grounded.py --out bench-grounded-quick
    python benchmarks/bench_grounded.py --full --jobs 2 --out bench-grounded-full
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


def run_seeds_in_parallel(command: list[str], jobs: int) -> None:
    """``command`` (a ``bench run --full``) split by seed over ``jobs`` processes.

    Each process trains its share of the ten seeds into OUT/seed<N>, the folders a single
    run uses (each share has at least two seeds, so the layout is the same). Without
    ``--bench`` the first process builds OUT/bench; the others start once it is done.
    """
    if "--seeds" in command or "--num-seeds" in command:
        raise SystemExit("--jobs splits the preset's ten seeds: give no --seeds/--num-seeds")
    shares = [list(range(10))[i::jobs] for i in range(jobs)]
    if min(len(share) for share in shares) < 2:
        raise SystemExit(f"--jobs {jobs}: each process needs at least two of the ten seeds")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    init_done = Path(command[command.index("--out") + 1]) / "bench" / "summary.json"
    children = []
    for share in shares:
        children.append(subprocess.Popen([*command, "--seeds", ",".join(map(str, share))],
                                         env=env))
        while "--bench" not in command and not init_done.is_file():
            if children[0].poll() is not None:  # the init failed: stop here
                raise SystemExit(f"bench run exited {children[0].returncode} before the init")
            time.sleep(5)
    codes = [child.wait() for child in children]
    if any(codes):
        raise SystemExit(f"a seed share failed (exit codes {codes}); rerun to resume")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-grounded-quick")
    parser.add_argument("--full", dest="preset", action="store_const", const="full",
                        default="quick", help="ten seeds instead of one")
    parser.add_argument("--jobs", type=int, default=1,
                        help="processes training seeds at once, one torch thread each "
                        "(--full only; the init runs first, alone)")
    args, extra = parser.parse_known_args()  # anything else goes to `bench run`
    command = [sys.executable, "-m", "editalign.cli", "bench", "run", "--task", "grounded",
               f"--{args.preset}", "--methods", "all", "--out", args.out, *extra]
    started = time.perf_counter()
    if args.jobs > 1 and args.preset == "full":
        run_seeds_in_parallel(command, args.jobs)
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    out = Path(args.out)
    results = json.loads((out / "results.json").read_text())
    init = json.loads((Path(results["bench"]) / "summary.json").read_text())
    import torch

    name = f"bench_grounded_{args.preset}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({
        "what": "editalign bench run --task grounded: win rate of each method against the "
                "initial policy on held-out prompts about unseen entities (gold judge); "
                "settings tuned on the grounded tuning task (task seed 1), editalign.bench.tuned.TUNED",
        "jobs": args.jobs,
        "wall_seconds_run": seconds, "wall_seconds_init": init["seconds"],
        "command": " ".join(["editalign", *command[3:]]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(),
                    "load_average": os.getloadavg(),
                    "python": platform.python_version()},
        "init": init, **results}, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(
        f"`{' '.join(['editalign', *command[3:]])}` — bench run {seconds / 60:.1f} min + init "
        f"{init['seconds'] / 60:.1f} min wall on {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()})\n\n" + (out / "results.md").read_text())
    print(f"{seconds / 60:.1f} min; wrote {RESULTS / (name + '.json')}")


if __name__ == "__main__":
    main()
