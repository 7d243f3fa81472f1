"""``editalign demo``: the README's first command, on data shipped with the package."""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

import editalign.commands.bench as bench_command
import editalign.commands.label as label_command

NAME = "demo"
HELP = "run the demo on built-in data"
DESCRIPTION = None
DEMO_DATA = "qa-feedback-300.json.gz"


def bundled_data(name: str) -> Path:
    """Path of a data file shipped inside the package (see resources/NOTICE.md)."""
    return Path(str(resources.files("editalign") / "resources" / name))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--out", default="demo-output")
    p.add_argument("--skip-bench", action="store_true",
                   help="only the labelling demo, not the quick benchmark that follows it")


def _parse(module: object, argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed by a command's own parser, as `editalign NAME ARGV` would parse it."""
    parser = argparse.ArgumentParser(prog=f"editalign {module.NAME}")  # type: ignore[attr-defined]
    module.add_arguments(parser)  # type: ignore[attr-defined]
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    """Label the bundled QA-Feedback pairs with SmolLM2's tokenizer and compare with humans,
    then run the quick benchmark (unless ``--skip-bench``)."""
    from editalign.data.io import read_labeled
    from editalign.eval.spans import edit_label_agreement

    out = Path(args.out)
    print(f"editalign demo: labelling the bundled QA-Feedback pairs (300 human minimal edits) "
          f"with the {args.model} tokenizer -> {out}")
    rows = []
    for granularity in ("token", "word"):
        label_out = out / f"labels-{granularity}"
        label_args = _parse(label_command, [
            "--data", str(bundled_data(DEMO_DATA)), "--preset", "qa-feedback",
            "--model", args.model, "--granularity", granularity, "--max-length", "0",
            "--out", str(label_out)])
        print(f"\n== granularity: {granularity} ==")
        label_command.run(label_args)
        labeled, _ = read_labeled(label_out)
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
    print(f"\n== quick benchmark on tiny-bench (editalign bench run --quick --out {out}) ==")
    code = bench_command.run(_parse(bench_command, ["run", "--quick", "--out", str(out)]))
    print(f"\nOpen {out / 'report.html'} for the benchmark report (table, plots, pairs).")
    return code
