"""Write and read a labelled data set directory (the output of ``editalign label``).

Layout of ``DIR``: a ``datasets`` directory (``datasets.load_from_disk(DIR)`` works),
``stats.json`` (what was kept, skipped and why; label counts; edit-ratio distribution;
the labelling config and tokenizer fingerprint) and ``preview.html``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets

from editalign.data.labeling import (
    LabeledPair,
    LabelingConfig,
    LabelStats,
    config_dict,
    to_dataset,
)
from editalign.data.pairs import LoadReport
from editalign.data.preview import render_preview
from editalign.outputs import Inputs, OutputError, check_dir, make_dir, mark_dir, no_space


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Hide datasets' "Saving the dataset" bar: the labelling bar already shows progress."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def write_labeled(
    out_dir: str | os.PathLike[str],
    labeled: Sequence[LabeledPair],
    stats: LabelStats,
    *,
    config: LabelingConfig,
    tokenizer: Any,
    model_name: str,
    load_report: LoadReport | None = None,
    preview_pairs: int = 50,
    extra: dict[str, Any] | None = None,
    inputs: Inputs | None = None,
) -> dict[str, Any]:
    """Write the data set, ``stats.json`` and ``preview.html``; returns the stats dict.

    ``extra`` adds top-level keys to ``stats.json`` (e.g. agreement with official tags).

    The data set is written to a temporary directory and moved into place, so an
    interrupted run never leaves a half-written data set that looks complete. An existing
    ``out_dir`` is replaced only when it is an earlier ``editalign label`` output (its
    marker, see :mod:`editalign.outputs`); anything else, a directory holding the input or
    the current directory included, raises :class:`~editalign.outputs.OutputError` before
    anything is written. A symlinked ``out_dir`` keeps its link: the directory it points to
    is replaced.
    """
    from editalign.models import tokenizer_fingerprint  # loads torch: only when writing

    out = check_label_dir(out_dir, inputs)
    info = {
        "model": model_name,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "config": config_dict(config),
    }
    stats_dict = {**info, "load": load_report.to_dict() if load_report else None,
                  "labels": stats.to_dict(), **(extra or {})}
    summary = "\n".join(filter(None, [load_report.summary() if load_report else None,
                                      stats.summary()]))

    def fill(tmp: Path) -> None:
        with _quiet_datasets():
            to_dataset(labeled, info).save_to_disk(str(tmp))
        mark_dir(tmp, COMMAND)
        (tmp / "stats.json").write_text(json.dumps(stats_dict, indent=2, ensure_ascii=False))
        (tmp / "preview.html").write_text(
            render_preview(labeled, title=f"editalign label preview: {model_name}",
                           stats=stats_dict, summary=summary, limit=preview_pairs),
            encoding="utf-8")

    _replace_dir(out, fill, inputs)
    return stats_dict


def _replace_dir(out: Path, fill: Callable[[Path], None], inputs: Inputs | None) -> None:
    """``fill`` a temporary sibling of ``out``, then move it into place: the earlier ``out``
    is moved aside (not deleted) until the new one is there, and comes back if anything
    fails, so an interrupted run never leaves a half-written data set that looks complete."""
    make_dir(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    old = tmp.with_name(tmp.name + ".old")
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the output from others
        fill(tmp)
        # Checked again at the last moment: another process may have put files there.
        check_label_dir(out, inputs)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            old.rename(out)
        if no_space(err):
            raise OutputError(f"no space left on device while writing {out} (in {tmp.name}); "
                              "nothing was replaced: free some space and rerun") from None
        raise
    shutil.rmtree(old, ignore_errors=True)


COMMAND = "label"
# `editalign label` directories written before the marker.
LEGACY = (("stats.json", "dataset_info.json", "preview.html"),)


def check_label_dir(out_dir: str | os.PathLike[str], inputs: Inputs | None = None) -> Path:
    """The directory ``editalign label`` may replace (a symlink's target), or
    :class:`~editalign.outputs.OutputError`: see :func:`editalign.outputs.check_dir`."""
    return check_dir(out_dir, flag="--out", command=COMMAND, inputs=inputs, replace=True,
                     legacy=LEGACY)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_labeled(path: str | os.PathLike[str]) -> tuple[list[LabeledPair], dict[str, Any]]:
    """Read a directory written by :func:`write_labeled`: the pairs and ``stats.json``."""
    path = Path(path)
    if not (path / "stats.json").exists():
        raise FileNotFoundError(
            f"{path} is not a labelled data set (no stats.json); create one with `editalign label`")
    ds = datasets.load_from_disk(str(path))
    stats = json.loads((path / "stats.json").read_text())
    return [LabeledPair.from_row(row) for row in ds], stats
