"""The ``editalign`` command: the table of :mod:`editalign.commands`, with logging set up."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from editalign.commands import COMMANDS
from editalign.commands.common import execute


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = COMMANDS.parse(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not sys.stderr.isatty():
        # A log file gets no "Loading weights" bars (transformers and the hub read this when
        # first imported, which is after this point); `bench` turns the others off per stage.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return execute(args)


if __name__ == "__main__":
    raise SystemExit(main())
