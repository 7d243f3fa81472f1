"""The generated benchmark task: a seeded world, a noisy initial policy, a minimal-edit
reviser and a gold judge (see docs/benchmark.md).

The task's model, ``--model tiny-bench``, is declared by :mod:`editalign.bench.models` under
the ``editalign.models`` entry points (built by
:func:`editalign.bench.tokenizer.build_tiny_bench` on first use).
"""

from editalign.bench.judge import GoldJudge, GoldWinJudge, Verdict
from editalign.bench.reviser import Revision, revise
from editalign.bench.task import BenchTask, PolicySFTConfig, make_edit_pairs, train_initial_policy
from editalign.bench.world import BenchConfig, Entity, World

__all__ = ["BenchConfig", "BenchTask", "Entity", "GoldJudge", "GoldWinJudge", "PolicySFTConfig",
           "Revision",
           "Verdict", "World", "make_edit_pairs", "revise", "train_initial_policy"]
