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
import json
from pathlib import Path

from editalign.commands.common import add_config_argument
from editalign.data.arguments import DataArguments, add_data_arguments
from editalign.eval.token_html import token_reward_page

# `score` directories written before the output marker.
SCORE_LEGACY = (("rewards.jsonl", "metrics.json"),)


NAME = "score"
HELP = ("per-token rewards of a reward model on pairs, with an HTML view that colours every "
        "token by its reward")
DESCRIPTION = ("Score both responses of every pair with a trained reward model; writes "
               "rewards.jsonl, metrics.json and index.html.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_argument(p)
    p.add_argument("--reward-model", help="directory written by `editalign train token-rm|rm`")
    add_data_arguments(p, ["data", "preset", "limit", "max_length"], help={
        "data": "pairs file (any format `editalign label` reads) or a directory written by "
                "`editalign label` with the reward model's tokenizer",
        "limit": "score only the first N pairs"})
    p.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass")
    p.add_argument("--html-pairs", type=int, default=100,
                   help="pairs shown in index.html (all are in rewards.jsonl)")
    p.add_argument("--out", help="output directory")


def run(args: argparse.Namespace) -> int:
    # torch and the model code load only when the command runs: `editalign --help` stays fast.
    from editalign.data.jsonl import nan_to_none, write_jsonl

    if not args.reward_model or not args.data or not args.out:
        raise SystemExit("editalign score: --reward-model, --data and --out are required")
    from editalign.outputs import check_dir, mark_dir, write_text

    # Before the model loads: --out is new, empty or an earlier `score` output.
    out = check_dir(args.out, flag="--out", command="score", legacy=SCORE_LEGACY,
                    inputs={"--data": args.data, "--reward-model": args.reward_model})
    data = DataArguments(data=args.data, preset=args.preset, limit=args.limit,
                         max_length=args.max_length or None)
    page = token_reward_page(args.reward_model, data, batch_size=args.batch_size)
    # An undefined metric (e.g. AUROC without both classes) is NaN in memory and null in the
    # file: strict JSON has no NaN. Rewards themselves were checked finite when scored.
    metrics = nan_to_none(page.metrics)
    records = page.records
    mark_dir(out, "score")
    write_jsonl(out / "rewards.jsonl", records, allow_nan=False)
    write_text(out / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False))
    write_text(out / "index.html", page.html(f"editalign score: {args.reward_model}",
                                             pairs=args.html_pairs, metrics=metrics))
    out = Path(args.out)
    shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
    print(f"scored {len(records)} pairs: {shown}")
    print(f"  rewards: {out / 'rewards.jsonl'}\n  metrics: {out / 'metrics.json'}\n"
          f"  view:    {out / 'index.html'}")
    return 0


