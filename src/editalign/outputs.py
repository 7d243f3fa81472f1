"""Where commands write: output targets checked before any work, a marker that makes a
directory recognisably a command's own output, an exclusive run lock, atomic file writes
that keep a symlink, and stage done-markers keyed by the settings that made them.

One rule for every command (see SECURITY.md, "What each command may overwrite"):

- an output is checked before anything is loaded or computed: an existing file where a
  directory is wanted (or the reverse), a directory that cannot be written to, an output
  that *is* an input (after resolving symlinks), and a directory that holds other files
  are refused with a one-line :class:`OutputError` (a ``ValueError``: exit code 2) naming
  the path and the flag;
- a directory is written into, or replaced, only when it is empty or carries this
  command's marker (:data:`MARKER`, written when the command claims it); a directory that
  is replaced whole (``editalign label``) may never contain an input or the current
  directory;
- a run that writes a directory or a file it resumes holds an exclusive lock on it (the
  holder's PID in :data:`LOCK`): a second run is refused with that PID; a lock left by a
  run that died is taken over with a warning (the seed shards of one ``bench run`` output
  share its lock and hold their own seeds' directories alone);
- a file is written beside its target and renamed over it, so a crash leaves the old file
  or the new one; when the target is a symlink, the file it points to is replaced and the
  link kept; new files and directories get the permissions the umask allows.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

MARKER = ".editalign-output.json"  # {"command": ..., "created": ...}: this is our output
LOCK = ".editalign.lock"  # the PID of the run that holds the directory


class OutputError(ValueError):
    """An output target that must not be written; one line naming the path and the flag."""


Inputs = Mapping[str, "str | os.PathLike[str] | None"]


def _resolve(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable(directory: Path, path: Path, flag: str) -> None:
    """Refuse when ``directory`` (or, missing, its nearest existing parent) cannot take a new
    file. Probed by creating one, the only test that is right for read-only mounts, ACLs and
    root alike."""
    base = _nearest_existing(directory)
    if not base.is_dir():
        raise OutputError(f"{flag} {path}: {base} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".editalign-probe.", dir=base)
    except OSError as err:
        reason = "no space left on device" if err.errno == errno.ENOSPC else \
            (err.strerror or str(err)).lower()
        raise OutputError(f"{flag} {path}: cannot write in {base} ({reason}); choose "
                          f"another {flag}") from None
    os.close(fd)
    os.unlink(probe)


def _same_as_input(target: Path, inputs: Inputs, flag: str, *, containing: bool,
                   shown: Path) -> None:
    for in_flag, value in inputs.items():
        if not value:
            continue
        source = _resolve(value)
        if not source.exists():
            continue  # nothing there to destroy (a registered model name, a new file)
        if source == target:
            raise OutputError(f"{flag} {shown} is the input ({in_flag} {value}); writing it "
                              f"would destroy the input: choose another {flag}")
        if containing and source.is_relative_to(target):
            raise OutputError(f"{flag} {shown} contains the input ({in_flag} {value}) and "
                              f"would be replaced whole: choose another {flag}")


def check_file(path: str | os.PathLike[str], *, flag: str, inputs: Inputs | None = None,
               ) -> Path:
    """Check an output *file* before any work; returns the path.

    Refused: an existing directory, a file that is one of ``inputs`` (``{flag: path}``, the
    command's inputs; symlinks resolved), a directory that cannot take a new file.
    """
    path = Path(path)
    target = _resolve(path)
    if target.is_dir():
        raise OutputError(f"{flag} {path} is a directory; a file is wanted: choose another "
                          f"{flag}")
    _same_as_input(target, inputs or {}, flag, containing=False, shown=path)
    _check_writable(target.parent, path, flag)
    return path


def check_distinct(outputs: Mapping[str, str | os.PathLike[str] | None]) -> None:
    """Refuse two outputs (``{flag: path}``) that are one file: the second would overwrite
    the first."""
    seen: dict[Path, str] = {}
    for flag, value in outputs.items():
        if not value:
            continue
        target = _resolve(value)
        if target in seen:
            raise OutputError(f"{flag} {value} is the same file as {seen[target]}: give each "
                              "output its own path")
        seen[target] = f"{flag} {value}"


def marked_by(directory: str | os.PathLike[str]) -> str | None:
    """The command whose output ``directory`` is (its marker), or None."""
    marker = Path(directory) / MARKER
    try:
        value = json.loads(marker.read_text(encoding="utf-8")).get("command")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


Legacy = Sequence[Sequence[str]]


def _looks_like(directory: Path, legacy: Legacy) -> bool:
    """An output of an older editalign (no marker yet): every file name pattern of one of
    the ``legacy`` alternatives is there."""
    names = [p.name for p in directory.iterdir()]
    return any(all(fnmatch.filter(names, pattern) for pattern in patterns)
               for patterns in legacy)


_OWN_FILES = {MARKER, LOCK}


def check_dir(path: str | os.PathLike[str], *, flag: str, command: str,
              inputs: Inputs | None = None, replace: bool = False,
              legacy: Legacy = ()) -> Path:
    """Check an output *directory* before any work; returns the directory to write (a
    symlink's target: the link stays).

    Refused: an existing file; a directory that cannot be written; an input itself; a
    directory holding other files unless it carries ``command``'s marker (or, from before
    markers, files matching every pattern of one of the ``legacy`` alternatives). With ``replace=True`` (the directory is
    replaced whole) also a directory that contains an input or the current directory.
    """
    path = Path(path)
    target = _resolve(path)
    if target.exists() and not target.is_dir():
        raise OutputError(f"{flag} {path} is an existing file; a directory is wanted: choose "
                          f"another {flag}")
    _same_as_input(target, inputs or {}, flag, containing=replace, shown=path)
    if replace and Path.cwd().resolve().is_relative_to(target):
        raise OutputError(f"{flag} {path} is or contains the current directory and would be "
                          f"replaced whole: choose another {flag}")
    if target.is_dir() and any(p.name not in _OWN_FILES for p in target.iterdir()):
        owner = marked_by(target)
        if owner != command and not (owner is None and _looks_like(target, legacy)):
            what = f"the output of `editalign {owner}`" if owner else \
                "files that are not an earlier output of this command"
            raise OutputError(f"{flag} {path} already holds {what}; nothing was changed: "
                              f"choose another {flag} (or empty that directory)")
    _check_writable(target if target.is_dir() else target.parent, path, flag)
    return target


def make_dir(path: str | os.PathLike[str]) -> Path:
    """``mkdir -p`` with the permissions the umask allows (as ``mkdir`` does)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def mark_dir(path: str | os.PathLike[str], command: str) -> Path:
    """Create ``path`` if needed and mark it as ``command``'s output (kept if marked)."""
    path = make_dir(path)
    if marked_by(path) != command:
        write_text(path / MARKER, json.dumps(
            {"command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                         time.gmtime())}) + "\n")
    return path


def claim_dir(path: str | os.PathLike[str], *, flag: str, command: str,
              inputs: Inputs | None = None, legacy: Legacy = (), shared: bool = False
              ) -> Path:
    """:func:`check_dir`, then create, mark and lock it (until :func:`lock_scope` ends or
    the process exits; ``shared``: see :class:`RunLock`); returns the directory."""
    target = check_dir(path, flag=flag, command=command, inputs=inputs, legacy=legacy)
    created = not target.exists()
    try:
        make_dir(target)
        lock = hold_lock(target / LOCK, what=f"{flag} {path}", command=command, shared=shared)
        lock.created_dir = lock.created_dir or created
        mark_dir(target, command)
    except OSError as err:
        if no_space(err):
            raise OutputError(f"{flag} {path}: no space left on device; free some space and "
                              "rerun") from None
        raise
    return target


# --------------------------------------------------------------------------- locks


class RunLock:
    """An exclusive ``flock`` on a lock file holding the holder's PID. The kernel drops the
    lock when its holder dies, so a lock file whose PID is still written but whose lock is
    free was left by a run that died: it is taken over with a warning.

    ``shared=True`` takes a shared lock instead: any number of shared holders at once (the
    seed shards of one ``bench run`` output, each holding its own seeds exclusively), none
    beside an exclusive holder. The file names one live holder, for the refusal message.
    """

    def __init__(self, path: str | os.PathLike[str], *, what: str, command: str,
                 shared: bool = False) -> None:
        self.path, self.what, self.command = Path(path), what, command
        self.shared = shared
        self._fd: int | None = None
        # claim_dir made the directory: removed on release if the run wrote nothing there
        self.created_dir = False

    def acquire(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputError(f"{self.what} is in use by another `editalign {self.command}` "
                              f"run (PID {holder}); wait for it to finish or choose another "
                              "output") from None
        before = os.pread(fd, 64, 0).decode(errors="replace").strip()
        ours = str(os.getpid())
        # A shared lock may sit beside live holders: their PID stays named in the file.
        beside_live = self.shared and before not in ("", ours) and _running(before)
        if not beside_live:
            if before not in ("", ours):
                logger.warning("%s: taking over the lock of PID %s, which is no longer "
                               "running (%s)", self.what, before, self.path)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{ours}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        # Emptied when released in order (not stale); a shared holder empties it only when it
        # is the last one (the upgrade to exclusive succeeds only then).
        with contextlib.suppress(OSError):
            if self.shared:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(self._fd, 0)
        directory = self.path.parent
        if self.created_dir and {p.name for p in directory.iterdir()} <= _OWN_FILES:
            # A run refused or failed before writing anything leaves nothing behind.
            for name in _OWN_FILES:
                with contextlib.suppress(FileNotFoundError):
                    (directory / name).unlink()
            with contextlib.suppress(OSError):
                directory.rmdir()
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


_SCOPES: list[list[RunLock]] = []
_HELD: dict[Path, RunLock] = {}


def _running(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def hold_lock(path: str | os.PathLike[str], *, what: str, command: str,
              shared: bool = False) -> RunLock:
    """Take the lock at ``path`` (exclusive, or ``shared``) until the innermost
    :func:`lock_scope` ends (or the process exits). Taking a lock this process already holds
    is a no-op."""
    key = _resolve(path)
    if key in _HELD:
        return _HELD[key]
    lock = RunLock(key, what=what, command=command, shared=shared).acquire()
    _HELD[key] = lock
    if _SCOPES:
        _SCOPES[-1].append(lock)
    return lock


@contextlib.contextmanager
def lock_scope() -> Iterator[None]:
    """Release the locks :func:`hold_lock` took inside (a command run in-process, such as
    one ``editalign train`` of the benchmark)."""
    _SCOPES.append([])
    try:
        yield
    finally:
        for lock in reversed(_SCOPES.pop()):
            _HELD.pop(lock.path, None)
            lock.release()


def file_lock_path(path: str | os.PathLike[str]) -> Path:
    """The lock file of an output file: hidden, beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


# --------------------------------------------------------------------------- atomic writes


def no_space(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", *,
                encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` (beside the file a symlink points to) and
    rename it over the target on success; on failure the target is unchanged. The new file
    keeps the old one's permissions, or gets the umask's. A full disk raises
    :class:`OutputError` "no space left on device" naming the file."""
    path = Path(path)
    target = _resolve(path) if path.is_symlink() else path
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        mode_bits = target.stat().st_mode & 0o7777 if target.exists() else 0o666 & ~_umask()
        os.chmod(tmp, mode_bits)
        with open(fd, mode, encoding=None if "b" in mode else encoding,
                  newline=None if "b" in mode else "\n") as handle:
            yield handle
        os.replace(tmp, target)
    except OSError as err:
        if no_space(err):
            raise OutputError(f"no space left on device while writing {path}; nothing was "
                              "replaced: free some space and rerun") from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_open(path) as handle:
        handle.write(text)
    return Path(path)


# --------------------------------------------------------------------------- done markers


def first_difference(before: Any, now: Any, prefix: str = "") -> str | None:
    if isinstance(before, dict) and isinstance(now, dict):
        for key in sorted(set(before) | set(now), key=str):
            found = first_difference(before.get(key), now.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if before == now else \
        f"{prefix.rstrip('.')}={json.dumps(before)} then, {json.dumps(now)} now"


def read_done(marker: str | os.PathLike[str], settings: Mapping[str, Any]
              ) -> dict[str, Any] | None:
    """What a stage's done marker recorded, when it was written with the same ``settings``;
    None when the stage has not finished. A marker made with other settings (or by a
    version that did not record them) is refused: its results would be reported under
    settings that did not make them."""
    marker = Path(marker)
    if not marker.is_file():
        return None
    record = json.loads(marker.read_text(encoding="utf-8"))
    if not isinstance(record, dict) or "settings" not in record:
        raise OutputError(f"{marker}: finished by an older editalign that did not record its "
                          "settings, so whether they match this run's cannot be told: use "
                          "another --out (or delete that file to recompute the stage)")
    before = record.pop("settings")
    difference = first_difference(before, json.loads(json.dumps(settings)))
    if difference:
        raise OutputError(f"{marker} was made with other settings ({difference}): rerun "
                          "with the same settings to resume, or use another --out")
    return record


def write_done(marker: str | os.PathLike[str], settings: Mapping[str, Any],
               info: Mapping[str, Any]) -> None:
    """Mark a stage finished: ``info`` (what it made) and the ``settings`` that made it."""
    write_text(marker, json.dumps({**info, "settings": settings}, indent=2,
                                  allow_nan=False) + "\n")


# --------------------------------------------------------------------------- numbers


def non_finite(values: Mapping[str, Any]) -> list[str]:
    """The names whose value is a NaN or infinite float (an option that turns a filter off
    or fails only later): refused at parse time by every command."""
    return sorted(name for name, value in values.items()
                  if isinstance(value, float) and not math.isfinite(value))


def check_finite(values: Mapping[str, Any], *, dashes: bool = True) -> None:
    """Raise ``ValueError`` naming every option (``--max-edit-ratio``, or ``--learning_rate``
    with ``dashes=False``) whose value is NaN or infinite."""
    bad = non_finite(values)
    if bad:
        shown = ", ".join(f"--{name.replace('_', '-') if dashes else name} {values[name]}"
                          for name in bad)
        raise ValueError(f"{shown}: expected a finite number")
