"""Does a minimal edit find the errors people mark? (QA-Feedback, issue 2 item 7)

Labels the 300 bundled QA-Feedback pairs with SmolLM2's tokenizer at token and word
granularity and measures how well the original's deleted/substituted tokens cover the
human error spans (token-level precision, recall, F1; recall per error type). A random
flagger with the same flag rate is the reference: its expected precision is the share of
human-bad tokens and its expected recall the share of flagged tokens.

    python benchmarks/qa_feedback_coverage.py
"""

from __future__ import annotations

from _common import RESULTS, write_result
from editalign.commands.demo import DEMO_DATA, bundled_data
from editalign.data.labeling import LabelingConfig, label_pairs
from editalign.data.pairs import load_pairs
from editalign.eval.spans import edit_label_agreement
from editalign.models import load_tokenizer


def main() -> None:
    pairs, report = load_pairs(bundled_data(DEMO_DATA), preset="qa-feedback")
    tokenizer = load_tokenizer("smollm2-135m")
    rows = {}
    for granularity in ("token", "word"):
        labeled, _ = label_pairs(pairs, tokenizer,
                                 LabelingConfig(granularity=granularity, max_length=None))
        rows[granularity] = edit_label_agreement(labeled).to_dict()
    result = {"data": "QA-Feedback (300 bundled dev examples)", "tokenizer": "smollm2-135m",
              "pairs": report.kept, "agreement": rows}
    write_result("qa_feedback_coverage", result)

    lines = ["| granularity | precision | recall | F1 | random precision | random recall |",
             "|---|---|---|---|---|---|"]
    for g, a in rows.items():
        lines.append(f"| {g} | {a['precision']:.3f} | {a['recall']:.3f} | {a['f1']:.3f} | "
                     f"{a['human_bad_rate']:.3f} | {a['flagged_rate']:.3f} |")
    types = sorted(rows["token"]["recall_by_error_type"])
    lines += ["", "| error type | human-bad tokens | recall (token) | recall (word) |",
              "|---|---|---|---|"]
    for t in types:
        tok, word = rows["token"]["recall_by_error_type"][t], rows["word"]["recall_by_error_type"][t]
        lines.append(f"| {t} | {tok['tokens']} | {tok['recall']:.3f} | {word['recall']:.3f} |")
    table = "\n".join(lines)
    (RESULTS / "qa_feedback_coverage.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
