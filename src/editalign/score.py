"""``editalign score``: per-token rewards of a trained reward model, and a page to read them.

    editalign score --reward-model DIR --data pairs.jsonl --out scores/

writes ``scores/rewards.jsonl`` (one line per pair: for each side the response tokens, their
rewards, edit labels and, for QA-Feedback, which original tokens people marked),
``scores/metrics.json`` (pairwise accuracy, token AUROC/F1, calibration; see
:mod:`editalign.eval.reward_metrics`) and ``scores/index.html``, where every token is
coloured by its reward (green above 0, red below, stronger further from 0): the picture
that tells whether a token-level reward model puts its blame where the edit did.
"""

from __future__ import annotations

import argparse
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from editalign.data.align import LABEL_NAMES
from editalign.data.labeling import SIDES

# torch and the model code load only when a command runs, so `editalign --help` stays fast.
if TYPE_CHECKING:
    from editalign.data.labeling import LabeledPair
    from editalign.eval.reward_metrics import PairRewards
    from editalign.reward_model import TokenRewardModel



def add_score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file whose keys are any of these options "
                   "(dashes or underscores); flags given on the command line win")
    p.add_argument("--reward-model", help="directory written by `editalign train token-rm|rm`")
    p.add_argument("--data", help="pairs file (any format `editalign label` reads) or a "
                   "directory written by `editalign label` with the reward model's tokenizer")
    p.add_argument("--preset", choices=["default", "spa", "qa-feedback", "preference"],
                   help="field layout of the data (auto-detected when omitted)")
    p.add_argument("--limit", type=int, help="score only the first N pairs")
    p.add_argument("--max-length", type=int, default=1024,
                   help="longest prompt+response+EOS in tokens; 0 for no limit")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass")
    p.add_argument("--html-pairs", type=int, default=100,
                   help="pairs shown in index.html (all are in rewards.jsonl)")
    p.add_argument("--out", help="output directory")


def score_labeled(model: TokenRewardModel, pairs: Sequence[LabeledPair], pad_token_id: int,
                  batch_size: int = 8) -> list[PairRewards]:
    """Token rewards of both sides of every pair (response tokens, final EOS included)."""
    import torch

    from editalign.train.reward import PairDataset, RewardPairCollator, batch_pair_rewards

    model.eval()
    device = next(model.parameters()).device
    collate = RewardPairCollator(pad_token_id=pad_token_id)
    dataset = PairDataset(pairs)
    out: list[PairRewards] = []
    for start in range(0, len(pairs), batch_size):
        chunk = [dataset[i] for i in range(start, min(start + batch_size, len(pairs)))]
        batch = collate(chunk)
        with torch.no_grad():
            res = model(input_ids=batch["input_ids"].to(device),
                        attention_mask=batch["attention_mask"].to(device))
        out += batch_pair_rewards(res.logits, res.rewards, batch["edit_labels"],
                                  pairs[start:start + len(chunk)])
    return out


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
                read_at: str) -> str:
    """One page: the metrics, a legend, then every pair with its tokens coloured by reward."""
    all_r = np.concatenate([np.abs(r[s]["rewards"]) for r in records for s in SIDES]) \
        if records else np.zeros(1)
    scale = float(np.quantile(all_r, 0.98)) or 1.0
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>"
                   for k, v in metrics.items() if isinstance(v, float))
    calib = metrics.get("calibration", {})
    rows += "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>"
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
        f"{scale:.3g}, the 98th percentile). <span class='edit'>dotted</span>: changed by the "
        "edit (original: deleted/substituted; revised: added/substituted). "
        "<span class='human'>wavy</span>: inside a human error span. Hover a token for its "
        f"reward. Reward read at: {html.escape(read_at)}.</p>",
        f"<details open><summary>metrics</summary><table>{rows}</table></details>",
    ]
    for rec in records:
        parts.append(f"<div class='pair'><h3>{html.escape(str(rec['id']))}</h3>")
        parts.append(f"<details><summary>prompt</summary><div class='resp'>"
                     f"{html.escape(rec['prompt'])}</div></details>")
        for name in ("original", "revised"):
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


def cmd_score(args: argparse.Namespace) -> int:
    from editalign.eval.reward_metrics import reward_metrics
    from editalign.reward_model import TokenRewardModel
    from editalign.train.common import DataArguments

    if not args.reward_model or not args.data or not args.out:
        raise SystemExit("editalign score: --reward-model, --data and --out are required")
    tokenizer = TokenRewardModel.load_tokenizer(args.reward_model)
    model = TokenRewardModel.from_pretrained(args.reward_model, tokenizer=tokenizer)
    data = DataArguments(data=args.data, preset=args.preset, limit=args.limit,
                         max_length=args.max_length or None)
    pairs, _ = data.load(tokenizer)
    scores = score_labeled(model, pairs, tokenizer.pad_token_id, args.batch_size)
    metrics = reward_metrics(scores)
    eos = tokenizer.eos_token or ""
    records = [pair_record(lp, s, eos) for lp, s in zip(pairs, scores, strict=True)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "rewards.jsonl").open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "index.html").write_text(
        render_html(records[: args.html_pairs], metrics,
                    f"editalign score: {args.reward_model}", model.reward_config.read_at),
        encoding="utf-8")
    shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
    print(f"scored {len(records)} pairs: {shown}")
    print(f"  rewards: {out / 'rewards.jsonl'}\n  metrics: {out / 'metrics.json'}\n"
          f"  view:    {out / 'index.html'}")
    return 0


