"""Losses and estimators as pure tensor functions, independent of any trainer.

Every function here is tested against hand-computed values (tests/test_losses*.py) and,
where a reference implementation exists (TRL), against it.
"""

from __future__ import annotations

# ----------------------------------------------------------------------------- FIGA (METHODS §2)


# ----------------------------------------------------------------------------- reward models (METHODS §3)


# ----------------------------------------------------------------------------- PPO (METHODS §4)
