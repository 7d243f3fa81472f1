"""What every command shares: the ``--config`` option, parsing with it, running a command
with the CLI's exit codes, and a table of commands that builds their parsers."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

import yaml

CONFIG_HELP = ("YAML file whose keys are any of these options (dashes or underscores); flags "
               "given on the command line win")


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help=CONFIG_HELP)


def apply_config(parser: argparse.ArgumentParser, command: argparse.ArgumentParser,
                 args: argparse.Namespace, argv: Sequence[str]) -> argparse.Namespace:
    """Values from ``--config x.yaml`` become ``command``'s defaults, which the command line
    overrides: ``argv`` is parsed again by ``parser`` (the top-level parser, or ``command``
    itself)."""
    if not getattr(args, "config", None):
        return args
    with open(args.config, encoding="utf-8") as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        parser.error(f"{args.config}: expected a mapping of option names to values")
    # A key is an option's own name (`max_steps` for --max-steps, as --help shows it) or
    # its destination (`run_max_steps`), with dashes or underscores.
    known = {action.dest: action.dest for action in command._actions}
    for action in command._actions:
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
    command.set_defaults(**defaults)
    return parser.parse_args(argv)


def execute(args: argparse.Namespace) -> int:
    """Run the parsed command ``args.func``: NaN/inf options refused, the output locks it
    takes released at its end, and a data error, a bad value or a missing file said in one
    line with exit code 2 (nothing computed is lost: each command checks before it works)."""
    from editalign.data.pairs import DataError
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


class CommandTable:
    """Commands by name, each a module of this package with ``NAME``, ``HELP``,
    ``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args) -> int`` (``ADD_HELP = False``
    for a command that parses its own ``--help``, as ``train`` does)."""

    def __init__(self, modules: Sequence[ModuleType]) -> None:
        self.modules = {module.NAME: module for module in modules}

    def build_parser(self) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
        parser = argparse.ArgumentParser(prog="editalign",
                                         description="Align language models from minimal edits.")
        parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        sub = parser.add_subparsers(dest="command", required=True)
        commands = {}
        for name, module in self.modules.items():
            command = sub.add_parser(name, help=module.HELP, description=module.DESCRIPTION,
                                     add_help=getattr(module, "ADD_HELP", True))
            module.add_arguments(command)
            command.set_defaults(func=module.run)
            commands[name] = command
        return parser, commands

    def parsers(self) -> dict[str, argparse.ArgumentParser]:
        return self.build_parser()[1]

    def parse(self, argv: Sequence[str]) -> argparse.Namespace:
        """``editalign ARGV`` parsed, with its ``--config`` applied."""
        parser, commands = self.build_parser()
        args = parser.parse_args(argv)
        return apply_config(parser, commands[args.command], args, argv)

    def run(self, argv: Sequence[str]) -> int:
        """``editalign ARGV`` in this process, with the CLI's exit codes."""
        return execute(self.parse(list(argv)))

