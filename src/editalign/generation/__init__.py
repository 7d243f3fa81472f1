"""Sampling responses from a causal LM: the one generation path.

``SamplingConfig`` and ``sample_responses`` (the win rate, ``editalign sample``, the
benchmark's data and online stages), ``encode_prompt`` (a prompt's token ids, rendered as
``editalign label`` renders it) and ``generate_new_tokens`` (left-padded prompts through
``generate()``; PPO's rollout calls it with its own settings). A layer of its own between
:mod:`editalign.batching` and :mod:`editalign.eval`: sampling is not evaluation, and the
trainers sample too.
"""

from editalign.generation.sampling import (
    Sample,
    SamplingConfig,
    encode_prompt,
    generate_new_tokens,
    sample_responses,
)

__all__ = ["Sample", "SamplingConfig", "encode_prompt", "generate_new_tokens",
           "sample_responses"]
