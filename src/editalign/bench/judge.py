"""The gold judge: reads any response about an entity and scores it against the world.

A response is read, not matched against templates, so free model output (other word
orders, truncated sentences, repeats, stray words) is scored too:

- every word that is a value of some attribute is a *mention* of that attribute (the
  lexicons are disjoint, so a word names one attribute; any integer is an age);
- a mention is *correct* when it equals the entity's value, *wrong* otherwise (also when
  the entity has no such attribute, e.g. a species for a person);
- a name word (any first, last or pet name of the name pools) other than the entity's own
  is a wrong ``name`` mention (when the row carries the entity's ``name``);
- for entities with a ``birthplace`` (the grounded task) a town is read as the birthplace
  when "born" or "birthplace" precedes it in its sentence (after any earlier town), else as
  the home town; so a card's birthplace stated as the home town is a wrong mention;
- *unwanted* phrases are hedges and fillers (:data:`~editalign.bench.world.HEDGES`,
  :data:`~editalign.bench.world.FILLERS`, case-insensitive) and repeated sentences.

Score of a response to a prompt that asks attributes ``asked``::

    score = (n_correct_asked - wrong_weight * n_wrong) / len(asked) - unwanted_weight * n_unwanted

where ``n_correct_asked`` counts asked attributes that are mentioned and only with the
right value. A perfect answer scores 1, an empty one 0, a wrong value costs as much as a
right one earns. Two responses compare by score: win 1, tie 0.5, loss 0.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from editalign.bench.world import (
    BIRTHPLACE_CUES,
    CITIES,
    COLOURS,
    FILLERS,
    FIRST_NAMES,
    GROUNDED_QUESTION_PROMPTS,
    HEDGES,
    JOBS,
    KINDS,
    LAST_NAMES,
    PET_NAMES,
    SPECIES,
    World,
)
from editalign.eval.judges import Judgement, outcome

_VALUE_ATTRIBUTE = {v.lower(): a for a, values in
                    (("job", JOBS), ("city", CITIES), ("colour", COLOURS), ("species", SPECIES))
                    for v in values}
# Name words: a mention of the wrong name (another person's first or last name, a pet's
# name) is an error like a wrong value. Attribute "name" for all three pools; what it
# should be is worked out per entity by :func:`expected_name`.
_NAME_POOL = {n.lower(): pool for pool, names in
              (("first", FIRST_NAMES), ("last", LAST_NAMES), ("pet", PET_NAMES))
              for n in names}
_WORD = re.compile(r"[A-Za-z]+|\d+")
# A hedge is matched with its leading comma when there is one (that is what was inserted).
_HEDGE = re.compile("|".join(rf",?\s*\b{re.escape(h.lstrip(', '))}\b" for h in HEDGES),
                    re.IGNORECASE)
_FILLER = re.compile("|".join(re.escape(f) for f in FILLERS), re.IGNORECASE)
_SENTENCE = re.compile(r"[^.!?\s][^.!?]*(?:[.!?]+|$)")
_BIRTHPLACE_CUE = re.compile(rf"\b(?:{'|'.join(BIRTHPLACE_CUES)})\b", re.IGNORECASE)


@dataclass(frozen=True)
class Mention:
    attribute: str
    value: str  # as written
    start: int
    end: int


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str  # hedge | filler | repeat


def value_mentions(text: str, attributes: Collection[str] | None = None) -> list[Mention]:
    """Every attribute value in ``text``, in order (name words as attribute ``name``).

    With ``attributes`` (the entity's, e.g. its ``facts``) that include ``birthplace``, a
    town is the birthplace when a cue word precedes it in its sentence, after any earlier
    town of that sentence; otherwise every town is a ``city``.
    """
    out = []
    for m in _WORD.finditer(text):
        word = m.group()
        attribute = "age" if word.isdigit() else _VALUE_ATTRIBUTE.get(word.lower())
        if attribute is None and word.lower() in _NAME_POOL:
            attribute = "name"
        if attribute is not None:
            out.append(Mention(attribute, word, m.start(), m.end()))
    if attributes is not None and "birthplace" in attributes:
        out = _read_birthplaces(text, out)
    return out


def _read_birthplaces(text: str, mentions: list[Mention]) -> list[Mention]:
    spans = sentences(text)
    out, last_town_end = [], 0
    for mention in mentions:
        if mention.attribute != "city":
            out.append(mention)
            continue
        start = next((s for s, e in spans if s <= mention.start < e), 0)
        since = max(start, last_town_end)
        if _BIRTHPLACE_CUE.search(text[since:mention.start]):
            mention = Mention("birthplace", mention.value, mention.start, mention.end)
        out.append(mention)
        last_town_end = mention.end
    return out


def expected_name(mention: Mention, info: Mapping[str, Any]) -> str | None:
    """The name word that should stand where ``mention`` (a name word) stands, for the
    entity ``info`` (``name`` and ``kind``); None when ``info`` has no name."""
    name = info.get("name")
    if not name:
        return None
    parts = name.split()
    pool = _NAME_POOL[mention.value.lower()]
    if info.get("kind") == "person" and len(parts) == 2:
        return parts[1] if pool == "last" else parts[0]
    return parts[0]


def is_correct(mention: Mention, info: Mapping[str, Any]) -> tuple[bool, str | None]:
    """Whether a mention is right for the entity, and the right value (None if unknown)."""
    if mention.attribute == "name":
        right = expected_name(mention, info)
        return right is None or mention.value.lower() == right.lower(), right
    right = info["facts"].get(mention.attribute)
    return right is not None and mention.value.lower() == right.lower(), right


def sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of ``text`` (without surrounding whitespace)."""
    return [m.span() for m in _SENTENCE.finditer(text)]


def unwanted_spans(text: str) -> list[Span]:
    """Hedges, fillers and repeated sentences, non-overlapping, in order.

    A repeated sentence (same words as an earlier one, ignoring case) is one span; hedges
    and fillers inside it are not counted again.
    """
    spans: list[Span] = []
    seen: set[str] = set()
    for start, end in sentences(text):
        key = " ".join(_WORD.findall(text[start:end].lower()))
        if key and key in seen:
            spans.append(Span(start, end, "repeat"))
        seen.add(key)
    for pattern, kind in ((_FILLER, "filler"), (_HEDGE, "hedge")):
        for m in pattern.finditer(text):
            if not any(s.start < m.end() and m.start() < s.end for s in spans):
                spans.append(Span(m.start(), m.end(), kind))
    return sorted(spans, key=lambda s: s.start)


def asked_in(prompt: str, name: str, kind: str,
             attributes: Sequence[str] | None = None) -> tuple[str, ...]:
    """The attributes a prompt about ``name`` asks for: one for a question, else all
    (``attributes``: the entity's, default the first task's for ``kind``)."""
    attributes = tuple(attributes) if attributes is not None else KINDS[kind]
    for attribute in attributes:
        for template in GROUNDED_QUESTION_PROMPTS[attribute]:
            if template.format(name=name) in prompt:
                return (attribute,)
    return attributes


@dataclass
class Verdict:
    score: float
    correct: list[str] = field(default_factory=list)  # asked attributes stated right
    missing: list[str] = field(default_factory=list)  # asked attributes not stated
    wrong: list[str] = field(default_factory=list)  # attribute of every wrong mention
    unwanted: list[str] = field(default_factory=list)  # kind of every unwanted span

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GoldJudge:
    """Scores responses against an entity's facts (see the module docstring)."""

    wrong_weight: float = 1.0
    unwanted_weight: float = 0.2
    tie_tolerance: float = 1e-9

    def verdict(self, response: str, info: Mapping[str, Any]) -> Verdict:
        """``info`` is a prompts-file row's ``bench`` object: ``facts``, ``asked``, ``kind``."""
        facts: Mapping[str, str] = info["facts"]
        asked: Sequence[str] = info.get("asked") or list(facts)
        stated: dict[str, list[bool]] = {}
        wrong = []
        for mention in value_mentions(response, facts):
            ok, _ = is_correct(mention, info)
            stated.setdefault(mention.attribute, []).append(ok)
            if not ok:
                wrong.append(mention.attribute)
        correct = [a for a in asked if stated.get(a) and all(stated[a])]
        missing = [a for a in asked if a not in stated]
        unwanted = [s.kind for s in unwanted_spans(response)]
        score = ((len(correct) - self.wrong_weight * len(wrong)) / max(len(asked), 1)
                 - self.unwanted_weight * len(unwanted))
        return Verdict(score, correct, missing, wrong, unwanted)

    def score(self, response: str, info: Mapping[str, Any]) -> float:
        return self.verdict(response, info).score

    def compare(self, a: str, b: str, info: Mapping[str, Any]) -> float:
        """1 if ``a`` is better, 0.5 for a tie, 0 if ``b`` is better."""
        return outcome(self.score(a, info), self.score(b, info), self.tie_tolerance)

    def reward_fn(self, world: World):
        """``fn(prompts, responses) -> scores`` for PPO's ``text_reward_source``.

        The entity and the asked attributes are read from the decoded prompt text (which
        may include a chat template; on the grounded task the entity is the one named last,
        in the question after the cards); a prompt about no known entity scores 0.
        """

        def score(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
            out = []
            for prompt, response in zip(prompts, responses, strict=True):
                entity = world.entity_asked(prompt)
                if entity is None:
                    out.append(0.0)
                    continue
                if not entity.facts:
                    raise ValueError(
                        f"{entity.name} has no facts in this world: the grounded task's facts "
                        "are per prompt, on its cards; score with the prompts rows' bench "
                        "objects (GoldJudge.score) instead")
                info = {"facts": entity.facts, "kind": entity.kind, "name": entity.name,
                        "asked": list(asked_in(prompt, entity.name, entity.kind,
                                               list(entity.facts)))}
                out.append(self.score(response, info))
            return out

        return score


class GoldWinJudge:
    """The gold judge as a win-rate judge (``--judge gold``); every prompts row must carry
    its ``bench`` object."""

    name = "gold"

    def __init__(self, judge: GoldJudge | None = None) -> None:
        self.judge = judge or GoldJudge()

    def compare(self, rows: Sequence[Mapping[str, Any]], policy: Sequence[str],
                reference: Sequence[str]) -> Judgement:
        for i, row in enumerate(rows):
            if not isinstance(row.get("bench"), Mapping):
                raise ValueError(f"prompts row {i} has no 'bench' object: the gold judge needs "
                                 "a prompts file written by the bench task "
                                 "(prompts.test.jsonl)")
        a = [self.judge.score(r, row["bench"]) for r, row in zip(policy, rows, strict=True)]
        b = [self.judge.score(r, row["bench"]) for r, row in zip(reference, rows, strict=True)]
        return Judgement([outcome(x, y, self.judge.tie_tolerance)
                          for x, y in zip(a, b, strict=True)], a, b)
