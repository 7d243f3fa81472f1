"""A small BPE tokenizer trained on the task's text, and the ``tiny-bench`` model.

The byte-level ``tiny`` tokenizer spends one token per character; the task's text is a
few hundred distinct words, so a byte-level BPE with 1,024 entries turns most names,
values and template words into one token and makes responses ~4x shorter. It keeps the
``tiny`` tokenizer's special tokens and ChatML template, and any text still round-trips
(unknown words fall back to bytes).

``--model tiny-bench`` (or ``tiny-bench:SEED``) is the ``tiny`` Llama with this tokenizer,
randomly initialised and bitwise reproducible from SEED. :mod:`editalign.models` declares
it and imports this module only when the model is first built. ``tiny-bench-grounded`` is
the same model on a tokenizer trained on both tasks' text (the grounded task's cards and
birthplace phrasings; ``bench init --task grounded`` uses it).
"""

from __future__ import annotations

import random
from dataclasses import replace

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from editalign.bench.responses import render_response
from editalign.bench.world import (
    ABOUT_PROMPTS,
    FILLERS,
    HEDGES,
    QUESTION_PROMPTS,
    BenchConfig,
    build_prompts,
    build_world,
)
from editalign.models import (
    TINY_SPECIAL_TOKENS,
    build_tiny_model,
    seed_variant,
    wrap_chatml_tokenizer,
)

BENCH_VOCAB_SIZE = 1024
# The grounded corpus (card labels, birthplace phrasings) needs more merges before every
# name, value and age is one token; BPE stops at ~1,165 entries, below this cap.
GROUNDED_VOCAB_SIZE = 1280


def training_corpus(task: str = "facts") -> list[str]:
    """Deterministic text covering every name, value and phrasing the task can produce.

    ``task="grounded"`` adds the grounded task's prompts (cards in every format) and answers
    to the first task's corpus; the first task's corpus is unchanged, so is its tokenizer.
    """
    config = BenchConfig(seed=0, num_people=200, num_animals=32, values_per_attribute=16,
                         about_prompts_per_entity=len(ABOUT_PROMPTS), questions_per_attribute=2,
                         wrong_value_rate=0.3, hedge_rate=0.3, filler_rate=0.5)
    configs = [config]
    if task == "grounded":
        configs.append(replace(config, task="grounded", distractor_rate=0.5))
    lines = [*FILLERS, *(h.lstrip(", ") for h in HEDGES)]
    lines += [t for ts in QUESTION_PROMPTS.values() for t in ts]
    for config in configs:
        world = build_world(config)
        rng = random.Random(0)
        for prompt in build_prompts(world, config):
            entity, _ = prompt.shown(world)
            chat = (f"{TINY_SPECIAL_TOKENS['im_start']}user\n{prompt.text}"
                    f"{TINY_SPECIAL_TOKENS['eos_token']}\n{TINY_SPECIAL_TOKENS['im_start']}"
                    "assistant\n")
            lines.append(chat + render_response(entity, prompt.asked, rng, config).text)
    return lines


def build_bench_tokenizer(vocab_size: int | None = None, task: str = "facts"
                          ) -> PreTrainedTokenizerFast:
    """The bench tokenizer of ``task`` (``vocab_size`` defaults to the task's)."""
    if vocab_size is None:
        vocab_size = GROUNDED_VOCAB_SIZE if task == "grounded" else BENCH_VOCAB_SIZE
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = list(TINY_SPECIAL_TOKENS.values())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(training_corpus(task), trainer=trainer)
    return wrap_chatml_tokenizer(backend, model_max_length=1024)


def build_bench_model(seed: int = 0, *, hidden_size: int = 128, num_layers: int = 2,
                      task: str = "facts") -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """The ``tiny`` architecture (wider: 128) on the bench tokenizer; reproducible from ``seed``."""
    return build_tiny_model(seed, tokenizer=build_bench_tokenizer(task=task),
                            hidden_size=hidden_size, num_layers=num_layers)


def build_tiny_bench(variant: str | None) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """The ``--model tiny-bench[:SEED]`` builder, declared in :mod:`editalign.models`."""
    return build_bench_model(seed_variant("tiny-bench", variant))


def build_tiny_bench_grounded(variant: str | None
                              ) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """The ``--model tiny-bench-grounded[:SEED]`` builder, declared in :mod:`editalign.models`."""
    return build_bench_model(seed_variant("tiny-bench-grounded", variant), task="grounded")
