"""The ``editalign`` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import yaml

logger = logging.getLogger("editalign")

DEMO_DATA = "qa-feedback-300.json.gz"


def bundled_data(name: str) -> Path:
    """Path of a data file shipped inside the package (see resources/NOTICE.md)."""
    return Path(str(resources.files("editalign") / "resources" / name))


def _add_label_args(p: argparse.ArgumentParser) -> None:
    from editalign.data.labeling import CHAT_TEMPLATE_MODES, GRANULARITIES, TRUNCATIONS

    p.add_argument("--config", help="YAML file whose keys are any of these options "
                   "(dashes or underscores); flags given on the command line win")
    p.add_argument("--data", help="pairs: .jsonl, .json, .parquet, .csv (optionally .gz) or a "
                   "directory saved by datasets")
    p.add_argument("--preset", choices=["default", "spa", "qa-feedback", "preference", "mlqe-pe"],
                   help="field layout of the data (auto-detected when omitted)")
    p.add_argument("--field", action="append", default=[], metavar="KEY=COLUMN",
                   help="explicit field mapping, e.g. --field prompt=question "
                   "--field original=answer --field revised=fixed.answer (dotted paths reach "
                   "into nested objects); repeatable")
    p.add_argument("--split", help="split of a saved DatasetDict (default: train)")
    p.add_argument("--limit", type=int, help="use only the first N rows")
    p.add_argument("--strict", action="store_true",
                   help="fail on the first unusable row instead of skipping and counting it")
    p.add_argument("--model", default="smollm2-135m",
                   help="tokenizer to label with: a registered name (smollm2-135m, tiny), a "
                   "local path or a cached HF id (default: %(default)s)")
    p.add_argument("--granularity", choices=GRANULARITIES, default="token")
    p.add_argument("--max-length", type=int, default=1024,
                   help="longest prompt+response+EOS in tokens; 0 for no limit")
    p.add_argument("--truncation", choices=TRUNCATIONS, default="keep_start")
    p.add_argument("--chat-template", choices=CHAT_TEMPLATE_MODES, default="auto")
    p.add_argument("--preview-pairs", type=int, default=50)
    p.add_argument("--out", help="output directory")


def _parse_with_config(parser: argparse.ArgumentParser,
                       commands: dict[str, argparse.ArgumentParser],
                       argv: Sequence[str]) -> argparse.Namespace:
    """Parse argv; values from ``--config x.yaml`` become defaults the command line overrides."""
    args = parser.parse_args(argv)
    if not getattr(args, "config", None):
        return args
    with open(args.config, encoding="utf-8") as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        parser.error(f"{args.config}: expected a mapping of option names to values")
    sub = commands[args.command]
    known = {action.dest for action in sub._actions}
    defaults = {}
    for key, value in values.items():
        dest = key.replace("-", "_")
        if dest not in known or dest in ("help", "config"):
            parser.error(f"{args.config}: unknown option {key!r}; allowed: "
                         f"{', '.join(sorted(known - {'help', 'config'}))}")
        defaults[dest] = value
    sub.set_defaults(**defaults)
    return parser.parse_args(argv)


def cmd_label(args: argparse.Namespace) -> int:
    from editalign.data.io import write_labeled
    from editalign.data.labeling import LabelingConfig, label_pairs
    from editalign.data.pairs import load_pairs, parse_field_mapping
    from editalign.models import load_tokenizer

    if not args.data or not args.out:
        raise SystemExit("editalign label: --data and --out are required")
    fields = parse_field_mapping(args.field) if args.field else None
    started = time.perf_counter()
    pairs, report = load_pairs(args.data, preset=args.preset, fields=fields, strict=args.strict,
                               split=args.split, limit=args.limit)
    print(report.summary())
    config = LabelingConfig(granularity=args.granularity, max_length=args.max_length or None,
                            truncation=args.truncation, chat_template=args.chat_template)
    tokenizer = load_tokenizer(args.model)
    labeled, stats = label_pairs(pairs, tokenizer, config, strict=args.strict,
                                 progress=sys.stderr.isatty())
    from editalign.eval.qe import tag_agreement

    # Data with official word tags (MLQE-PE): how well the edit labels reproduce them.
    agreement = tag_agreement(labeled)
    extra = {"official_tag_agreement": agreement} if agreement else None
    write_labeled(args.out, labeled, stats, config=config, tokenizer=tokenizer,
                  model_name=args.model, load_report=report, preview_pairs=args.preview_pairs,
                  extra=extra)
    print(stats.summary())
    if agreement:
        print(f"agreement with the official MT word tags ({agreement['words']} words): "
              f"precision {agreement['precision']:.3f}, recall {agreement['recall']:.3f}, "
              f"MCC {agreement['mcc']:.3f}")
    print(f"wrote {len(labeled)} labelled pairs to {args.out} "
          f"({time.perf_counter() - started:.1f} s)")
    print(f"  stats:   {Path(args.out) / 'stats.json'}")
    print(f"  preview: {Path(args.out) / 'preview.html'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Label the bundled QA-Feedback pairs with SmolLM2's tokenizer and compare with humans,
    then run the quick benchmark (unless ``--skip-bench``)."""
    from editalign.data.io import read_labeled
    from editalign.eval.spans import edit_label_agreement

    out = Path(args.out)
    print(f"editalign demo: labelling the bundled QA-Feedback pairs (300 human minimal edits) "
          f"with the {args.model} tokenizer -> {out}")
    rows = []
    for granularity in ("token", "word"):
        label_args = argparse.Namespace(
            config=None, data=str(bundled_data(DEMO_DATA)), preset="qa-feedback", field=[],
            split=None, limit=None, strict=False, model=args.model, granularity=granularity,
            max_length=0, truncation="keep_start", chat_template="auto", preview_pairs=50,
            out=str(out / f"labels-{granularity}"))
        print(f"\n== granularity: {granularity} ==")
        cmd_label(label_args)
        labeled, _ = read_labeled(label_args.out)
        agreement = edit_label_agreement(labeled).to_dict()
        rows.append((granularity, agreement))
    print("\nDo the edits find the errors people marked? (original tokens flagged "
          "deleted/substituted vs tokens inside human error spans)")
    print("| granularity | precision | recall | F1 | flagged share | human-bad share |")
    print("|---|---|---|---|---|---|")
    for granularity, a in rows:
        print(f"| {granularity} | {a['precision']:.3f} | {a['recall']:.3f} | {a['f1']:.3f} | "
              f"{a['flagged_rate']:.3f} | {a['human_bad_rate']:.3f} |")
    (out / "span_agreement.json").write_text(json.dumps(dict(rows), indent=2))
    print(f"\nOpen {out / 'labels-token' / 'preview.html'} to see the labelled pairs.")
    if args.skip_bench:
        return 0
    return _demo_bench(out / "bench-quick")


def _demo_bench(out: Path) -> int:
    """The quick benchmark (`editalign bench run --quick`): task, initial policy, edit pairs,
    the five methods on the same budget, win rates, report; resumes if interrupted."""
    from editalign.bench.command import add_bench_args, cmd_bench

    print(f"\n== quick benchmark on tiny-bench (editalign bench run --quick --out {out}) ==")
    parser = argparse.ArgumentParser(prog="editalign bench")
    add_bench_args(parser)
    code = cmd_bench(parser.parse_args(["run", "--quick", "--out", str(out)]))
    print(f"\nOpen {out / 'report.html'} for the benchmark report (table, plots, pairs).")
    return code


def cmd_train(args: argparse.Namespace) -> int:
    from editalign.train.common import registered_trainers, run_trainer

    methods = registered_trainers()
    if not args.method or args.method in ("-h", "--help"):
        print("usage: editalign train METHOD [options]\n\nmethods:")
        for name, help_text in methods.items():
            print(f"  {name:10s} {help_text}")
        return 0
    return run_trainer(args.method, args.rest)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="editalign",
        description="Align language models from minimal edits.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    label = sub.add_parser("label", help="tokenize edit pairs and label every token",
                           description="Tokenize edit pairs and label every response token "
                           "(equal/added/substituted/deleted); writes a datasets directory, "
                           "stats.json and preview.html.")
    _add_label_args(label)
    label.set_defaults(func=cmd_label)
    demo = sub.add_parser("demo", help="run the demo on built-in data")
    demo.add_argument("--model", default="smollm2-135m")
    demo.add_argument("--out", default="demo-output")
    demo.add_argument("--skip-bench", action="store_true",
                      help="only the labelling demo, not the quick benchmark that follows it")
    demo.set_defaults(func=cmd_demo)
    train = sub.add_parser(
        "train", add_help=False, help="train a policy or reward model: editalign train METHOD "
        "--help lists the options (any TrainingArguments flag and --config x.yaml work)")
    train.add_argument("method", nargs="?", help="training method")
    train.add_argument("rest", nargs=argparse.REMAINDER)
    train.set_defaults(func=cmd_train)
    from editalign.annotate.command import add_annotate_args, cmd_annotate
    from editalign.revise.command import add_revise_args, cmd_revise

    revise = sub.add_parser(
        "revise", help="minimally edit the worse response of each row with an LLM behind an "
        "OpenAI-compatible endpoint, then filter", description="Ask an LLM to minimally edit "
        "each row's original (worse) response; filter rewrites, truncated answers and (with a "
        "scorer) revisions that do not gain reward; writes EditPair JSONL. See docs/revise.md.")
    add_revise_args(revise)
    revise.set_defaults(func=cmd_revise)
    annotate = sub.add_parser(
        "annotate", help="web tool for people to edit responses minimally (live diff, error "
        "spans, export to EditPair JSONL)", description="Serve a local web app where "
        "annotators edit the worse response in place; see docs/annotate.md.")
    add_annotate_args(annotate)
    annotate.set_defaults(func=cmd_annotate)
    from editalign.score import add_score_args, cmd_score

    score = sub.add_parser("score", help="per-token rewards of a reward model on pairs, with an "
                           "HTML view that colours every token by its reward",
                           description="Score both responses of every pair with a trained "
                           "reward model; writes rewards.jsonl, metrics.json and index.html.")
    add_score_args(score)
    score.set_defaults(func=cmd_score)
    from editalign.eval.winrate import add_eval_args, cmd_eval

    evaluate = sub.add_parser(
        "eval", help="evaluate a policy: `editalign eval winrate` (win rate against a "
        "reference with a 95%% bootstrap interval, KL and length)", description="Win rate of "
        "--policy against --reference on --prompts, judged by the bench task's gold judge, a "
        "reward model or an LLM behind an OpenAI-compatible endpoint; see docs/benchmark.md.")
    add_eval_args(evaluate)
    evaluate.set_defaults(func=cmd_eval)
    from editalign.bench.command import add_bench_args, cmd_bench

    bench = sub.add_parser(
        "bench", help="the generated benchmark task: `editalign bench init` writes the task, "
        "trains the initial policy on noisy responses and revises its samples into edit pairs; "
        "`editalign bench run` trains every method on them and measures win rates",
        description="See docs/benchmark.md.")
    add_bench_args(bench)
    bench.set_defaults(func=cmd_bench)
    return parser, {"label": label, "demo": demo, "train": train, "revise": revise,
                    "annotate": annotate, "score": score, "eval": evaluate, "bench": bench}


def main(argv: Sequence[str] | None = None) -> int:
    from editalign.data.pairs import DataError

    parser, commands = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse_with_config(parser, commands, argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import editalign.bench  # noqa: F401  (registers --model tiny-bench)
    try:
        return int(args.func(args) or 0)
    except (DataError, ValueError, FileNotFoundError) as err:
        print(f"editalign {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
