"""The benchmark report: plots (matplotlib, Agg) and one self-contained ``report.html``.

``write_report(out, bench, results)`` is called by ``run_benchmark`` at the end of a run and
writes into ``out``:

- ``winrate.png``: each method's win rate against the initial policy with its 95% interval
  (the bootstrap interval of one seed; with several seeds the mean over seeds with the mean
  interval bounds, and each seed as a dot);
- ``curves.png``: what the trainers logged, for the first seed: PPO's reward and KL per
  iteration (``ppo_log.jsonl``) and the training loss of sft / dpo / figa / the reward
  models (``trainer_state.json``'s ``log_history``);
- ``report.html``: the results table, both plots (embedded as base64 PNGs), a few edit
  pairs rendered by :func:`editalign.data.preview.render_preview`, and, when a token reward
  model was trained, its token rewards on those pairs rendered by
  :func:`editalign.eval.token_html.render_html` (both embedded as ``srcdoc`` frames, so the page needs
  no other file).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from editalign.outputs import atomic_open, write_text

logger = logging.getLogger(__name__)

PAIRS_SHOWN = 6


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def winrate_plot(results: Sequence[dict[str, Any]]) -> bytes:
    """Bar per method (mean win rate over seeds) with the 95% interval as error bars."""
    plt = _plt()
    methods = list(dict.fromkeys(r["method"] for r in results))
    means, lows, highs = [], [], []
    for m in methods:
        rs = [r for r in results if r["method"] == m]
        mean = sum(r["win_rate"] for r in rs) / len(rs)
        means.append(mean)
        lows.append(mean - sum(r["ci_low"] for r in rs) / len(rs))
        highs.append(sum(r["ci_high"] for r in rs) / len(rs) - mean)
    fig, ax = plt.subplots(figsize=(1.3 * len(methods) + 2, 3.6))
    xs = range(len(methods))
    ax.bar(xs, means, yerr=[[max(v, 0) for v in lows], [max(v, 0) for v in highs]],
           capsize=6, color="#4c78a8", alpha=0.85)
    for i, m in enumerate(methods):
        seeds = [r["win_rate"] for r in results if r["method"] == m]
        if len(seeds) > 1:
            ax.plot([i] * len(seeds), seeds, "o", color="#222", ms=3)
    ax.axhline(0.5, color="#c00", ls="--", lw=1, label="tie with the initial policy")
    ax.set_xticks(list(xs), methods)
    ax.set_ylim(0, 1)
    ax.set_ylabel("win rate vs initial policy")
    ax.set_title("Win rate (gold judge, held-out prompts), 95% CI")
    ax.legend(loc="lower right", fontsize=8)
    data = _png(fig)
    plt.close(fig)
    return data


def read_curves(run_dir: Path) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """{series: {name: [(step, value)]}} from the trainers' logs under ``run_dir``."""
    curves: dict[str, dict[str, list[tuple[float, float]]]] = {}
    if not run_dir.is_dir():
        return curves
    for sub in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        ppo_log = sub / "ppo_log.jsonl"
        if ppo_log.is_file():
            rows = [json.loads(line) for line in ppo_log.read_text().splitlines()
                    if line.strip()]
            for key in ("reward", "kl"):
                points = [(i + 1.0, float(r[key])) for i, r in enumerate(rows)
                          if r.get(key) is not None]
                if points:
                    curves.setdefault(f"PPO {key}", {})[sub.name] = points
        state = sub / "trainer_state.json"
        if state.is_file():
            history = json.loads(state.read_text()).get("log_history", [])
            points = [(float(h["step"]), float(h["loss"])) for h in history
                      if "loss" in h and "step" in h]
            if points:
                curves.setdefault("training loss", {})[sub.name] = points
    return curves


def curves_plot(curves: dict[str, dict[str, list[tuple[float, float]]]]) -> bytes | None:
    if not curves:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(curves), figsize=(4.4 * len(curves), 3.4), squeeze=False)
    for ax, (series, lines) in zip(axes[0], curves.items(), strict=True):
        for name, points in lines.items():
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o" if len(xs) < 15 else None, ms=3, label=name)
        ax.set_title(series)
        ax.set_xlabel("iteration" if series.startswith("PPO") else "optimizer step")
        ax.legend(fontsize=8)
    data = _png(fig)
    plt.close(fig)
    return data


def _img(data: bytes, alt: str) -> str:
    return (f"<img alt='{html.escape(alt)}' style='max-width:100%' "
            f"src='data:image/png;base64,{base64.b64encode(data).decode()}'>")


def _frame(doc: str, height: int = 520) -> str:
    return (f"<iframe style='width:100%;height:{height}px;border:1px solid #ccc' "
            f"srcdoc=\"{html.escape(doc, quote=True)}\"></iframe>")


def _table(results: Sequence[dict[str, Any]]) -> str:
    from editalign.bench.results import summarize

    head = ("<tr><th>method</th><th>seeds</th><th>win rate</th><th>95% CI</th>"
            "<th>gold score</th><th>initial's score</th><th>KL</th><th>length</th>"
            "<th>wrong values / resp (initial's)</th><th>unwanted / resp (initial's)</th>"
            "<th>train s</th><th>eval s</th></tr>")
    rows = []
    for m in summarize(results):
        rs = [r for r in results if r["method"] == m["method"]]
        lo = sum(r["ci_low"] for r in rs) / len(rs)
        hi = sum(r["ci_high"] for r in rs) / len(rs)
        sd = f" ± {m['win_rate_sd']:.3f} sd" if len(rs) > 1 else ""
        kl = "n/a" if m["kl"] is None else f"{m['kl']:.2f}"
        train_s = sum(r.get("train_seconds", 0.0) for r in rs) / len(rs)
        eval_s = sum(r.get("eval_seconds", 0.0) for r in rs) / len(rs)
        errs = ["n/a", "n/a"]
        if "wrong_per_response_policy" in m:
            errs = [f"{m[f'{k}_policy']:.2f} ({m[f'{k}_reference']:.2f})"
                    for k in ("wrong_per_response", "unwanted_per_response")]
        rows.append(f"<tr><td>{html.escape(m['method'])}</td><td>{len(rs)}</td>"
                    f"<td>{m['win_rate']:.3f}{sd}</td><td>[{lo:.3f}, {hi:.3f}]</td>"
                    f"<td>{m['score_policy']:.3f}</td><td>{m['score_reference']:.3f}</td>"
                    f"<td>{kl}</td><td>{m['length_policy']:.1f}</td><td>{errs[0]}</td>"
                    f"<td>{errs[1]}</td><td>{train_s:.0f}</td>"
                    f"<td>{eval_s:.0f}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _pairs_preview(pairs_file: Path, tokenizer_dir: Path, n: int) -> str | None:
    from editalign.data.labeling import LabelingConfig, label_pairs
    from editalign.data.pairs import load_pairs
    from editalign.data.preview import render_preview
    from editalign.models import load_tokenizer

    pairs, _ = load_pairs(pairs_file)
    if not pairs:
        return None
    labeled, _ = label_pairs(pairs[:n], load_tokenizer(str(tokenizer_dir)), LabelingConfig())
    return render_preview(labeled, title=f"{min(n, len(pairs))} edit pairs (token labels)",
                          limit=n)


def _token_rewards(rm_dir: Path, pairs_file: Path, n: int) -> str | None:
    from editalign.data.arguments import DataArguments
    from editalign.eval.token_html import token_reward_page

    page = token_reward_page(rm_dir, DataArguments(data=str(pairs_file), limit=n))
    return page.html(f"token rewards: {rm_dir.name}")


def write_report(out: str | Path, bench: str | Path, results: Sequence[dict[str, Any]],
                 *, pairs_shown: int = PAIRS_SHOWN) -> Path:
    """Write ``winrate.png``, ``curves.png`` (when anything was logged) and ``report.html``."""
    from editalign.bench.results import HELD_OUT_PAIRS, results_table

    out, bench = Path(out), Path(bench)
    seeds = list(dict.fromkeys(r.get("seed", 0) for r in results))
    run_dir = out / f"seed{seeds[0]}" if len(seeds) > 1 else out
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>editalign benchmark</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;"
        "color:#222}table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px "
        "solid #ddd;text-align:right}td:first-child,th:first-child{text-align:left}"
        "pre{background:#f6f6f6;padding:.6em;overflow:auto}</style></head><body>",
        "<h1>editalign benchmark</h1>",
        f"<p>Bench: <code>{html.escape(str(bench))}</code>; seeds: {seeds}. Win rate of each "
        "method's policy against the initial policy on the held-out prompts (gold judge; "
        "win 1, tie 0.5), 95% bootstrap interval over prompts; KL to the initial policy on "
        "the policy's own samples; length in tokens; wall time per method.</p>",
        "<h2>Results</h2>", _table(results) if results else "<p>no results</p>",
        f"<details><summary>Markdown (results.md)</summary><pre>"
        f"{html.escape(results_table(results))}</pre></details>",
    ]
    if results:
        png = winrate_plot(results)
        _write_bytes(out / "winrate.png", png)
        parts += ["<h2>Win rate</h2>", _img(png, "win rate per method")]
    curves = read_curves(run_dir)
    png_curves = curves_plot(curves)
    if png_curves is not None:
        _write_bytes(out / "curves.png", png_curves)
        parts += [f"<h2>Training curves (seed {seeds[0] if seeds else 0})</h2>",
                  _img(png_curves, "training curves")]
    pairs_file = out / "pairs.edited.jsonl"
    if pairs_file.is_file() and (bench / "policy").is_dir():
        try:
            doc = _pairs_preview(pairs_file, bench / "policy", pairs_shown)
            if doc:
                parts += ["<h2>Edit pairs (the training data)</h2>",
                          "<p>The initial policy's samples and their minimal revisions; "
                          "deleted / substituted / added tokens highlighted.</p>", _frame(doc)]
        except Exception as exc:  # the report must not lose the results over a preview
            logger.warning("edit-pair preview failed: %s", exc)
        rm_dir = run_dir / "token-rm"
        held_out = out / HELD_OUT_PAIRS
        shown, where = (held_out, "held-out edit pairs (the initial policy's test samples, "
                        "revised)") if held_out.is_file() else (pairs_file, "training pairs")
        if (rm_dir / "reward_config.json").is_file():
            try:
                doc = _token_rewards(rm_dir, shown, pairs_shown)
                if doc:
                    parts += ["<h2>Token reward model</h2>",
                              "<p>The token-level reward model trained for ppo-token, on "
                              f"{where}.</p>", _frame(doc, 640)]
            except Exception as exc:
                logger.warning("token-reward rendering failed: %s", exc)
    parts.append("</body></html>")
    # Replaced whole (written beside, renamed over): the seed shards of one --out write it
    return write_text(out / "report.html", "\n".join(parts))


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)
