"""``editalign train METHOD``: every trainer (editalign.train.common's table); each parses its
own options (its config dataclass, TrainingArguments, DataArguments, ``--config x.yaml``)."""

from __future__ import annotations

import argparse

NAME = "train"
HELP = ("train a policy or reward model: editalign train METHOD --help lists the options (any "
        "TrainingArguments flag and --config x.yaml work)")
DESCRIPTION = None
ADD_HELP = False  # `editalign train METHOD --help` is the trainer's own


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("method", nargs="?", help="training method")
    p.add_argument("rest", nargs=argparse.REMAINDER)


def run(args: argparse.Namespace) -> int:
    from editalign.train.common import registered_trainers, run_trainer

    methods = registered_trainers()
    if not args.method or args.method in ("-h", "--help"):
        print("usage: editalign train METHOD [options]\n\nmethods:")
        for name, help_text in methods.items():
            print(f"  {name:10s} {help_text}")
        return 0
    return run_trainer(args.method, args.rest)
