"""Responses about the benchmark's world, clean or with planted errors.

Responses are sentences built from varied templates (:mod:`editalign.bench.world` holds
them, with the lexicons). Noisy responses (the data the initial policy is fine-tuned on)
carry three kinds of localised error, each recorded with its character span:

- ``wrong_value``: a stated attribute has another value of the same lexicon;
- ``hedge``: an unwanted clause before a sentence's final period (``", I think"``);
- ``filler``: an unwanted sentence (``"I hope this helps!"``) between sentences.

Removing the hedges and fillers and putting the right values back gives the clean
response exactly: that is the minimal edit the reviser makes. In the grounded task the
value errors are context errors instead (:func:`editalign.bench.world.grounded_value_error`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from editalign.bench.world import (
    FILLERS,
    GROUNDED_SENTENCE_TEMPLATES,
    HEDGES,
    BenchConfig,
    Entity,
    lexicon,
)


@dataclass
class ErrorSpan:
    """One planted error: its kind, where it sits in the noisy text, and the fix."""

    kind: str  # wrong_value (or a GROUNDED_VALUE_ERRORS kind) | hedge | filler
    start: int
    end: int
    text: str  # the erroneous text at [start, end)
    fix: str = ""  # what the reviser puts there ("" = delete)
    attribute: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class NoisyResponse:
    text: str
    clean: str
    errors: list[ErrorSpan] = field(default_factory=list)
    stated: tuple[str, ...] = ()  # attributes stated (one sentence each)


def _wrong_value(attribute: str, kind: str, right: str, rng: random.Random) -> str:
    return rng.choice([v for v in lexicon(attribute, kind) if v != right])


# A response piece: (noisy text, clean text, its error or None); concatenated in order.
Piece = tuple[str, str, ErrorSpan | None]


def render_response(entity: Entity, asked: Sequence[str], rng: random.Random,
                    config: BenchConfig, *, noisy: bool = True,
                    value_error: Callable[[str, random.Random], tuple[str, str] | None]
                    | None = None) -> NoisyResponse:
    """One response to a prompt asking ``asked``, with errors at ``config``'s rates.

    Sentences come in a random order with random templates; ``noisy=False`` gives a
    response without errors (``clean`` is always the error-free version of ``text``).
    ``value_error(attribute, rng) -> (kind, value) | None`` replaces the first task's
    ``wrong_value`` errors (the grounded task's context errors,
    :func:`grounded_value_error`).
    """
    attributes = list(asked)
    if len(attributes) > 1:
        rng.shuffle(attributes)
    pieces: list[Piece] = []
    for i, attribute in enumerate(attributes):
        name = entity.name
        if i > 0 and entity.short != entity.name and rng.random() < config.short_name_rate:
            name = entity.short
        template = rng.choice(GROUNDED_SENTENCE_TEMPLATES[attribute])
        right = entity.facts[attribute]
        value, kind = right, "wrong_value"
        if value_error is None:
            wrong = noisy and rng.random() < config.wrong_value_rate
            if wrong:
                value = _wrong_value(attribute, entity.kind, right, rng)
        else:
            planted = value_error(attribute, rng) if noisy else None
            wrong = planted is not None
            if planted is not None:
                kind, value = planted
        before, after = template.split("{value}")
        before, after = before.format(name=name), after.format(name=name)
        assert after.endswith(".")
        if i > 0:
            pieces.append((" ", " ", None))
        pieces.append((before, before, None))
        error = ErrorSpan(kind, 0, 0, value, right, attribute) if wrong else None
        pieces.append((value, right, error))
        pieces.append((after[:-1], after[:-1], None))
        if noisy and rng.random() < config.hedge_rate:
            hedge = rng.choice(HEDGES)
            pieces.append((hedge, "", ErrorSpan("hedge", 0, 0, hedge)))
        pieces.append((".", ".", None))
    if noisy and rng.random() < config.filler_rate:
        _insert_filler(pieces, rng)
    text, clean, errors = _join_pieces(pieces)
    return NoisyResponse(text, clean, errors, tuple(attributes))


def _insert_filler(pieces: list[Piece], rng: random.Random) -> None:
    """A filler phrase at a random sentence boundary (an error: deleting it restores)."""
    filler = rng.choice(FILLERS)
    boundaries = [0] + [j + 1 for j, (t, _, e) in enumerate(pieces) if t == "." and not e]
    at = rng.choice(boundaries)
    if at == 0:
        # The space after a leading filler belongs to the error (deleting it restores).
        insert = [(filler + " ", "", ErrorSpan("filler", 0, 0, filler + " "))]
    else:
        insert = [(" " + filler, "", ErrorSpan("filler", 0, 0, " " + filler))]
    pieces[at:at] = insert


def _join_pieces(pieces: Sequence[Piece]) -> tuple[str, str, list[ErrorSpan]]:
    """The noisy text, the clean text and the errors with their character offsets."""
    text, clean, errors = "", "", []
    for noisy_text, clean_text, error in pieces:
        if error is not None:
            error.start, error.end = len(text), len(text) + len(noisy_text)
            errors.append(error)
        text += noisy_text
        clean += clean_text
    return text, clean, errors
