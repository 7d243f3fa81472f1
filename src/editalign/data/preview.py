"""A self-contained HTML page that shows labelled pairs token by token.

The first thing to look at after labelling: are the highlighted tokens the ones that were
actually wrong? Deleted tokens of the original are red and struck through, substituted ones
orange; added tokens of the revision green, substituted ones teal. Human error spans, when
the data has them (QA-Feedback), are underlined on the original.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

from editalign.data.align import LABEL_NAMES, Label
from editalign.data.labeling import LabeledPair, TokenizedSide

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.4em} .stats{background:#f6f6f6;padding:.6em 1em;border-radius:6px;
white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:.85em}
.pair{border:1px solid #ddd;border-radius:6px;margin:1.2em 0;padding:.6em 1em}
.pair h2{font-size:1em;margin:.2em 0} .meta{color:#666;font-size:.85em}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:1em}
.resp{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:.85em;line-height:1.6}
details{margin:.4em 0} details pre{white-space:pre-wrap;font-size:.8em;max-height:18em;
overflow:auto;background:#fafafa;padding:.5em}
.t{border-radius:2px} .deleted{background:#ffd6d6;text-decoration:line-through;color:#a00}
.substituted-o{background:#ffe3b8;color:#8a4b00} .added{background:#c9f2c9;color:#064}
.substituted-r{background:#c3ece8;color:#055} .eos{color:#999;font-size:.75em}
.human{border-bottom:2px dotted #c00}
.legend span{margin-right:1em;padding:0 .3em}
"""


def _token_html(side: TokenizedSide, text: str, which: str,
                human_spans: Sequence[tuple[int, int, str]] = ()) -> str:
    """One span per run of tokens that share a label and human mark (small, readable HTML)."""
    runs: list[tuple[str, str, str]] = []  # (classes, title, text)
    for (start, end), label in zip(side.offsets, side.response_labels, strict=False):
        if end <= start:
            runs.append(("eos", "", "⟨eos⟩"))
            continue
        classes = ["t"]
        if label == Label.DELETED:
            classes.append("deleted")
        elif label == Label.ADDED:
            classes.append("added")
        elif label == Label.SUBSTITUTED:
            classes.append("substituted-o" if which == "original" else "substituted-r")
        hits = sorted({kind for s, e, kind in human_spans if s < end and start < e})
        title = LABEL_NAMES.get(label, "")
        if hits:
            classes.append("human")
            title += " · human: " + ", ".join(hits)
        key = (" ".join(classes), title)
        if runs and runs[-1][:2] == key:
            runs[-1] = (*key, runs[-1][2] + text[start:end])
        else:
            runs.append((*key, text[start:end]))
    return "".join(
        f'<span class="{classes}" title="{html.escape(title)}">{html.escape(piece)}</span>'
        for classes, title, piece in runs)


def _human_spans(meta: dict[str, Any]) -> list[tuple[int, int, str]]:
    return [(int(s["start"]), int(s["end"]), str(s.get("type", "error")))
            for s in meta.get("error_spans", [])]


def render_preview(labeled: Sequence[LabeledPair], *, title: str = "editalign label preview",
                   stats: dict[str, Any] | None = None, summary: str | None = None,
                   limit: int = 50) -> str:
    """HTML for the first ``limit`` pairs that have an edit (then the unedited ones)."""
    ordered = sorted(labeled, key=lambda lp: lp.edit_distance == 0)[:limit]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        '<p class="legend"><span class="deleted">deleted</span>'
        '<span class="substituted-o">substituted (original)</span>'
        '<span class="added">added</span><span class="substituted-r">substituted (revised)</span>'
        '<span class="human">human error span</span></p>',
    ]
    if summary:
        parts.append(f'<div class="stats">{html.escape(summary)}</div>')
    if stats:
        parts.append("<details><summary>stats.json</summary><pre>"
                     f"{html.escape(json.dumps(stats, indent=2))}</pre></details>")
    parts.append(f"<p>Showing {len(ordered)} of {len(labeled)} pairs.</p>")
    for lp in ordered:
        meta = {k: v for k, v in lp.meta.items() if k not in ("error_spans",)}
        n_o, n_r = len(lp.original.response_ids), len(lp.revised.response_ids)
        parts.append(
            f'<div class="pair"><h2>{html.escape(lp.id)}</h2>'
            f'<div class="meta">edit distance {lp.edit_distance} tokens · edit ratio '
            f"{lp.edit_ratio:.3f} · original {n_o} tokens · revised {n_r} tokens"
            f"{' · truncated' if lp.truncated else ''}</div>"
            f"<details><summary>prompt</summary><pre>{html.escape(lp.prompt_text)}</pre></details>"
            '<div class="cols"><div><b>original</b><div class="resp">'
            f"{_token_html(lp.original, lp.original_text, 'original', _human_spans(lp.meta))}"
            '</div></div><div><b>revised</b><div class="resp">'
            f"{_token_html(lp.revised, lp.revised_text, 'revised')}</div></div></div>"
        )
        if meta:
            shown = json.dumps(meta, ensure_ascii=False)[:2000]
            parts.append(f"<details><summary>meta</summary><pre>{html.escape(shown)}"
                         "</pre></details>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)
