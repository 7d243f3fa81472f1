"""Is a refactor behaviour-preserving? Compare two `editalign bench run` directories.

Every entry of ``results.json`` is compared with timings, paths and the machine left out,
and every ``*.safetensors`` file under each run by sha256. Prints one line per arm and
writes a JSON verdict (``--out``); exits 1 when anything differs.

    python benchmarks/bench_identity.py BEFORE_DIR AFTER_DIR --out results/x.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

# Keys that differ between two runs of the same code: wall clock, where it ran, where it wrote.
VOLATILE = {"policy", "reference", "bench", "path", "out", "machine", "started", "finished",
            "host", "python"}


def _is_volatile(key: str) -> bool:
    return key in VOLATILE or key.endswith(("seconds", "_s", "_dir", "_path"))


def strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if not _is_volatile(k)}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def weights(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*.safetensors"))}


def compare(before: Path, after: Path) -> dict[str, Any]:
    a = json.loads((before / "results.json").read_text())
    b = json.loads((after / "results.json").read_text())
    rows_a = {(r["method"], r["seed"]): r for r in a["results"]}
    rows_b = {(r["method"], r["seed"]): r for r in b["results"]}
    wa, wb = weights(before), weights(after)
    arms = {}
    for key in sorted(set(rows_a) | set(rows_b)):
        method = key[0]
        ra, rb = rows_a.get(key), rows_b.get(key)
        files = sorted(f for f in set(wa) | set(wb) if f.split("/")[0] == method)
        arms[f"{method}/seed{key[1]}"] = {
            "results_identical": ra is not None and rb is not None and strip(ra) == strip(rb),
            "weights_identical": bool(files) and all(wa.get(f) == wb.get(f) for f in files),
            "weight_files": len(files),
            "win_rate": (ra or {}).get("win_rate"), "win_rate_after": (rb or {}).get("win_rate"),
        }
    shared = {k: strip(a.get(k)) == strip(b.get(k)) for k in ("summary", "comparisons", "pairs")}
    return {"before": str(before), "after": str(after), "arms": arms, "tables": shared,
            "identical": all(v["results_identical"] and v["weights_identical"]
                             for v in arms.values()) and all(shared.values())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    verdict = compare(args.before, args.after)
    for arm, v in verdict["arms"].items():
        print(f"{arm:24s} results {'same' if v['results_identical'] else 'DIFFER'}  "
              f"weights {'same' if v['weights_identical'] else 'DIFFER'} "
              f"({v['weight_files']} files)  win rate {v['win_rate']} -> {v['win_rate_after']}")
    print("tables:", verdict["tables"], "->", "IDENTICAL" if verdict["identical"] else "DIFFERENT")
    if args.out:
        args.out.write_text(json.dumps(verdict, indent=2) + "\n")
    return 0 if verdict["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
