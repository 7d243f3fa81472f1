"""Shared helpers for the benchmark scripts: machine facts and result files."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

if not sys.stderr.isatty() and Path(sys.argv[0]).resolve().parent == RESULTS.parent:
    # As `editalign` does: a benchmark script writing into a log file prints no "Loading
    # weights" bars. Only when a script of this folder runs: a test importing one must not
    # change the bars of the whole test process.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # A script that imported them before this module: they read the variable at import.
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in ("torch", "transformers", "tokenizers", "rapidfuzz", "trl", "datasets"):
        with contextlib.suppress(ImportError):  # a missing package is just not reported
            versions[name] = __import__(name).__version__
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "cpus_used": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": versions,
    }


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        **result,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return path
