"""From :class:`EditPair` text to token ids and per-token edit labels for both sides.

Labels are computed once, stored with the data set and reused by every trainer. Each side
of a pair is stored as the full model input (prompt + response + EOS) with a label per
position: ``IGNORE`` (-100) on the prompt, a :class:`Label` on every response token.

Prompts are rendered and responses split off by :mod:`editalign.data.prompts`, the one
home of the prompt/response boundary rule; each side keeps its own ``response_start``
because a token merged across the boundary may make the two sides' prompts differ in their
last token.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from rapidfuzz.distance import Levenshtein

from editalign.data.align import IGNORE, Label, align, align_words
from editalign.data.pairs import DataError, EditPair
from editalign.data.prompts import (
    CHAT_TEMPLATE_MODES,
    ChatTemplateMode,
    render_prompt,
    split_response,
)
from editalign.options import check_choice

# The two sides of a labelled pair, in the order batches stack them (revised rows first).
SIDES = ("revised", "original")


Granularity = Literal["token", "word", "space"]
Truncation = Literal["keep_start", "keep_end"]

GRANULARITIES = ("token", "word", "space")
TRUNCATIONS = ("keep_start", "keep_end")


@dataclass
class LabelingConfig:
    """How pairs become labelled token sequences.

    granularity: ``token`` aligns token ids; ``word`` aligns whitespace/punctuation words
        and gives every token of a changed word the word's label (FIGA's "phrase level");
        ``space`` does the same with space-separated words (for text already tokenized by
        spaces, such as MLQE-PE, whose official tags are per space-separated word).
    max_length: longest full sequence (prompt + response + EOS); ``None`` for no limit.
    truncation: ``keep_start`` cuts the end of the sequence; ``keep_end`` drops prompt
        tokens from the left first, so that responses survive long prompts.
    chat_template: ``auto`` renders chat-message prompts with the tokenizer's chat
        template and uses text prompts as they are; ``always`` also wraps text prompts as
        one user message; ``never`` joins messages as plain ``role: content`` lines.
    """

    granularity: Granularity = "token"
    max_length: int | None = 1024
    truncation: Truncation = "keep_start"
    chat_template: ChatTemplateMode = "auto"

    def __post_init__(self) -> None:
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("truncation", self.truncation, TRUNCATIONS)
        check_choice("chat_template", self.chat_template, CHAT_TEMPLATE_MODES)
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be at least 2 or None, got {self.max_length}")


@dataclass
class TokenizedSide:
    """One side of a pair as the model reads it."""

    input_ids: list[int]
    labels: list[int]  # IGNORE on the prompt, a Label per response token (EOS included)
    response_start: int
    # (start, end) character offsets into the response text for each response token;
    # (0, 0) for EOS. Kept for previews and for comparing with human character spans.
    offsets: list[tuple[int, int]]

    @property
    def response_ids(self) -> list[int]:
        return self.input_ids[self.response_start:]

    @property
    def response_labels(self) -> list[int]:
        return self.labels[self.response_start:]


@dataclass
class LabeledPair:
    id: str
    prompt_text: str
    original_text: str
    revised_text: str
    original: TokenizedSide
    revised: TokenizedSide
    edit_distance: int  # token-level Levenshtein distance of the responses (any granularity)
    truncated: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def edit_ratio(self) -> float:
        """Edit distance / the longer response, both measured on the whole responses.

        ``edit_distance`` is the distance of the untruncated responses, so it is divided by
        their untruncated length (kept in ``meta["untruncated_response_tokens"]`` when
        truncation cut them): the ratio describes the pair, not the ``max_length`` it was
        labelled with, and stays in [0, 1). Directories labelled before this rule lack the
        key; their truncated pairs fall back to the kept length.
        """
        longest = max(len(self.original.response_ids), len(self.revised.response_ids))
        untruncated = self.meta.get("untruncated_response_tokens") if self.truncated else None
        if isinstance(untruncated, int) and untruncated > longest:
            longest = untruncated
        return self.edit_distance / max(longest, 1)

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": self.id,
            "prompt": self.prompt_text,
            "original": self.original_text,
            "revised": self.revised_text,
            "edit_distance": self.edit_distance,
            "truncated": self.truncated,
            "meta": json.dumps(self.meta, ensure_ascii=False),
        }
        for name, side in (("original", self.original), ("revised", self.revised)):
            row[f"{name}_input_ids"] = side.input_ids
            row[f"{name}_labels"] = side.labels
            row[f"{name}_response_start"] = side.response_start
            row[f"{name}_offsets"] = [list(o) for o in side.offsets]
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> LabeledPair:
        def side(name: str) -> TokenizedSide:
            return TokenizedSide(
                input_ids=list(row[f"{name}_input_ids"]),
                labels=list(row[f"{name}_labels"]),
                response_start=int(row[f"{name}_response_start"]),
                offsets=[tuple(o) for o in row[f"{name}_offsets"]],
            )

        return cls(
            id=row["id"], prompt_text=row["prompt"], original_text=row["original"],
            revised_text=row["revised"], original=side("original"), revised=side("revised"),
            edit_distance=int(row["edit_distance"]), truncated=bool(row["truncated"]),
            meta=json.loads(row["meta"]) if row.get("meta") else {},
        )


TRUNCATED_AWAY = "response truncated away (prompt longer than max_length)"


class SkipPair(Exception):
    """A pair that cannot be used; the message is the reason counted in the stats."""


def _truncate(side: TokenizedSide, config: LabelingConfig) -> tuple[TokenizedSide, int]:
    """Cut a side to ``max_length``; returns the side and how many tokens were dropped."""
    limit = config.max_length
    n = len(side.input_ids)
    if limit is None or n <= limit:
        return side, 0
    dropped = n - limit
    ids, labels, start, offsets = side.input_ids, side.labels, side.response_start, side.offsets
    if config.truncation == "keep_end":
        from_prompt = min(dropped, start)
        ids, labels = ids[from_prompt:], labels[from_prompt:]
        start -= from_prompt
    ids, labels = ids[:limit], labels[:limit]
    offsets = offsets[: max(0, len(ids) - start)]
    if len(ids) <= start:
        raise SkipPair(TRUNCATED_AWAY)
    return TokenizedSide(ids, labels, start, offsets), dropped


def label_pair(pair: EditPair, tokenizer: Any, config: LabelingConfig | None = None,
               *, encodings: tuple[Any, Any] | None = None) -> LabeledPair:
    """Tokenize both sides of ``pair`` and label every response token.

    ``encodings`` lets :func:`label_pairs` pass in batch-tokenized sides.
    Raises :class:`SkipPair` for pairs that cannot be used.
    """
    config = config or LabelingConfig()
    if not pair.original.strip():
        raise SkipPair("empty original")
    if not pair.revised.strip():
        raise SkipPair("empty revised")
    prompt_text, add_special = render_prompt(pair.prompt, tokenizer, config.chat_template)
    if encodings is None:
        encodings = tuple(_encode(tokenizer, [prompt_text + r], add_special)[0]
                          for r in (pair.original, pair.revised))
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; set one before labelling")
    o_ids, o_start, o_off = split_response(encodings[0], len(prompt_text), eos)
    r_ids, r_start, r_off = split_response(encodings[1], len(prompt_text), eos)
    if config.granularity in ("word", "space"):
        alignment = align_words(pair.original, pair.revised, o_off[:-1], r_off[:-1],
                                split_punctuation=config.granularity == "word")
        # edit_distance stays in tokens whatever the granularity, so ratios compare.
        distance = Levenshtein.distance(o_ids[o_start:-1], r_ids[r_start:-1])
    else:
        alignment = align(o_ids[o_start:-1], r_ids[r_start:-1])
        distance = alignment.distance
    # EOS is aligned with EOS by construction: both responses end there.
    o_labels = [IGNORE] * o_start + alignment.original_labels + [Label.EQUAL.value]
    r_labels = [IGNORE] * r_start + alignment.revised_labels + [Label.EQUAL.value]
    original, o_dropped = _truncate(TokenizedSide(o_ids, o_labels, o_start, o_off), config)
    revised, r_dropped = _truncate(TokenizedSide(r_ids, r_labels, r_start, r_off), config)
    meta = dict(pair.meta)
    if o_dropped or r_dropped:
        # The edit ratio divides the (untruncated) distance by the untruncated length.
        meta.update(truncated_tokens=o_dropped + r_dropped,
                    untruncated_response_tokens=max(len(o_ids) - o_start,
                                                    len(r_ids) - r_start))
    return LabeledPair(
        id=pair.id, prompt_text=prompt_text, original_text=pair.original,
        revised_text=pair.revised, original=original, revised=revised,
        edit_distance=distance, truncated=bool(o_dropped or r_dropped), meta=meta,
    )


def _encode(tokenizer: Any, texts: list[str], add_special_tokens: bool) -> list[Any]:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            "editalign needs a fast (Rust) tokenizer: response boundaries and word labels use "
            "its character offsets. Load the tokenizer with use_fast=True."
        )
    batch = tokenizer(texts, add_special_tokens=add_special_tokens,
                      return_offsets_mapping=True, return_attention_mask=False)
    return [{"input_ids": batch["input_ids"][i], "offset_mapping": batch["offset_mapping"][i]}
            for i in range(len(texts))]


@dataclass
class LabelStats:
    """What the labelling run did; written to ``stats.json`` and printed."""

    pairs_in: int = 0
    kept: int = 0
    no_edit: int = 0
    truncated_pairs: int = 0  # one name with PrepareReport and stats.json
    truncated_tokens: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)
    label_counts: dict[str, Counter[str]] = field(
        default_factory=lambda: {"original": Counter(), "revised": Counter()})
    edit_ratios: list[float] = field(default_factory=list)
    # Characters cut from fields longer than any max_length could keep (before tokenizing).
    cut_pairs: int = 0
    cut_characters: int = 0
    # Pairs with an edit whose every edited token lies past max_length: all labels equal.
    edit_truncated_away: int = 0

    def add(self, lp: LabeledPair) -> None:
        self.kept += 1
        self.no_edit += lp.edit_distance == 0
        cut = int(lp.meta.get("cut_characters", 0))
        self.cut_pairs += cut > 0
        self.cut_characters += cut
        self.edit_truncated_away += bool(lp.meta.get("edit_past_cut")) or (
            lp.edit_distance > 0 and all(label == Label.EQUAL.value
                                         for side in (lp.original, lp.revised)
                                         for label in side.response_labels))
        self.truncated_pairs += lp.truncated
        self.truncated_tokens += int(lp.meta.get("truncated_tokens", 0))
        self.tokens["prompt"] += lp.revised.response_start
        for name, side in (("original", lp.original), ("revised", lp.revised)):
            self.tokens[f"{name}_response"] += len(side.response_ids)
            counts = Counter(side.response_labels)
            for label in Label:
                if counts[label.value]:
                    self.label_counts[name][label.name.lower()] += counts[label.value]
        self.edit_ratios.append(lp.edit_ratio)

    def to_dict(self) -> dict[str, Any]:
        ratios = np.asarray(self.edit_ratios, dtype=float)
        dist: dict[str, Any] = {}
        if ratios.size:
            q = np.quantile(ratios, [0.1, 0.25, 0.5, 0.75, 0.9])
            # Ratios are < 1 by construction; clipping keeps a pair from an older labelling
            # (truncated, ratio > 1) in the last bin instead of silently out of the counts.
            hist, edges = np.histogram(np.clip(ratios, 0.0, 1.0), bins=10, range=(0.0, 1.0))
            dist = {
                "mean": float(ratios.mean()),
                "p10": float(q[0]), "p25": float(q[1]), "p50": float(q[2]),
                "p75": float(q[3]), "p90": float(q[4]),
                "max": float(ratios.max()),
                "histogram": {"edges": [round(float(e), 2) for e in edges],
                              "counts": [int(c) for c in hist]},
            }
        return {
            "pairs_in": self.pairs_in, "kept": self.kept, "no_edit": self.no_edit,
            "skipped": dict(self.skipped), "truncated_pairs": self.truncated_pairs,
            "truncated_tokens": self.truncated_tokens, "tokens": dict(self.tokens),
            "cut_pairs": self.cut_pairs, "cut_characters": self.cut_characters,
            "edit_truncated_away": self.edit_truncated_away,
            "label_counts": {k: dict(v) for k, v in self.label_counts.items()},
            "edit_ratio": dist,
        }

    def summary(self) -> str:
        d = self.to_dict()
        skipped = ", ".join(f"{n} {r}" for r, n in self.skipped.most_common()) or "none"
        lines = [
            f"labelled {self.kept} of {self.pairs_in} pairs ({self.no_edit} with no edit); "
            f"skipped: {skipped}",
            f"truncated: {self.truncated_pairs} pairs ({self.truncated_tokens} tokens dropped)"
            + (f"; {self.cut_characters} characters of {self.cut_pairs} pairs cut before "
               "tokenizing (past anything max_length keeps)" if self.cut_pairs else ""),
            "tokens: " + ", ".join(f"{k} {v}" for k, v in sorted(self.tokens.items())),
        ]
        for name in ("original", "revised"):
            counts = d["label_counts"][name]
            total = sum(counts.values()) or 1
            parts = ", ".join(f"{k} {v} ({v / total:.1%})" for k, v in sorted(counts.items()))
            lines.append(f"{name} labels: {parts}")
        if d["edit_ratio"]:
            e = d["edit_ratio"]
            lines.append(f"edit ratio (edit distance / longer response): median {e['p50']:.3f}, "
                         f"p90 {e['p90']:.3f}, max {e['max']:.3f}")
        return "\n".join(lines)


def label_pairs(
    pairs: Iterable[EditPair], tokenizer: Any, config: LabelingConfig | None = None,
    *, strict: bool = False, batch_size: int = 256, progress: bool = False,
) -> tuple[list[LabeledPair], LabelStats]:
    """Label many pairs; unusable pairs are skipped and counted (or raise with ``strict``)."""
    from tqdm.auto import tqdm

    config = config or LabelingConfig()
    budget = char_budget(tokenizer, config)
    pairs = [bound_characters(p, budget, config.truncation) for p in pairs]
    stats = LabelStats(pairs_in=len(pairs))
    out: list[LabeledPair] = []
    bar = tqdm(total=len(pairs), desc="labelling", unit="pair", disable=not progress)
    for chunk_start in range(0, len(pairs), batch_size):
        chunk = pairs[chunk_start:chunk_start + batch_size]
        for pair, encodings in zip(chunk, _encode_chunk(chunk, tokenizer, config), strict=True):
            try:
                lp = label_pair(pair, tokenizer, config, encodings=encodings)
            except SkipPair as skip:
                if strict:
                    raise ValueError(f"pair {pair.id!r}: {skip}") from None
                stats.skipped[str(skip)] += 1
                continue
            out.append(lp)
            stats.add(lp)
        bar.update(len(chunk))
    bar.close()
    return out, stats


def char_budget(tokenizer: Any, config: LabelingConfig) -> int | None:
    """The most characters of one field that labelling reads: twice ``max_length`` times
    the longest token's length (a byte-level token's symbols, never fewer than the text it
    stands for), so the cut lies past every token truncation keeps; None without a limit.
    It keeps one huge row from costing gigabytes to tokenize before truncation."""
    if config.max_length is None:
        return None
    longest = max((len(token) for token in tokenizer.get_vocab()), default=1)
    return 2 * config.max_length * max(longest, 1)


def _cut(text: str, budget: int, keep_end: bool) -> str:
    if len(text) <= budget:
        return text
    return text[-budget:] if keep_end else text[:budget]


def _chars(prompt: Any) -> int:
    if isinstance(prompt, str):
        return len(prompt)
    if isinstance(prompt, list):
        return sum(len(m["content"]) for m in prompt
                   if isinstance(m, dict) and isinstance(m.get("content"), str))
    return 0


def bound_characters(pair: EditPair, budget: int | None, truncation: str) -> EditPair:
    """``pair`` with each field cut to ``budget`` characters (the prompt from its start
    under ``keep_end``, which drops prompt tokens first); ``meta["cut_characters"]`` counts
    what was cut."""
    if budget is None:
        return pair
    keep_end = truncation == "keep_end"
    prompt: Any = pair.prompt
    if isinstance(prompt, str):
        prompt = _cut(prompt, budget, keep_end)
    elif isinstance(prompt, list):
        prompt = [{**m, "content": _cut(m["content"], budget, keep_end)}
                  if isinstance(m, dict) and isinstance(m.get("content"), str) else m
                  for m in prompt]
    original, revised = pair.original[:budget], pair.revised[:budget]
    cut = (_chars(pair.prompt) - _chars(prompt) + len(pair.original) - len(original)
           + len(pair.revised) - len(revised))
    if not cut:
        return pair
    meta = {**pair.meta, "cut_characters": cut}
    if original == revised and pair.original != pair.revised:
        meta["edit_past_cut"] = True  # every edit lay past the cut: counted, not hidden
    return EditPair(prompt=prompt, original=original, revised=revised, id=pair.id, meta=meta)


def _encode_chunk(chunk: list[EditPair], tokenizer: Any,
                  config: LabelingConfig) -> list[tuple[Any, Any] | None]:
    """Tokenize a chunk of pairs in as few tokenizer calls as possible (Rust batches)."""
    rendered = [render_prompt(p.prompt, tokenizer, config.chat_template) for p in chunk]
    result: list[tuple[Any, Any] | None] = [None] * len(chunk)
    for add_special in (True, False):
        idx = [i for i, (_, a) in enumerate(rendered) if a == add_special]
        if not idx:
            continue
        texts = [rendered[i][0] + side for i in idx
                 for side in (chunk[i].original, chunk[i].revised)]
        enc = _encode(tokenizer, texts, add_special)
        for k, i in enumerate(idx):
            result[i] = (enc[2 * k], enc[2 * k + 1])
    return result


def to_dataset(labeled: Sequence[LabeledPair], info: dict[str, Any] | None = None) -> Any:
    """A ``datasets.Dataset`` with one row per pair (see :meth:`LabeledPair.to_row`)."""
    import datasets

    features = datasets.Features({
        "id": datasets.Value("string"),
        "prompt": datasets.Value("string"),
        "original": datasets.Value("string"),
        "revised": datasets.Value("string"),
        "edit_distance": datasets.Value("int32"),
        "truncated": datasets.Value("bool"),
        "meta": datasets.Value("string"),
        **{f"{side}_{col}": feat for side in ("original", "revised") for col, feat in {
            "input_ids": datasets.Sequence(datasets.Value("int32")),
            "labels": datasets.Sequence(datasets.Value("int8")),
            "response_start": datasets.Value("int32"),
            "offsets": datasets.Sequence(datasets.Sequence(datasets.Value("int32"), length=2)),
        }.items()},
    })
    rows = [lp.to_row() for lp in labeled]
    columns = {name: [r[name] for r in rows] for name in features}
    ds = datasets.Dataset.from_dict(columns, features=features)
    if info:
        ds.info.description = json.dumps(info)
    return ds


def config_dict(config: LabelingConfig) -> dict[str, Any]:
    return asdict(config)


def check_labeled(stats: LabelStats, config: LabelingConfig, source: str, *,
                  max_length_flag: str = "--max-length",
                  truncation_flag: str = "--truncation") -> str | None:
    """Refuse a labelling run that kept no pair; warn when truncation lost most of them.

    Raises :class:`DataError` (naming ``source``) when no pair survived; returns a warning
    (naming the options that fix it) when more than half of the pairs were skipped because
    their prompt filled ``max_length``, else None. The flag names are the calling
    command's spelling.
    """
    lost = stats.skipped[TRUNCATED_AWAY]
    fix = f"raise {max_length_flag} (now {config.max_length})"
    if config.truncation != "keep_end":
        fix += (f" or pass {truncation_flag} keep_end (drops the start of the prompt "
                "instead of the response)")
    if stats.kept == 0:
        reasons = ", ".join(f"{n} {r}" for r, n in stats.skipped.most_common())
        raise DataError(f"no usable pair: {stats.pairs_in} pairs in, none labelled"
                        + (f" (skipped: {reasons})" if reasons else "")
                        + (f"; {fix}" if lost else ""), source=source)
    if 2 * lost > stats.pairs_in:
        return (f"truncation lost {lost} of {stats.pairs_in} pairs ({lost / stats.pairs_in:.0%}):"
                f" their prompt fills the {config.max_length}-token limit; {fix}")
    if stats.edit_truncated_away:
        return (f"{stats.edit_truncated_away} of {stats.kept} pairs have every edit past the "
                f"{config.max_length}-token limit: they are labelled all equal (no edit "
                f"signal); raise {max_length_flag} to keep their edits")
    return None
