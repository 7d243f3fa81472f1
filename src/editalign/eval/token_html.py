"""The page that colours every response token by its reward (``editalign score``, the bench
report and ``editalign eval qe`` draw it): green above 0, red below, stronger further from 0.

:func:`token_reward_page` is the one path from a saved reward model and pairs to that page
(``editalign score`` and the bench report); :func:`render_html` draws any records.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from editalign.data.align import LABEL_NAMES
from editalign.data.labeling import SIDES

if TYPE_CHECKING:
    from editalign.data.arguments import DataArguments
    from editalign.data.labeling import LabeledPair
    from editalign.eval.reward_metrics import PairRewards

def _token_texts(lp: LabeledPair, name: str, eos: str) -> list[str]:
    side = getattr(lp, name)
    text = lp.revised_text if name == "revised" else lp.original_text
    return [text[s:e] if e > s else eos for s, e in side.offsets]


def pair_record(lp: LabeledPair, scores: PairRewards, eos: str) -> dict[str, Any]:
    record: dict[str, Any] = {"id": lp.id, "prompt": lp.prompt_text}
    for name in SIDES:
        rewards = getattr(scores, f"{name}_rewards")
        labels = getattr(scores, f"{name}_labels")
        texts = _token_texts(lp, name, eos)[: len(rewards)]
        record[name] = {
            "text": lp.revised_text if name == "revised" else lp.original_text,
            "tokens": texts,
            "rewards": [round(float(r), 6) for r in rewards],
            "labels": [LABEL_NAMES[int(lab)] for lab in labels],
            "score_sum": float(np.sum(rewards)),
            "score_last": float(rewards[-1]),
        }
    if scores.human_bad is not None:
        record["original"]["human_error"] = [bool(h) for h in scores.human_bad]
    return record


def _colour(r: float, scale: float) -> str:
    a = min(abs(r) / scale, 1.0) * 0.85 if scale > 0 else 0.0
    rgb = "22,163,74" if r >= 0 else "220,38,38"
    return f"rgba({rgb},{a:.3f})"


def render_html(records: Sequence[dict[str, Any]], metrics: dict[str, Any], title: str,
                read_at: str, legend: str | None = None) -> str:
    """One page: the metrics, a legend, then every pair with its tokens coloured by reward.

    A record may hold only one side (``eval qe`` shows the MT alone); ``legend`` replaces
    the explanation of the dotted and wavy marks (HTML).
    """
    all_r = np.concatenate([np.abs(r[s]["rewards"]) for r in records for s in SIDES
                            if s in r]) if records else np.zeros(1)
    scale = float(np.quantile(all_r, 0.98)) or 1.0
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>"
                   for k, v in metrics.items() if isinstance(v, float))
    calib = metrics.get("calibration", {})
    rows += "".join(f"<tr><td>{html.escape(k)}</td><td>"
                    f"{'n/a' if v is None else format(v, '.4f')}</td></tr>"
                    for k, v in calib.items())
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}",
        ".resp{font-family:ui-monospace,monospace;white-space:pre-wrap;line-height:1.9;"
        "border:1px solid #ddd;padding:.6em;border-radius:4px}",
        ".t{border-radius:2px}.edit{border-bottom:2px dotted #333}",
        ".human{text-decoration:underline wavy #7c3aed}",
        "table{border-collapse:collapse}td{padding:2px 10px;border-bottom:1px solid #eee}",
        ".pair{margin:2em 0;border-top:2px solid #ccc;padding-top:1em}",
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{len(records)} pairs shown. Token colour: <span class='t' style='background:"
        f"{_colour(scale, scale)}'>reward &gt; 0</span> / <span class='t' style='background:"
        f"{_colour(-scale, scale)}'>reward &lt; 0</span>, opacity ∝ |reward| (full at "
        f"{scale:.3g}, the 98th percentile). "
        + (legend or "<span class='edit'>dotted</span>: changed by the edit (original: "
           "deleted/substituted; revised: added/substituted). <span class='human'>wavy</span>: "
           "inside a human error span.")
        + f" Hover a token for its reward. Reward read at: {html.escape(read_at)}.</p>",
        f"<details open><summary>metrics</summary><table>{rows}</table></details>",
    ]
    for rec in records:
        parts.append(f"<div class='pair'><h3>{html.escape(str(rec['id']))}</h3>")
        parts.append(f"<details><summary>prompt</summary><div class='resp'>"
                     f"{html.escape(rec['prompt'])}</div></details>")
        for name in ("original", "revised"):
            if name not in rec:
                continue
            side = rec[name]
            human = side.get("human_error", [])
            spans = []
            for i, (tok, r, lab) in enumerate(zip(side["tokens"], side["rewards"],
                                                  side["labels"], strict=True)):
                cls = ["t"]
                if lab != "equal":
                    cls.append("edit")
                if i < len(human) and human[i]:
                    cls.append("human")
                tip = f"reward {r:+.4f} · {lab}" + (" · human error" if "human" in cls else "")
                spans.append(f"<span class='{' '.join(cls)}' style='background:"
                             f"{_colour(r, scale)}' title='{html.escape(tip)}'>"
                             f"{html.escape(tok)}</span>")
            parts.append(f"<p><b>{name}</b> — sum {side['score_sum']:+.3f}, last "
                         f"{side['score_last']:+.3f}</p><div class='resp'>{''.join(spans)}</div>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


@dataclass
class TokenRewardPage:
    """A reward model's token rewards on pairs: the records the page shows, the metrics."""

    records: list[dict[str, Any]]  # one pair_record per pair
    metrics: dict[str, Any]  # reward_metrics over every pair (NaN where undefined)
    read_at: str  # where the reward model reads its reward (the page says so)

    def html(self, title: str, *, pairs: int | None = None,
             metrics: dict[str, Any] | None = None) -> str:
        """The page of the first ``pairs`` records (all by default); ``metrics`` in place of
        the page's own (``editalign score`` shows the ones it wrote, NaN as n/a)."""
        return render_html(self.records[:pairs], self.metrics if metrics is None else metrics,
                           title, self.read_at)


def token_reward_page(reward_model: str | Path, data: DataArguments, *,
                      batch_size: int = 8) -> TokenRewardPage:
    """Score the pairs ``data`` names with the reward model saved in ``reward_model`` (its
    own tokenizer), both sides of each pair, ``batch_size`` pairs per forward pass."""
    # torch loads here, when a page is made: `editalign --help` imports this module.
    from editalign.eval.pair_scoring import score_labeled
    from editalign.eval.reward_metrics import reward_metrics
    from editalign.reward_model import TokenRewardModel

    tokenizer = TokenRewardModel.load_tokenizer(str(reward_model))
    model = TokenRewardModel.from_pretrained(str(reward_model), tokenizer=tokenizer)
    pairs, _ = data.load(tokenizer)
    scores = score_labeled(model, pairs, tokenizer.pad_token_id, batch_size)
    eos = tokenizer.eos_token or ""
    return TokenRewardPage([pair_record(lp, s, eos) for lp, s in zip(pairs, scores, strict=True)],
                           reward_metrics(scores), model.reward_config.read_at)
