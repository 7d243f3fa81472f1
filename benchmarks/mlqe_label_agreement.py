"""Do editalign's edit labels reproduce MLQE-PE's official MT word tags? (issue 14, item 2)

For each language pair's train split (../shared/data/mlqe-pe/PAIR-train.tar.gz, read by the
``mlqe-pe`` preset), the pairs are labelled exactly as ``editalign label --preset mlqe-pe
--granularity word`` does (SmolLM2-135M tokenizer), the token labels are mapped back to the
MT's space-separated words through the tokens' character offsets (a word is BAD when any of
its tokens is deleted or substituted), and compared with the official tags (TER alignment,
tercom). The same with ``--granularity space`` (words = space-separated words, MLQE-PE's
own unit). Beside them, as explanations of the difference:

- ``token``: the same at token granularity (sub-word Levenshtein);
- ``whitespace``: a plain Levenshtein over the space-separated words (no tokenizer);
- ``whitespace, case-insensitive``: the same ignoring case (tercom's default is
  case-insensitive matching, so a case-only change is OK in the official tags);

and the disagreeing words by kind, with example sentences.

    python benchmarks/mlqe_label_agreement.py [--pairs en-de,ro-en,et-en,ru-en] [--limit N]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np
from rapidfuzz.distance import Levenshtein

from _common import RESULTS, write_result
from editalign.data.labeling import LabelingConfig, label_pairs
from editalign.data.pairs import load_pairs
from editalign.eval.qe import edited_words, official_bad, tag_agreement, tag_metrics
from editalign.models import load_tokenizer

DATA = "../shared/data/mlqe-pe/{pair}-train.tar.gz"


def whitespace_bad(mt: str, pe: str, lower: bool = False) -> np.ndarray:
    """MT words deleted or substituted by a word-level Levenshtein alignment."""
    a, b = mt.split(), pe.split()
    if lower:
        a, b = [w.lower() for w in a], [w.lower() for w in b]
    bad = np.zeros(len(a), bool)
    for op in Levenshtein.editops(a, b):
        if op.tag in ("delete", "replace"):
            bad[op.src_pos] = True
    return bad


def disagreements(pairs, labeled) -> dict:
    """Kinds of words where the edit labels and the official tags differ, with examples."""
    kinds: Counter[str] = Counter()
    examples: list[dict] = []
    by_id = {p.id: p for p in pairs}
    for lp in labeled:
        official, edited = official_bad(lp), edited_words(lp)
        if official is None or len(official) != len(edited):
            continue
        pair = by_id[lp.id]
        mt_words, pe_words = pair.original.split(), pair.revised.split()
        pe_set, pe_lower = set(pe_words), {w.lower() for w in pe_words}
        ws = whitespace_bad(pair.original, pair.revised)
        for w in np.flatnonzero(official != edited):
            word = mt_words[w]
            if edited[w]:  # edit BAD, official OK
                if ws[w] and word not in pe_set and word.lower() in pe_lower:
                    kinds["edit BAD, official OK: case-only change (tercom ignores case)"] += 1
                elif ws[w] and word in pe_set:
                    kinds["edit BAD, official OK: the word is in the PE elsewhere (TER shift "
                          "matched it)"] += 1
                elif not ws[w]:
                    kinds["edit BAD, official OK: whitespace Levenshtein agrees with the tag "
                          "(sub-word pre-tokens aligned differently)"] += 1
                else:
                    kinds["edit BAD, official OK: other"] += 1
            elif ws[w]:
                kinds["official BAD, edit OK: whitespace Levenshtein also BAD (pre-token "
                      "split of a word)"] += 1
            else:
                kinds["official BAD, edit OK: Levenshtein keeps the word in place, TER "
                      "tags it (shifted block or a different alignment)"] += 1
        if len(examples) < 6 and (official != edited).any() and len(mt_words) <= 25:
            examples.append({
                "id": lp.id, "mt": pair.original, "pe": pair.revised,
                "official_bad": [mt_words[i] for i in np.flatnonzero(official)],
                "edit_bad": [mt_words[i] for i in np.flatnonzero(edited)]})
    return {"kinds": dict(kinds.most_common()), "examples": examples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="en-de,ro-en,et-en,ru-en")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--limit", type=int, help="only the first N segments per pair")
    args = ap.parse_args()
    tokenizer = load_tokenizer(args.model)
    result: dict = {"settings": {**vars(args), "split": "train", "data": DATA}, "pairs": {}}
    for lang in args.pairs.split(","):
        start = time.perf_counter()
        pairs, report = load_pairs(DATA.format(pair=lang), preset="mlqe-pe", limit=args.limit)
        row: dict = {"segments": report.rows_read}
        for granularity in ("word", "space", "token"):
            labeled, _ = label_pairs(pairs, tokenizer, LabelingConfig(
                granularity=granularity, max_length=None))
            row[granularity] = tag_agreement(labeled)
            if granularity != "token":
                row[f"disagreements_{granularity}"] = disagreements(pairs, labeled)
        truth = np.concatenate([[t == "BAD" for t in p.meta["mt_tags"]] for p in pairs])
        for name, lower in (("whitespace", False), ("whitespace, case-insensitive", True)):
            pred = np.concatenate([whitespace_bad(p.original, p.revised, lower) for p in pairs])
            m = tag_metrics(truth, pred)
            row[name] = {"precision": m["precision_bad"], "recall": m["recall_bad"],
                         "mcc": m["mcc"], "words": len(truth)}
        row["seconds"] = time.perf_counter() - start
        result["pairs"][lang] = row
        w, sp = row["word"], row["space"]
        print(f"{lang}: {w['words']} MT words, official BAD share {w['bad_official'] / w['words']:.3f}"
              f"; word labels P {w['precision']:.3f} R {w['recall']:.3f} MCC {w['mcc']:.3f}; "
              f"space labels P {sp['precision']:.3f} R {sp['recall']:.3f} MCC {sp['mcc']:.3f}; "
              f"whitespace MCC {row['whitespace']['mcc']:.3f}, case-insensitive "
              f"{row['whitespace, case-insensitive']['mcc']:.3f}; token MCC "
              f"{row['token']['mcc']:.3f} ({row['seconds']:.0f} s)", flush=True)
    write_result("mlqe_label_agreement", result)
    lines = ["| pair | MT words | official BAD share | `word`: precision | recall | MCC | "
             "`space`: precision | recall | MCC | "
             "whitespace Levenshtein MCC | same, case-insensitive | `token` MCC |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for lang, row in result["pairs"].items():
        w, sp = row["word"], row["space"]
        lines.append(f"| {lang} | {w['words']} | {w['bad_official'] / w['words']:.3f} | "
                     f"{w['precision']:.3f} | {w['recall']:.3f} | {w['mcc']:.3f} | "
                     f"{sp['precision']:.3f} | {sp['recall']:.3f} | {sp['mcc']:.3f} | "
                     f"{row['whitespace']['mcc']:.3f} | "
                     f"{row['whitespace, case-insensitive']['mcc']:.3f} | "
                     f"{row['token']['mcc']:.3f} |")
    (RESULTS / "mlqe_label_agreement.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
