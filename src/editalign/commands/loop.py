"""``editalign loop``: rounds of sample -> revise -> label -> train -> win rate (see
:mod:`editalign.loop` and docs/loop.md)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

from editalign.loop import Loop, StageFailed, load_config

NAME = "loop"
HELP = ("rounds of sample -> revise -> label -> train -> win rate, each round starting from the "
        "last one's policy; resumable")
DESCRIPTION = ("The whole loop for a policy: see docs/loop.md. Without --config it runs on the "
               "generated task.")



def add_arguments(p: argparse.ArgumentParser) -> None:
    # dest loop_config: the generic --config of other commands (YAML keys = options) must
    # not apply; a loop.yaml has its own schema.
    p.add_argument("--config", dest="loop_config", help="loop.yaml (see docs/loop.md); without it the loop runs "
                   "on built-in defaults: the generated task with tiny-bench, the programmatic "
                   "reviser and the gold judge")
    p.add_argument("--out", help="output directory (overrides the config's out; default "
                   "loop-output)")
    p.add_argument("--rounds", type=int, help="number of rounds (overrides the config)")
    p.add_argument("--keep-going", action="store_true",
                   help="run every round even after one loses to the round before it (by "
                   "default the loop stops there, keeping the best round's policy)")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.loop_config, out=args.out, rounds=args.rounds)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    loop = Loop(config, keep_going=getattr(args, "keep_going", False))
    print(f"editalign loop: {config['rounds']} rounds into {loop.out} (initial policy "
          f"{config['policy']}, train {config['train']['method']}, judge "
          f"{config['eval']['judge']})", flush=True)
    try:
        loop.run_all()
    except StageFailed as err:
        print(f"editalign loop: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\neditalign loop: interrupted; rerun the same command to resume from the "
              "unfinished stage", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print((loop.out / "results.md").read_text())
    print(f"report: {loop.out / 'report.md'} (plot: {loop.out / 'winrate.png'})")
    best = json.loads((loop.out / "results.json").read_text())
    print(f"best round: {best['best_round']}; its policy: {best['best_policy']}")
    return 0


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
