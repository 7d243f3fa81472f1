"""Sampling settings, prompt encoding and the batched ``generate()`` call.

torch loads inside the functions: ``editalign sample`` builds its options from
:class:`SamplingConfig` at start-up, and ``editalign --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from editalign.data.prompts import render_prompt

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class SamplingConfig:
    """Identical for both sides. ``temperature=0`` is greedy decoding."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    batch_size: int = 16
    chat_template: str = "auto"
    # Responses per prompt and side. Outcomes are averaged per prompt before the bootstrap,
    # which resamples prompts: the interval does not pretend k samples are k prompts.
    samples_per_prompt: int = 1

    def __post_init__(self) -> None:
        if self.samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt must be >= 1, got {self.samples_per_prompt}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def generate_kwargs(self) -> dict[str, Any]:
        """The sampling arguments of ``generate()`` these settings mean."""
        kwargs: dict[str, Any] = {"do_sample": self.temperature > 0}
        if self.temperature > 0:
            # top_k=0 switches top-k off explicitly; None would fall back to whatever the
            # model's generation config sets, which would truncate the sampled distribution.
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        return kwargs


@dataclass
class Sample:
    text: str
    prompt_ids: list[int]
    response_ids: list[int]  # up to and including the first EOS (if it came)


def encode_prompt(prompt: Any, tokenizer: Any, mode: str = "auto") -> list[int]:
    """A prompt's token ids, rendered as ``editalign label`` renders it (``mode``: auto,
    always or never the chat template)."""
    text, add_special = render_prompt(prompt, tokenizer, mode)  # type: ignore[arg-type]
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


def generate_new_tokens(model: Any, prompt_ids: Sequence[Sequence[int]], *, pad_token_id: int,
                        eos_token_id: int, max_new_tokens: int, device: Any,
                        **sampling: Any) -> Tensor:
    """The tokens ``model.generate`` appends to each prompt, (B, new) on ``device``.

    The prompts go left-padded (``generate()`` continues every row from its last column);
    ``sampling`` are ``generate()``'s sampling arguments, passed as given. No seeding here:
    the caller owns the random stream (the win rate reseeds per batch, PPO does not).
    """
    import torch

    from editalign.padding import pad_rows

    input_ids, mask = pad_rows(prompt_ids, pad_token_id, side="left")
    with torch.no_grad():
        generated = model.generate(
            input_ids=input_ids.to(device), attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens, pad_token_id=pad_token_id,
            eos_token_id=eos_token_id, **sampling)
    return generated[:, input_ids.shape[1]:]


def sample_responses(model: Any, tokenizer: Any, prompts: Sequence[Any],
                     sampling: SamplingConfig) -> list[Sample]:
    """One response per prompt; batch ``k`` is sampled after ``manual_seed(seed + k)``, so
    two models given the same prompts and settings draw from the same random stream."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
        else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    device = next(model.parameters()).device
    encoded = [encode_prompt(p, tokenizer, sampling.chat_template) for p in prompts]
    out: list[Sample] = []
    was_training = model.training
    model.eval()
    for k, i in enumerate(range(0, len(encoded), sampling.batch_size)):
        chunk = encoded[i:i + sampling.batch_size]
        torch.manual_seed(sampling.seed + k)
        new = generate_new_tokens(model, chunk, pad_token_id=pad, eos_token_id=eos,
                                  max_new_tokens=sampling.max_new_tokens, device=device,
                                  **sampling.generate_kwargs())
        for j, ids in enumerate(chunk):
            response = new[j].tolist()
            if eos in response:
                response = response[:response.index(eos) + 1]
            else:  # no EOS within max_new_tokens: drop trailing pad (if pad != eos)
                while response and response[-1] == pad:
                    response.pop()
            text = tokenizer.decode(response, skip_special_tokens=True)
            out.append(Sample(text, ids, response))
    model.train(was_training)
    return out
