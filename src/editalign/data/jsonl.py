"""JSON Lines files that every stage reads and writes (edit pairs, samples, logs, results).

Writes are atomic: the rows go to a temporary file beside the target, which then replaces
it, so a crash leaves either the previous file or the complete new one, never half of it
(:func:`editalign.outputs.atomic_open`; a symlinked target keeps its link).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from editalign.outputs import atomic_open


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every non-blank line of ``path`` as a JSON value."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]], *,
                allow_nan: bool = True) -> Path:
    """Write ``rows`` one per line, atomically; ``allow_nan=False`` refuses NaN/inf (which
    would make the file invalid JSON) instead of writing them."""
    path = Path(path)
    with atomic_open(path) as f:  # a symlink keeps pointing at the new file
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, allow_nan=allow_nan) + "\n")
    return path


def nan_to_none(value: Any) -> Any:
    """``value`` with every NaN or infinite float (in nested dicts/lists) replaced by None:
    strict JSON has no NaN, and an undefined metric (AUROC without both classes, a spread
    over one seed) is written as null."""
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [nan_to_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
