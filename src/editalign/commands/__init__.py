"""Every ``editalign`` command, one module each, and :data:`COMMANDS`, the one table of them.

A command module has ``NAME``, ``HELP`` (the line in ``editalign --help``), ``DESCRIPTION``,
``add_arguments(parser)`` and ``run(args) -> int``; its heavy imports (torch, transformers,
the trainers) are inside ``run`` so that ``editalign --help`` starts fast. The options several
commands share are declared once: ``--config`` in :mod:`editalign.commands.common`, the data
options by :func:`editalign.data.arguments.add_data_arguments` from ``DataArguments``.

Layers (docs/architecture.md): the stage commands (label, sample, score, revise, annotate,
eval, bench, train) sit below :mod:`editalign.loop`, which runs them; this table and the
``loop`` and ``demo`` commands sit above it; ``editalign.cli`` reads the table.
"""

from __future__ import annotations

import editalign.commands.annotate as annotate
import editalign.commands.bench as bench
import editalign.commands.demo as demo
import editalign.commands.evaluate as evaluate
import editalign.commands.label as label
import editalign.commands.loop as loop
import editalign.commands.revise as revise
import editalign.commands.sample as sample
import editalign.commands.score as score
import editalign.commands.train as train
from editalign.commands.common import CommandTable

# In the order `editalign --help` lists them.
COMMANDS = CommandTable([label, demo, train, sample, loop, revise, annotate, score, evaluate,
                         bench])

__all__ = ["COMMANDS", "CommandTable"]
