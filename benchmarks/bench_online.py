"""The online arms against their one-round versions: `bench run --quick` (one seed) with
figa, sft, figa-online and sft-online, plus the win rate of every online round's policy.

Writes ``benchmarks/results/bench_online_quick.json`` (the run's results and paired
differences, per-round win rates, pairs and steps of the online arms, machine, command) and
``.md``. Resumable: the runner's done-markers, and each round's ``winrate.json``.
One seed on one task: preliminary. The 10-seed run on both tasks is

    editalign bench run --full --methods figa,sft,figa-online,sft-online --out bench-online

    python benchmarks/bench_online.py --out /tmp/bench-online
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
METHODS = "figa,sft,figa-online,sft-online"


def _editalign(*argv: str) -> None:
    subprocess.run([sys.executable, "-m", "editalign.cli", *argv], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-online")
    args = parser.parse_args()
    out = Path(args.out)
    started = time.perf_counter()
    _editalign("bench", "run", "--quick", "--methods", METHODS, "--out", str(out))
    results = json.loads((out / "results.json").read_text())
    bench = Path(results["bench"])
    per_round = {}
    for method in ("figa-online", "sft-online"):
        rounds = []
        for round_dir in sorted((out / method).glob("round*")):
            result = round_dir / "winrate.json"
            if not result.is_file():  # the same evaluation as the runner's
                _editalign("eval", "winrate", "--policy", str(round_dir / "policy"),
                           "--reference", str(bench / "policy"), "--prompts",
                           str(bench / "prompts.test.jsonl"), "--judge", "gold",
                           "--samples-per-prompt", "4", "--max-new-tokens", "64",
                           "--batch-size", "72", "--seed", "0", "--out", str(result))
            saved = json.loads(result.read_text())
            rounds.append({**json.loads((round_dir / "done.json").read_text()),
                           "win_rate": saved["win_rate"], "ci_low": saved["ci_low"],
                           "ci_high": saved["ci_high"], "kl": saved["kl"]})
        per_round[method] = rounds
    import torch

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_online_quick.json").write_text(json.dumps({
        "what": "online arms (3 rounds, same optimizer steps and revised samples) vs their "
                "one-round arms on tiny-bench, --quick (one seed): preliminary",
        "command": f"editalign bench run --quick --methods {METHODS} --out {args.out}",
        "reproduce": f"python benchmarks/bench_online.py --out {args.out}",
        "seconds_this_invocation": time.perf_counter() - started,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version(),
                    "load_average_at_write": os.getloadavg()},
        "online_rounds": per_round,
        **results}, indent=2) + "\n")
    lines = [(out / "results.md").read_text().strip(), "",
             "| online arm | round | pairs | steps | win rate vs initial | 95% CI | KL |",
             "|---|---|---|---|---|---|---|"]
    for method, rounds in per_round.items():
        for r in rounds:
            lines.append(f"| {method} | {r['round']} | {r['pairs']} | {r['steps']} | "
                         f"{r['win_rate']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | "
                         f"{r['kl']:.2f} |")
    (RESULTS / "bench_online_quick.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
