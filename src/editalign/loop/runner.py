"""Running one stage's ``editalign`` command, in this process or as a child process,
with its output in the stage's log file."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from editalign.loop.config import stage_commands


def run_command(argv: Sequence[str]) -> int:
    """``editalign ARGV`` in this process, with the CLI's exit codes (2 on a data error)."""
    return stage_commands().run(argv)


class StageFailed(RuntimeError):
    pass


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGTERM when the loop dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def log_tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


class Runner:
    """Runs an ``editalign`` command with its output appended to a log file: as a child
    process (``python -m editalign.cli ...``) for the stages in ``child_stages``, else in
    this process with stdout, stderr and logging captured (no torch/transformers start-up
    per stage; ``child_stages=()`` runs everything in-process, as the fast tests do)."""

    def __init__(self, child_stages: Sequence[str] = ("train", "bench")) -> None:
        self.child_stages = set(child_stages)

    def __call__(self, argv: Sequence[str], log: Path) -> int:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as handle:
            handle.write(f"$ editalign {shlex.join(argv)}\n")
            handle.flush()
            if argv[0] not in self.child_stages:
                return self._in_process(argv, handle)
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            proc = subprocess.Popen([sys.executable, "-m", "editalign.cli", *argv],
                                    stdout=handle, stderr=subprocess.STDOUT, env=env,
                                    preexec_fn=_die_with_parent if sys.platform == "linux"
                                    else None)
            try:
                return proc.wait()
            finally:
                if proc.poll() is None:  # the loop was interrupted: do not leave it running
                    proc.terminate()
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        proc.kill()

    @staticmethod
    def _in_process(argv: Sequence[str], handle: io.TextIOBase) -> int:
        root = logging.getLogger()
        # The stage's log records go to its file only; the terminal keeps one line per stage.
        saved = root.handlers[:]
        stream = logging.StreamHandler(handle)
        stream.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.handlers = [stream]
        try:
            with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
                return run_command(argv)
        except SystemExit as err:
            return err.code if isinstance(err.code, int) else 1
        finally:
            root.handlers = saved
