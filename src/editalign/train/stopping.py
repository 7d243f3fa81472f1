"""How a transformers-Trainer run ends when it cannot finish: a signal, a full disk, a
checkpoint that holds a pickle. Used by :func:`editalign.train.cli.finish`.

- **SIGTERM or Ctrl-C** (a scheduler's preemption, ``kill``, a terminal): the step under way
  finishes, a checkpoint is saved, and the run says how to resume; a second signal abandons
  the step at once. With several processes (DDP) every rank stops at the same step.
- **A full disk while saving**: torch reports it as ``unexpected pos`` from its zip writer;
  it is said as "no space left on device" with the file that was being written.
- **A planted pickle** in a checkpoint to resume from: transformers loads its optimizer,
  scheduler and RNG states with ``torch.load(weights_only=True)``, which refuses it with a
  raw ``UnpicklingError`` (whose hint, ``weights_only=False``, would run the code); it
  becomes a one-line refusal naming the file, as PPO's checkpoints get.
"""

from __future__ import annotations

import contextlib
import pickle
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from editalign.outputs import OutputError, no_space


class StopOnSignal(TrainerCallback):
    """Turns SIGTERM/SIGINT into "save a checkpoint at the end of this step, then stop"."""

    def __init__(self) -> None:
        self.requested = False  # a signal came
        self.stopped_at: int | None = None  # the step the run stopped (and saved) at

    def _agreed(self) -> bool:
        """Whether any rank got a signal: every rank must stop at the same step."""
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self.requested
        flag = torch.tensor([float(self.requested)],
                            device="cuda" if torch.cuda.is_available() and
                            dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag)
        return bool(flag.item())

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self._agreed():
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopOnSignal]:
        """The handlers for the duration (main thread only: Python allows no other)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum: int, frame: Any) -> None:
            if self.requested:  # a second signal: do not wait for the step
                raise KeyboardInterrupt
            self.requested = True
            print(f"\n{signal.Signals(signum).name}: finishing this step, then saving a "
                  "checkpoint (signal again to stop at once, unsaved)", flush=True)

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _newest_file(directory: Path) -> Path | None:
    files = [p for p in directory.rglob("*") if p.is_file()] if directory.is_dir() else []
    return max(files, key=lambda p: p.stat().st_mtime_ns, default=None)


def disk_full(err: BaseException, output_dir: str | Path) -> OutputError | None:
    """The error to show for a save that failed on a full disk (None: another failure)."""
    text = str(err)
    torch_zip = isinstance(err, RuntimeError) and (
        "unexpected pos" in text or "PytorchStreamWriter" in text or "file write failed" in text)
    if not (no_space(err) or torch_zip or "No space left on device" in text):
        return None
    newest = _newest_file(Path(output_dir))
    where = f" (last file written: {newest})" if newest else ""
    return OutputError(f"no space left on device while saving in {output_dir}{where}; that "
                       "checkpoint is incomplete and is skipped when resuming: free some space "
                       "and rerun with --resume_from_checkpoint last")


def _what(err: BaseException) -> str:
    """torch's "Unsupported global: GLOBAL x.Y ..." part (what the file holds), without its
    advice to load with ``weights_only=False``, which would run that code."""
    import re

    found = re.search(r"Unsupported [^:]*: (GLOBAL )?([\w.]+)", str(err))
    return f" ({found.group(2)})" if found else ""


def refused_pickle(checkpoint: str | Path) -> ValueError:
    """The refusal for a checkpoint file that ``torch.load(weights_only=True)`` rejects."""
    import torch

    for path in sorted(Path(checkpoint).glob("*")):
        if path.suffix not in (".pt", ".pth", ".bin") or not path.is_file():
            continue
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            return ValueError(f"{path}: refused: it holds objects other than tensors and plain "
                              f"containers, and loading it could run code{_what(err)}; it is "
                              "not loaded. Resume from a checkpoint you trust, or start afresh")
        except Exception:
            continue
    return ValueError(f"{checkpoint}: refused: a file in it holds objects other than tensors "
                      "and plain containers, and loading it could run code")
