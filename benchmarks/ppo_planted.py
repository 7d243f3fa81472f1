"""Dense vs sparse PPO on the planted objective of tests/test_ppo.py, over several seeds.

Reward +1 for every lowercase letter the `tiny` policy writes; the sparse arm gets the same
rewards summed onto the last response token. Reports, per seed, the mean lowercase share
over the iterations (area under the learning curve), the iterations needed to reach a
share of 0.30, and the final share.

    python benchmarks/ppo_planted.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import write_result
from editalign.models import load_tokenizer
from test_ppo import _learning_curve, planted_dense, planted_sparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=0.30)
    args = parser.parse_args()
    tok = load_tokenizer("tiny")
    rows = []
    for seed in range(args.seeds):
        row = {"seed": seed}
        for name, reward in (("dense", planted_dense), ("sparse", planted_sparse)):
            curve = _learning_curve(Path(tempfile.mkdtemp()), tok, reward, seed)
            row[name] = {
                "curve": curve, "mean": statistics.mean(curve), "final": curve[-1],
                "iterations_to_threshold": next(
                    (i + 1 for i, x in enumerate(curve) if x >= args.threshold), None),
            }
        rows.append(row)
        print(f"seed {seed}: mean share dense {row['dense']['mean']:.3f} sparse "
              f"{row['sparse']['mean']:.3f}; final {row['dense']['final']:.2f} / "
              f"{row['sparse']['final']:.2f}")
    write_result("ppo_planted", {"threshold": args.threshold, "seeds": rows,
                                 "mean_dense": statistics.mean(r["dense"]["mean"] for r in rows),
                                 "mean_sparse": statistics.mean(r["sparse"]["mean"] for r in rows)})


if __name__ == "__main__":
    main()
