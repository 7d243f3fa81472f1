"""The ``editalign`` command."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import yaml

from editalign.label import add_label_args, cmd_label

logger = logging.getLogger("editalign")

DEMO_DATA = "qa-feedback-300.json.gz"


def bundled_data(name: str) -> Path:
    """Path of a data file shipped inside the package (see resources/NOTICE.md)."""
    return Path(str(resources.files("editalign") / "resources" / name))


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
    # A key is an option's own name (`max_steps` for --max-steps, as --help shows it) or
    # its destination (`run_max_steps`), with dashes or underscores.
    known = {action.dest: action.dest for action in sub._actions}
    for action in sub._actions:
        for option in action.option_strings:
            if option.startswith("--"):
                known.setdefault(option[2:].replace("-", "_"), action.dest)
    defaults = {}
    for key, value in values.items():
        dest = known.get(str(key).replace("-", "_"))
        if dest is None or dest in ("help", "config"):
            names = sorted(set(known) - {"help", "config"})
            parser.error(f"{args.config}: unknown option {key!r}; allowed: {', '.join(names)}")
        defaults[dest] = value
    sub.set_defaults(**defaults)
    return parser.parse_args(argv)


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
    add_label_args(label)
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
    from editalign.sample import add_sample_args, cmd_sample

    sample = sub.add_parser(
        "sample", help="sample a policy on prompts (k responses each) into rows that revise, "
        "annotate and label read; resumable", description="Roll out a policy: k samples per "
        "prompt, written row by row (a rerun resumes); see docs/loop.md.")
    add_sample_args(sample)
    sample.set_defaults(func=cmd_sample)
    from editalign.loop import add_loop_args, cmd_loop

    loop = sub.add_parser(
        "loop", help="rounds of sample -> revise -> label -> train -> win rate, each round "
        "starting from the last one's policy; resumable", description="The whole loop for a "
        "policy: see docs/loop.md. Without --config it runs on the generated task.")
    add_loop_args(loop)
    loop.set_defaults(func=cmd_loop)
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
    from editalign.registry import make_judge

    evaluate.set_defaults(func=functools.partial(cmd_eval, make_judge=make_judge))
    from editalign.bench.command import add_bench_args, cmd_bench

    bench = sub.add_parser(
        "bench", help="the generated benchmark task: `editalign bench init` writes the task, "
        "trains the initial policy on noisy responses and revises its samples into edit pairs; "
        "`editalign bench run` trains every method on them and measures win rates",
        description="See docs/benchmark.md.")
    add_bench_args(bench)
    bench.set_defaults(func=cmd_bench)
    return parser, {"label": label, "demo": demo, "train": train, "revise": revise,
                    "annotate": annotate, "score": score, "eval": evaluate, "bench": bench,
                    "sample": sample, "loop": loop}


def main(argv: Sequence[str] | None = None) -> int:
    from editalign.data.pairs import DataError

    parser, commands = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse_with_config(parser, commands, argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from editalign.outputs import check_finite, lock_scope

    try:
        # NaN or inf would turn a filter off or fail only at the first request: refused here,
        # for every command (`train` checks its own options when it parses them).
        check_finite(vars(args))
        with lock_scope():  # the output locks a command takes end with it
            return int(args.func(args) or 0)
    except (DataError, ValueError, FileNotFoundError) as err:
        print(f"editalign {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
