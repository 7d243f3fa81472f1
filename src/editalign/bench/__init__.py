"""The generated benchmark task: a seeded world, a noisy initial policy, a minimal-edit
reviser and a gold judge (see docs/benchmark.md).

Importing this package registers the ``tiny-bench`` model (``--model tiny-bench``).
"""

from editalign.bench import tokenizer as _tokenizer  # noqa: F401  (registers tiny-bench)
from editalign.bench.judge import GoldJudge, Verdict
from editalign.bench.reviser import Revision, revise
from editalign.bench.task import BenchTask, PolicySFTConfig, make_edit_pairs, train_initial_policy
from editalign.bench.world import BenchConfig, Entity, World

__all__ = ["BenchConfig", "BenchTask", "Entity", "GoldJudge", "PolicySFTConfig", "Revision",
           "Verdict", "World", "make_edit_pairs", "revise", "train_initial_policy"]
