"""The benchmark's ``--model`` names, declared by the benchmark itself.

``tiny-bench`` / ``tiny-bench-grounded`` (``NAME:SEED`` seeds the initial weights): the
``tiny`` Llama with a BPE tokenizer trained on the task's text
(:mod:`editalign.bench.tokenizer`). The registry in :mod:`editalign.models` finds them
through the ``editalign.models`` entry points in pyproject.toml, so it names nothing of
this package and knows none of its files; the digest of the files the models are built
from is taken here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import editalign.models as models
from editalign.bench.tokenizer import build_tiny_bench, build_tiny_bench_grounded
from editalign.models import ModelSpec, build_tiny_model, seed_variant, wrap_chatml_tokenizer

# What the bench models are built from: the task's text (world.py and responses.py render
# it, tokenizer.py trains the BPE on it) and the tiny architecture.
SOURCE_FILES = tuple(Path(__file__).with_name(name)
                     for name in ("tokenizer.py", "world.py", "responses.py"))


def _cache_name(name: str) -> Callable[[str | None], str]:
    def cache_name(variant: str | None) -> str:
        # The folder carries the sources' digest, so an edit to them builds a new model
        # instead of loading a stale one; models.source_digest is looked up per call.
        digest = models.source_digest(SOURCE_FILES, [build_tiny_model, wrap_chatml_tokenizer])
        return f"{name}-seed{seed_variant(name, variant)}-{digest}"

    return cache_name


TINY_BENCH = ModelSpec(build_tiny_bench, _cache_name("tiny-bench"))
TINY_BENCH_GROUNDED = ModelSpec(build_tiny_bench_grounded, _cache_name("tiny-bench-grounded"))
