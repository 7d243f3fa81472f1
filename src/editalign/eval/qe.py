"""Word-level quality estimation (WMT QE Task 2) for token reward models: ``editalign eval qe``.

A token reward model reads the source (in the prompt) and the MT and gives every MT token
a reward; the MT word tags of MLQE-PE say which words a translator had to change (BAD).
The model never sees the post-edit.

Rules (the same for every model, and for the references):

- **sub-word → word**: MT words are the MT's space-separated words (MLQE-PE is
  tokenized); a model token belongs to every word its character span overlaps (the
  labelled pairs keep each token's character offsets), and a word's score is the
  **minimum** reward over its tokens: one bad piece makes the word bad.
- **threshold**: a word is tagged BAD when its score is <= t, with t the value that
  maximises MCC on the **dev** words; the test tags never choose anything.
- **metrics**: MCC over all MT words of the test set (the field's primary metric), F1 of
  BAD, F1 of OK and their product F1-MULT; a 95% bootstrap interval of MCC resampling
  sentences. Sentence level: Pearson and Spearman correlation between −Σ rewards (the
  sum over the MT's response tokens, EOS included: higher means worse, like HTER) and
  HTER.
- **references** on the same words: a random tagger (BAD with the dev BAD rate), all-BAD,
  and, when the data has post-edits, the edit labels as tags (an oracle that has seen the
  post-edit: MT words deleted or substituted by the Levenshtein alignment of the
  space-separated words, ``--granularity space``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from editalign.data.align import Label

if TYPE_CHECKING:
    from editalign.data.labeling import LabeledPair
    from editalign.data.mlqe import Segment
    from editalign.reward_model import TokenRewardModel

_BAD_LABELS = (Label.DELETED.value, Label.SUBSTITUTED.value)
_WORD = re.compile(r"\S+")


# --------------------------------------------------------------------------- tokens → words


def token_words(text: str, offsets: Sequence[tuple[int, int]]) -> list[list[int]]:
    """For each space-separated word of ``text``, the tokens whose span overlaps it.

    ``offsets`` are the response tokens' character spans; empty spans (EOS) belong to no
    word. A token that covers the space before a word belongs to that word only; one that
    spans two words belongs to both.
    """
    groups: list[list[int]] = []
    spans = [m.span() for m in _WORD.finditer(text)]
    t = 0
    for start, end in spans:
        while t < len(offsets) and (offsets[t][1] <= start or offsets[t][1] <= offsets[t][0]):
            t += 1
        group, k = [], t
        while k < len(offsets) and offsets[k][0] < end:
            if offsets[k][1] > offsets[k][0] and offsets[k][1] > start:
                group.append(k)
            k += 1
        groups.append(group)
    return groups


def word_scores(token_scores: Sequence[float] | np.ndarray, groups: Sequence[Sequence[int]]
                ) -> np.ndarray:
    """One score per word: the minimum over its tokens (NaN for a word with no token)."""
    scores = np.asarray(token_scores, dtype=float)
    return np.array([scores[list(g)].min() if g else np.nan for g in groups])


def edited_words(lp: LabeledPair) -> np.ndarray:
    """MT words (space-separated) that the edit deleted or substituted in any token."""
    side = lp.original
    labels = np.isin(np.asarray(side.response_labels), _BAD_LABELS).astype(float)
    groups = token_words(lp.original_text, side.offsets)
    return np.array([bool(labels[g].any()) if g else False for g in groups])


def official_bad(lp: LabeledPair) -> np.ndarray | None:
    tags = lp.meta.get("mt_tags")
    return None if tags is None else np.array([t == "BAD" for t in tags])


def covered(lp: LabeledPair) -> bool:
    """Every MT word has at least one token (False when truncation cut the MT)."""
    return all(token_words(lp.original_text, lp.original.offsets))


# --------------------------------------------------------------------------- metrics


def _counts(bad: np.ndarray, predicted_bad: np.ndarray) -> np.ndarray:
    """(tp, fp, fn, tn) with BAD as the positive class."""
    bad, pred = np.asarray(bad, bool), np.asarray(predicted_bad, bool)
    return np.array([np.sum(bad & pred), np.sum(~bad & pred), np.sum(bad & ~pred),
                     np.sum(~bad & ~pred)], dtype=float)


def _mcc(tp: Any, fp: Any, fn: Any, tn: Any) -> Any:
    """Matthews correlation; 0 where it is undefined (a constant prediction), as sklearn."""
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (tp * tn - fp * fn) / np.where(denom > 0, denom, 1), 0.0)


def _f1(tp: float, fp: float, fn: float) -> float:
    return float(2 * tp / (2 * tp + fp + fn)) if tp > 0 else 0.0


def tag_metrics(bad: np.ndarray, predicted_bad: np.ndarray) -> dict[str, float]:
    """MCC, F1-BAD, F1-OK, F1-MULT, precision and recall of BAD, the predicted BAD share."""
    tp, fp, fn, tn = _counts(bad, predicted_bad)
    f1_bad, f1_ok = _f1(tp, fp, fn), _f1(tn, fn, fp)
    return {"mcc": float(_mcc(tp, fp, fn, tn)), "f1_bad": f1_bad, "f1_ok": f1_ok,
            "f1_mult": f1_bad * f1_ok,
            "precision_bad": float(tp / (tp + fp)) if tp + fp else 0.0,
            "recall_bad": float(tp / (tp + fn)) if tp + fn else 0.0,
            "predicted_bad_rate": float((tp + fp) / max(tp + fp + fn + tn, 1))}


def choose_threshold(scores: np.ndarray, bad: np.ndarray) -> float:
    """The t maximising MCC of "BAD iff score <= t" (ties between cuts: the lowest t).

    Every distinct score is a candidate cut, so this is exact, in one sort.
    """
    scores, bad = np.asarray(scores, float), np.asarray(bad, bool)
    keep = ~np.isnan(scores)
    scores, bad = scores[keep], bad[keep]
    if len(scores) == 0:
        raise ValueError("no scored words to choose a threshold on")
    order = np.argsort(scores, kind="mergesort")
    s, b = scores[order], bad[order]
    cut = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each run of ties
    tp = np.cumsum(b)[cut]
    fp = np.cumsum(~b)[cut]
    fn, tn = b.sum() - tp, (~b).sum() - fp
    return float(s[cut[int(np.argmax(_mcc(tp, fp, fn, tn)))]])


def bootstrap_mcc(bad: Sequence[np.ndarray], predicted: Sequence[np.ndarray], *,
                  n_resamples: int = 1000, seed: int = 0, level: float = 0.95
                  ) -> tuple[float, float]:
    """Percentile interval of MCC over all words, resampling sentences with replacement."""
    counts = np.stack([_counts(b, p) for b, p in zip(bad, predicted, strict=True)])
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(counts), size=(n_resamples, len(counts)))
    totals = np.stack([np.bincount(row, minlength=len(counts)) @ counts for row in picks])
    values = _mcc(*totals.T)
    low, high = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(low), float(high)


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    s = x[order]
    ranks = np.empty(len(x))
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
    ends = np.r_[starts[1:], len(x)]
    for a, e in zip(starts, ends, strict=True):
        ranks[order[a:e]] = (a + e + 1) / 2.0
    return ranks


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    return pearson(_ranks(np.asarray(x, float)), _ranks(np.asarray(y, float)))


# --------------------------------------------------------------------------- label agreement


def tag_agreement(labeled: Sequence[LabeledPair]) -> dict[str, Any] | None:
    """How well the edit labels (deleted/substituted MT words) match the official MT tags.

    None when no pair carries ``meta["mt_tags"]``. Pairs whose MT lost words to
    truncation are left out and counted.
    """
    official, edited, skipped = [], [], 0
    for lp in labeled:
        tags = official_bad(lp)
        if tags is None:
            continue
        if not covered(lp):
            skipped += 1
            continue
        words = edited_words(lp)
        if len(words) != len(tags):
            raise ValueError(f"pair {lp.id}: {len(tags)} MT tags for {len(words)} MT words")
        official.append(tags)
        edited.append(words)
    if not official:
        return None
    truth, pred = np.concatenate(official), np.concatenate(edited)
    m = tag_metrics(truth, pred)
    return {"pairs": len(official), "skipped_truncated": skipped, "words": len(truth),
            "bad_official": int(truth.sum()), "bad_edit": int(pred.sum()),
            "precision": m["precision_bad"], "recall": m["recall_bad"], "f1": m["f1_bad"],
            "mcc": m["mcc"],
            "sentences_identical": int(sum(np.array_equal(a, b)
                                           for a, b in zip(official, edited, strict=True)))}


# --------------------------------------------------------------------------- evaluation


@dataclass
class QESentence:
    """One MT sentence: per-word model scores (higher = better), truth, and extras."""

    word_scores: np.ndarray
    bad: np.ndarray  # official MT word tags, True = BAD
    reward_sum: float = float("nan")
    hter: float | None = None
    edited: np.ndarray | None = None  # the oracle: words the post-edit changed


def _flat(sentences: Sequence[QESentence]) -> tuple[np.ndarray, np.ndarray]:
    return (np.concatenate([s.word_scores for s in sentences]),
            np.concatenate([s.bad for s in sentences]))


def _row(bad: Sequence[np.ndarray], pred: Sequence[np.ndarray], n_resamples: int,
         seed: int) -> dict[str, Any]:
    row: dict[str, Any] = tag_metrics(np.concatenate(bad), np.concatenate(pred))
    row["mcc_ci95"] = list(bootstrap_mcc(bad, pred, n_resamples=n_resamples, seed=seed))
    return row


def evaluate_qe(dev: Sequence[QESentence], test: Sequence[QESentence], *,
                n_resamples: int = 1000, seed: int = 0, random_draws: int = 10
                ) -> dict[str, Any]:
    """The model and the references on ``test``, the model's threshold from ``dev``."""
    dev_scores, dev_bad = _flat(dev)
    threshold = choose_threshold(dev_scores, dev_bad)
    bad = [s.bad for s in test]
    model_pred = [s.word_scores <= threshold for s in test]  # NaN (no token) → OK
    model = _row(bad, model_pred, n_resamples, seed)
    model["threshold"] = threshold
    model["dev"] = tag_metrics(dev_bad, dev_scores <= threshold)
    with_hter = [s for s in test if s.hter is not None and not np.isnan(s.reward_sum)]
    if len(with_hter) > 2:
        neg_sum = [-s.reward_sum for s in with_hter]
        hter = [s.hter for s in with_hter]
        model["sentence"] = {"pearson": pearson(neg_sum, hter),
                             "spearman": spearman(neg_sum, hter),
                             "sentences": len(with_hter)}
    dev_rate = float(dev_bad.mean())
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(random_draws):
        pred = [rng.random(len(b)) < dev_rate for b in bad]
        draws.append(_row(bad, pred, n_resamples, seed))
    random_row = {k: float(np.mean([d[k] for d in draws])) for k in draws[0]
                  if k != "mcc_ci95"}
    random_row["mcc_ci95"] = [float(np.mean([d["mcc_ci95"][i] for d in draws]))
                              for i in (0, 1)]
    random_row["draws"] = random_draws
    references = {
        f"random tagger (BAD rate {dev_rate:.3f} of dev)": random_row,
        "all BAD": _row(bad, [np.ones(len(b), bool) for b in bad], n_resamples, seed),
    }
    if all(s.edited is not None for s in test):
        references["edit labels (oracle, sees the post-edit)"] = _row(
            bad, [s.edited for s in test], n_resamples, seed)
    test_bad = np.concatenate(bad)
    return {"model": model, "references": references,
            "test": {"sentences": len(test), "words": len(test_bad),
                     "bad_rate": float(test_bad.mean())},
            "dev": {"sentences": len(dev), "words": len(dev_bad), "bad_rate": dev_rate},
            "rule": "word score = min over its tokens' rewards; BAD iff score <= threshold "
                    "(chosen on dev to maximise MCC)"}


def markdown(result: dict[str, Any], title: str = "Word-level QE") -> str:
    t = result["test"]
    lines = [f"{title}: {t['sentences']} test sentences, {t['words']} MT words, "
             f"BAD share {t['bad_rate']:.3f}; threshold chosen on {result['dev']['words']} dev "
             "words.", "",
             "| tagger | MCC | MCC 95% CI | F1-BAD | F1-OK | F1-MULT | Pearson (HTER) | "
             "Spearman (HTER) |",
             "|---|---|---|---|---|---|---|---|"]

    def line(name: str, r: dict[str, Any]) -> str:
        s = r.get("sentence", {})
        corr = (f"{s['pearson']:.3f} | {s['spearman']:.3f}" if s else " | ")
        return (f"| {name} | {r['mcc']:.3f} | [{r['mcc_ci95'][0]:.3f}, {r['mcc_ci95'][1]:.3f}] "
                f"| {r['f1_bad']:.3f} | {r['f1_ok']:.3f} | {r['f1_mult']:.3f} | {corr} |")

    lines.append(line(result.get("name", "model"), result["model"]))
    lines += [line(name, r) for name, r in result["references"].items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- scoring a model


def labeled_segments(segments: Sequence[Segment], tokenizer: Any, max_length: int | None
                     ) -> tuple[list[LabeledPair], int]:
    """MT (and post-edit, when there is one) labelled with the reward model's tokenizer.

    Without a post-edit the revised side is the MT itself (no edit labels: no oracle).
    Pairs whose MT is truncated are dropped and counted.
    """
    from editalign.data.labeling import LabelingConfig, label_pairs
    from editalign.data.mlqe import load_template, render_prompt, segment_meta
    from editalign.data.pairs import EditPair

    template = load_template()
    pairs = [EditPair(prompt=render_prompt(s, template), original=s.mt,
                      revised=s.pe if s.pe is not None else s.mt,
                      id=f"{s.language_pair}-{s.split}-{s.index}",
                      meta={**segment_meta(s), "has_pe": s.pe is not None}) for s in segments]
    # space: the official tags are per space-separated word (docs/mlqe-pe.md)
    config = LabelingConfig(granularity="space", max_length=max_length, truncation="keep_end")
    labeled, _ = label_pairs(pairs, tokenizer, config)
    kept = [lp for lp in labeled if covered(lp)]
    return kept, len(pairs) - len(kept)


def mt_rewards(model: TokenRewardModel, labeled: Sequence[LabeledPair], pad_token_id: int,
               batch_size: int = 16) -> list[np.ndarray]:
    """Token rewards of each MT's response tokens (EOS included), the MTs batched
    shortest first (little padding per batch)."""
    from editalign.reward_sources import score_in_batches, token_rm_source

    model.eval()
    sides = [lp.original for lp in labeled]
    # read_at token whatever the model's: word scores read every token's reward; the
    # source passes response_start, so a whole-response model reads the whole MT.
    scored = score_in_batches(
        token_rm_source(model), [s.input_ids[:s.response_start] for s in sides],
        [s.input_ids[s.response_start:] for s in sides], pad_token_id, batch_size,
        order="length", device=next(model.parameters()).device)
    return [row.tokens.numpy() for row in scored]  # type: ignore[union-attr]  # dense


def sentences_from_rewards(labeled: Sequence[LabeledPair], rewards: Sequence[np.ndarray]
                           ) -> list[QESentence]:
    """Per-word scores (min over tokens) and the references' inputs for each MT."""
    out = []
    for lp, r in zip(labeled, rewards, strict=True):
        groups = token_words(lp.original_text, lp.original.offsets)
        bad = official_bad(lp)
        if bad is None:
            raise ValueError(f"{lp.id}: no MT word tags (a .tags file is needed for QE)")
        out.append(QESentence(word_scores=word_scores(r, groups), bad=bad,
                              reward_sum=float(np.sum(r)), hter=lp.meta.get("hter"),
                              edited=edited_words(lp) if lp.meta.get("has_pe") else None))
    return out


def page_records(labeled: Sequence[LabeledPair], rewards: Sequence[np.ndarray],
             sentences: Sequence[QESentence], threshold: float, eos: str) -> list[dict]:
    """The token page's records (as `editalign score` writes them): dotted = the model tags the word BAD, wavy = official BAD."""
    records = []
    for lp, r, s in zip(labeled, rewards, sentences, strict=True):
        side = lp.original
        tokens = [lp.original_text[a:b] if b > a else eos for a, b in side.offsets][: len(r)]
        groups = token_words(lp.original_text, side.offsets)
        model_bad = np.zeros(len(r), bool)
        official = np.zeros(len(r), bool)
        for w, g in enumerate(groups):
            for t in g:
                model_bad[t] |= bool(s.word_scores[w] <= threshold)
                official[t] |= bool(s.bad[w])
        records.append({"id": lp.id, "prompt": lp.prompt_text, "original": {
            "text": lp.original_text, "tokens": tokens,
            "rewards": [round(float(x), 6) for x in r],
            "labels": ["model BAD" if b else "equal" for b in model_bad],
            "human_error": [bool(x) for x in official[:-1]],
            "score_sum": float(np.sum(r)), "score_last": float(r[-1])}})
    return records
