"""Labelling throughput: editalign's alignment vs difflib, with and without tokenization.

Pairs are built from the bundled QA-Feedback human edits tokenized with SmolLM2's
tokenizer: three random pairs are concatenated into one ~300-token pair, so the edits have
real positions and sizes. Runs pinned to one CPU core.

    python benchmarks/label_speed.py [--pairs 10000] [--difflib-pairs 1000]

Targets (issue 2): alignment >= 20x difflib; 10,000 pairs of ~300 tokens labelled
(tokenization excluded) in under 10 s on one core.
"""

from __future__ import annotations

import argparse
import difflib
import gc
import os
import random
import statistics
import time

# One core for the Rust tokenizer too; must be set before tokenizers starts its pool.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from rapidfuzz.distance import Levenshtein

from _common import write_result
from editalign import Label, align
from editalign.commands.demo import DEMO_DATA, bundled_data
from editalign.data.labeling import LabelingConfig, label_pairs
from editalign.data.pairs import load_pairs
from editalign.models import load_tokenizer


def difflib_labels(original: list[int], revised: list[int]) -> tuple[list[int], list[int]]:
    """The same labels from difflib's opcodes (the baseline people reach for first)."""
    o = [Label.EQUAL.value] * len(original)
    r = [Label.EQUAL.value] * len(revised)
    matcher = difflib.SequenceMatcher(None, original, revised, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "replace":
            o[i1:i2] = [Label.SUBSTITUTED.value] * (i2 - i1)
            r[j1:j2] = [Label.SUBSTITUTED.value] * (j2 - j1)
        elif tag == "delete":
            o[i1:i2] = [Label.DELETED.value] * (i2 - i1)
        elif tag == "insert":
            r[j1:j2] = [Label.ADDED.value] * (j2 - j1)
    return o, r


def best_of(fn, repeats: int = 3) -> float:
    """Best wall time of ``repeats`` runs, with the garbage collector off (as timeit does)."""
    times = []
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        finally:
            gc.enable()
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--difflib-pairs", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    pairs, _ = load_pairs(bundled_data(DEMO_DATA), preset="qa-feedback")
    tokenizer = load_tokenizer("smollm2-135m")
    base = [(tokenizer(p.original, add_special_tokens=False)["input_ids"],
             tokenizer(p.revised, add_special_tokens=False)["input_ids"]) for p in pairs]
    rng = random.Random(0)
    lists = []
    for _ in range(args.pairs):
        picks = rng.sample(base, 3)
        lists.append(([t for o, _ in picks for t in o], [t for _, r in picks for t in r]))
    tokens = sum(len(o) + len(r) for o, r in lists)
    mean_len = statistics.mean((len(o) + len(r)) / 2 for o, r in lists)

    align_s = best_of(lambda: [align(o, r) for o, r in lists], args.repeats)
    sub = lists[: args.difflib_pairs]
    sub_tokens = sum(len(o) + len(r) for o, r in sub)
    align_sub_s = best_of(lambda: [align(o, r) for o, r in sub], args.repeats)
    difflib_sub_s = best_of(lambda: [difflib_labels(o, r) for o, r in sub], args.repeats)
    # The edit operations alone, without filling labels: the libraries' own work.
    ops_s = best_of(lambda: [Levenshtein.opcodes(o, r) for o, r in sub], args.repeats)
    difflib_ops_s = best_of(
        lambda: [difflib.SequenceMatcher(None, o, r, autojunk=False).get_opcodes()
                 for o, r in sub], args.repeats)
    lev_edits = statistics.mean(align(o, r).distance for o, r in sub)
    difflib_edits = statistics.mean(
        sum(x != 0 for x in difflib_labels(o, r)[1]) + sum(x == 3 for x in difflib_labels(o, r)[0])
        for o, r in sub)

    # End to end, tokenization included: the real QA-Feedback pairs (prompt with passages).
    config = LabelingConfig(max_length=None)
    e2e_pairs = pairs * 4
    e2e_s = best_of(lambda: label_pairs(e2e_pairs, tokenizer, config), args.repeats)
    labeled, _ = label_pairs(pairs, tokenizer, config)
    e2e_tokens = 4 * sum(len(lp.original.input_ids) + len(lp.revised.input_ids)
                         for lp in labeled)

    result = {
        "setup": {"pairs": args.pairs, "mean_response_tokens": round(mean_len, 1),
                  "tokenizer": "smollm2-135m", "cpu_cores": 1, "repeats": args.repeats,
                  "timing": "best of repeats, time.perf_counter"},
        "alignment_only": {
            "seconds": align_s, "pairs_per_s": args.pairs / align_s,
            "tokens_per_s": tokens / align_s,
            "target_seconds_for_10k": 10.0,
            "meets_target": args.pairs >= 10_000 and align_s < 10.0,
        },
        "vs_difflib": {
            "pairs": len(sub),
            "editalign_pairs_per_s": len(sub) / align_sub_s,
            "difflib_pairs_per_s": len(sub) / difflib_sub_s,
            "editalign_tokens_per_s": sub_tokens / align_sub_s,
            "difflib_tokens_per_s": sub_tokens / difflib_sub_s,
            "labels_speedup": difflib_sub_s / align_sub_s,
            "edit_operations_speedup": difflib_ops_s / ops_s,
            "rapidfuzz_opcodes_us_per_pair": ops_s / len(sub) * 1e6,
            "difflib_opcodes_us_per_pair": difflib_ops_s / len(sub) * 1e6,
            "target_speedup": 20.0,
            "meets_target_labels": difflib_sub_s / align_sub_s >= 20.0,
            "meets_target_edit_operations": difflib_ops_s / ops_s >= 20.0,
            "mean_changed_tokens_levenshtein": lev_edits,
            "mean_changed_tokens_difflib": difflib_edits,
        },
        "with_tokenization": {
            "pairs": len(e2e_pairs), "seconds": e2e_s,
            "pairs_per_s": len(e2e_pairs) / e2e_s, "tokens_per_s": e2e_tokens / e2e_s,
            "note": "QA-Feedback pairs with the passages in the prompt; full label_pairs "
                    "(prompt rendering, tokenization of both sides, alignment, stats)",
        },
    }
    write_result("label_speed", result)
    a, v, t = result["alignment_only"], result["vs_difflib"], result["with_tokenization"]
    print(f"alignment: {args.pairs} pairs of ~{mean_len:.0f} tokens in {a['seconds']:.2f} s "
          f"({a['pairs_per_s']:.0f} pairs/s, {a['tokens_per_s'] / 1e6:.2f} M tokens/s)")
    print(f"vs difflib on {len(sub)} pairs: labels {v['labels_speedup']:.1f}x faster, "
          f"edit operations alone {v['edit_operations_speedup']:.1f}x faster")
    print(f"with tokenization: {t['pairs_per_s']:.0f} pairs/s, "
          f"{t['tokens_per_s'] / 1e3:.0f} k tokens/s")


if __name__ == "__main__":
    main()
