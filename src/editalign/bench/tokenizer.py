"""A small BPE tokenizer trained on the task's text, and the ``tiny-bench`` model.

The byte-level ``tiny`` tokenizer spends one token per character; the task's text is a
few hundred distinct words, so a byte-level BPE with 1,024 entries turns most names,
values and template words into one token and makes responses ~4x shorter. It keeps the
``tiny`` tokenizer's special tokens and ChatML template, and any text still round-trips
(unknown words fall back to bytes).

``--model tiny-bench`` (or ``tiny-bench:SEED``) is the ``tiny`` Llama with this tokenizer,
randomly initialised and bitwise reproducible from SEED. :mod:`editalign.models` declares
it and imports this module only when the model is first built.
"""

from __future__ import annotations

import random

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from editalign.bench.world import (
    ABOUT_PROMPTS,
    FILLERS,
    HEDGES,
    QUESTION_PROMPTS,
    BenchConfig,
    build_prompts,
    build_world,
    render_response,
)
from editalign.models import (
    TINY_SPECIAL_TOKENS,
    build_tiny_model,
    seed_variant,
    wrap_chatml_tokenizer,
)

BENCH_VOCAB_SIZE = 1024


def training_corpus() -> list[str]:
    """Deterministic text covering every name, value and phrasing the task can produce."""
    config = BenchConfig(seed=0, num_people=200, num_animals=32, values_per_attribute=16,
                         about_prompts_per_entity=len(ABOUT_PROMPTS), questions_per_attribute=2,
                         wrong_value_rate=0.3, hedge_rate=0.3, filler_rate=0.5)
    world = build_world(config)
    rng = random.Random(0)
    lines = [*FILLERS, *(h.lstrip(", ") for h in HEDGES)]
    lines += [t for ts in QUESTION_PROMPTS.values() for t in ts]
    for prompt in build_prompts(world, config):
        entity = world.by_id[prompt.entity]
        chat = (f"{TINY_SPECIAL_TOKENS['im_start']}user\n{prompt.text}"
                f"{TINY_SPECIAL_TOKENS['eos_token']}\n{TINY_SPECIAL_TOKENS['im_start']}assistant\n")
        lines.append(chat + render_response(entity, prompt.asked, rng, config).text)
    return lines


def build_bench_tokenizer(vocab_size: int = BENCH_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = list(TINY_SPECIAL_TOKENS.values())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(training_corpus(), trainer=trainer)
    return wrap_chatml_tokenizer(backend, model_max_length=1024)


def build_bench_model(seed: int = 0, *, hidden_size: int = 128, num_layers: int = 2
                      ) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """The ``tiny`` architecture (wider: 128) on the bench tokenizer; reproducible from ``seed``."""
    return build_tiny_model(seed, tokenizer=build_bench_tokenizer(), hidden_size=hidden_size,
                            num_layers=num_layers)


def build_tiny_bench(variant: str | None) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """The ``--model tiny-bench[:SEED]`` builder, declared in :mod:`editalign.models`."""
    return build_bench_model(seed_variant("tiny-bench", variant))
