"""Atomic file writes: a reader, or a crash, sees the old file or the new one, never a mix.

Checkpoints, the metrics and config files of `jaxconv train`, and safetensors exports all go
through `write_atomic` (also exported as `jaxconv.checkpoint.write_atomic`).
"""

from __future__ import annotations

import os
import tempfile


def write_atomic(path, write, mode: str = "wb") -> str:
    """Write a file so that a reader (or a crash) sees the old file or the new one, never a mix.

    `write(f)` fills an open temporary file `.{name}.XXXX.tmp` beside `path` (mode "wb" or "w");
    it is fsynced, given the usual permissions and renamed over `path`, then the folder is
    fsynced. On any error the temporary is removed and the error raised. Checkpoints, the
    metrics and config files of `jaxconv train`, and safetensors exports all go through here.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)
    return path


def fsync_dir(directory: str) -> None:
    """fsync a folder, so that a rename inside it survives a crash (where the OS allows opening folders)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
