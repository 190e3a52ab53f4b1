"""A training run's directory: one run per directory, a lock against a second process, atomic writes.

A run directory holds one run: a new run into a directory with another run's
files is refused (`start_fresh`, unless told to overwrite them), and a lock
(`.lock`, `fcntl.flock`, released by the kernel when the process ends, so a
killed run leaves no stale lock) refuses a second concurrent run
(`open_run_directory`). Every file is written atomically (`write_text`): a
reader sees the old or the new file, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os

from jaxconv import checkpoint

RUN_FILES = ("checkpoint.npz", "metrics.jsonl", "config.json", "curves.png")  # what a run writes to its directory
# OSError numbers that mean "this directory cannot take the run's files": reported as WriteError, not a traceback.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


class RunDirectoryError(ValueError):
    """`out` cannot hold this run: a file, not writable, another run's files, or locked by a running process."""


class WriteError(OSError):
    """Writing the run's files failed (e.g. a full disk); the last checkpoint written whole is kept."""


def check_out(out: str, *, fresh: bool, overwrite: bool) -> None:
    """Refuse an `out` that cannot hold the run, creating nothing: a file, a path through a file, a directory
    locked by a running process, or (for a fresh run without `overwrite`) another run's files."""
    if os.path.isfile(out):
        raise RunDirectoryError(f"train: `--out` {out!r} is a file, not a directory; pick another --out.")
    ancestor = os.path.dirname(os.path.abspath(out))
    while not os.path.isdir(ancestor) and ancestor != os.path.dirname(ancestor):
        if os.path.exists(ancestor):
            raise _path_through_a_file(out)
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(out):
        return
    if os.path.exists(os.path.join(out, ".lock")):
        probe_lock(out)
    if fresh:
        check_fresh(out, overwrite)


def _path_through_a_file(out: str) -> RunDirectoryError:
    return RunDirectoryError(
        f"train: `--out` {out!r} cannot be created because a part of its path is a file; pick another --out.")


def probe_lock(out: str) -> None:
    """Refuse `out` while another process holds its lock; the lock is taken and released at once."""
    try:
        lock = open(os.path.join(out, ".lock"), "r")
    except OSError:
        return  # unreadable: open_run_directory reports it
    with lock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks
            return
        _take_lock(lock, fcntl, out, write_pid=False)


def open_run_directory(out: str):
    """Create `out` if needed and take its lock; returns the open lock file (close it to release).

    When the lock cannot be opened, the folders this call created are removed again."""
    if os.path.isfile(out):
        raise RunDirectoryError(f"train: `--out` {out!r} is a file, not a directory; pick another --out.")
    created = _missing_folders(out)
    try:
        os.makedirs(out, exist_ok=True)
    except (NotADirectoryError, FileExistsError):
        raise _path_through_a_file(out) from None
    except OSError as e:
        raise RunDirectoryError(f"train: `--out` {out!r} cannot be created ({e.strerror}); pick another --out.") from None
    try:
        lock = open(os.path.join(out, ".lock"), "a+")
    except OSError as e:
        for folder in created:  # deepest first: leave the file system as it was
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise RunDirectoryError(
            f"train: `--out` {out!r} is not writable ({e.strerror}); pick a directory you can write to."
        ) from None
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks
        return lock
    return _take_lock(lock, fcntl, out)


def _missing_folders(out: str) -> list:
    """The folders `os.makedirs(out)` would create, deepest first."""
    missing, path = [], os.path.abspath(out)
    while not os.path.exists(path) and path != os.path.dirname(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _take_lock(lock, fcntl, out: str, write_pid: bool = True):
    """Lock the open lock file for this process and write its pid there; refuse when another process holds it."""
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise RunDirectoryError(
            f"train: another run (process {holder}) is writing to `--out` {out!r}; wait for it to finish, "
            f"or pick another --out."
        ) from None
    if not write_pid:
        return lock
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock  # the kernel drops the lock when the process ends, killed or not: no stale locks


def check_fresh(out: str, overwrite: bool) -> list:
    """Refuse to mix a new run with another run's files in `out` (unless overwrite=True); the run files present."""
    present = [n for n in RUN_FILES if os.path.exists(os.path.join(out, n))]
    # Without checkpoint.npz and metrics.jsonl (written only after it), the run was stopped before its first
    # checkpoint: there is nothing to resume or lose, so a new run replaces its config.json.
    started = any(n in present for n in ("checkpoint.npz", "metrics.jsonl"))
    if started and not overwrite:
        raise RunDirectoryError(
            f"train: `--out` {out!r} already holds a run ({', '.join(present)}); continue it with --resume, "
            f"replace it with --overwrite, or pick another --out."
        )
    return present


def start_fresh(out: str, overwrite: bool) -> None:
    """`check_fresh`, then remove the files of the run being replaced."""
    for name in check_fresh(out, overwrite):
        os.unlink(os.path.join(out, name))


def write_text(path: str, text: str) -> None:
    """Write text to path atomically (`checkpoint.write_atomic`): a reader sees the old or the new file."""
    checkpoint.write_atomic(path, lambda f: f.write(text), mode="w")


def metrics_text(history: list) -> str:
    """metrics.jsonl's text: one JSON line per epoch of the history."""
    return "".join(json.dumps(h) + "\n" for h in history)


def write_metrics(path: str, history: list) -> None:
    """metrics.jsonl: one JSON line per epoch, rewritten whole from the history the checkpoint holds."""
    write_text(path, metrics_text(history))


def metrics_match(path: str, history: list) -> bool:
    """Whether metrics.jsonl at `path` holds exactly the lines of `history` (a kill can leave it an epoch behind)."""
    try:
        with open(path) as f:
            return f.read() == metrics_text(history)
    except OSError:
        return False


def write_error(e: OSError, out: str, kept: str) -> WriteError:
    """The WriteError that reports `e` (an errno of WRITE_ERRNOS: a full disk, a read-only `out`, ...) and what
    is `kept` on disk."""
    error = WriteError(f"train: cannot write to `{out}` ({e.strerror}); free some space or pick another --out; {kept}.")
    error.errno = e.errno
    return error
