"""Validators for option values, on the ground floor so any layer can check a choice.

They lived in ``losses.py``, which made ``batching/layout.py`` and ``data/labeling.py`` import
(or copy) the loss module just to validate a string.
"""

from __future__ import annotations

from collections.abc import Sequence


def check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the allowed values when ``value`` is not one of them."""
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")
