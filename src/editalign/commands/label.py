"""``editalign label``: tokenize edit pairs and label every response token; writes a
datasets directory, ``stats.json`` and ``preview.html`` (see docs/labels.md)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from editalign.commands.common import add_config_argument
from editalign.data.arguments import add_data_arguments

NAME = "label"
HELP = "tokenize edit pairs and label every token"
DESCRIPTION = ("Tokenize edit pairs and label every response token (equal/added/substituted/"
               "deleted); writes a datasets directory, stats.json and preview.html.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_argument(p)
    add_data_arguments(p, ["data", "preset", "field_map", "split", "limit", "strict"], help={
        "data": "pairs: .jsonl, .json, .parquet, .csv (optionally .gz) or a directory saved "
                "by datasets"})
    p.add_argument("--model", default="smollm2-135m",
                   help="tokenizer to label with: a registered name (smollm2-135m, tiny), a "
                   "local path or a cached HF id (default: %(default)s)")
    add_data_arguments(p, ["granularity", "max_length", "truncation", "chat_template"])
    p.add_argument("--preview-pairs", type=int, default=50)
    p.add_argument("--out", help="output directory")


def run(args: argparse.Namespace) -> int:
    if not args.data or not args.out:
        raise SystemExit("editalign label: --data and --out are required")
    # Before anything heavy is imported or loaded: a missing input or an output that must
    # not be replaced is said in a second, not after the tokenizer loaded and the work ran.
    if not Path(args.data).exists():
        raise FileNotFoundError(f"--data {args.data}: no such file or directory")
    from editalign.data.io import check_label_dir

    inputs = {"--data": args.data}
    check_label_dir(args.out, inputs)
    from editalign.data.io import write_labeled
    from editalign.data.labeling import LabelingConfig, check_labeled, label_pairs
    from editalign.data.pairs import DataError, load_pairs, parse_field_mapping
    from editalign.models import load_tokenizer

    fields = parse_field_mapping(args.field) if args.field else None
    started = time.perf_counter()
    pairs, report = load_pairs(args.data, preset=args.preset, fields=fields, strict=args.strict,
                               split=args.split, limit=args.limit)
    print(report.summary())
    if not pairs:
        skipped = ", ".join(f"{n} {r}" for r, n in report.skipped.most_common())
        raise DataError(f"no usable pair: read {report.rows_read} rows"
                        + (f", skipped all ({skipped})" if skipped else ""), source=args.data)
    config = LabelingConfig(granularity=args.granularity, max_length=args.max_length or None,
                            truncation=args.truncation, chat_template=args.chat_template)
    tokenizer = load_tokenizer(args.model)
    labeled, stats = label_pairs(pairs, tokenizer, config, strict=args.strict,
                                 progress=sys.stderr.isatty())
    # Nothing is written when no pair is usable; most pairs lost is said loudly, with the fix.
    warning = check_labeled(stats, config, args.data)
    from editalign.eval.qe import tag_agreement

    # Data with official word tags (MLQE-PE): how well the edit labels reproduce them.
    agreement = tag_agreement(labeled)
    extra = {"official_tag_agreement": agreement} if agreement else None
    write_labeled(args.out, labeled, stats, config=config, tokenizer=tokenizer,
                  model_name=args.model, load_report=report, preview_pairs=args.preview_pairs,
                  extra=extra, inputs=inputs)
    print(stats.summary())
    if agreement:
        print(f"agreement with the official MT word tags ({agreement['words']} words): "
              f"precision {agreement['precision']:.3f}, recall {agreement['recall']:.3f}, "
              f"MCC {agreement['mcc']:.3f}")
    print(f"wrote {len(labeled)} labelled pairs to {args.out} "
          f"({time.perf_counter() - started:.1f} s)")
    print(f"  stats:   {Path(args.out) / 'stats.json'}")
    print(f"  preview: {Path(args.out) / 'preview.html'}")
    if warning:
        print(f"editalign label: WARNING: {warning}", file=sys.stderr, flush=True)
    return 0
