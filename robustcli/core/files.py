"""Atomic file writes: a report or checkpoint is either complete or absent, never half-written.

The content goes to a temporary file in the target's folder, which is renamed over the target
only when the writer finished (rename within one file system is atomic on POSIX). Renaming is
right only for regular files: over a device or FIFO (`--json /dev/null`) it would replace the
node with a file, so such targets are written straight into instead. A symlink is followed (the
file it points to is replaced, the link stays); a symlink loop is refused. The file gets the
permissions a plain `open()` would give it (0666 minus the umask, or the replaced file's mode),
not mkstemp's private 0600. File-system failures (read-only, full, no permission) become a
one-line InputError naming the path.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from robustcli.core.errors import InputError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _cannot(path: Path, e: OSError) -> InputError:
    why = e.strerror or type(e).__name__
    if e.errno == errno.ENOSPC:
        why = "the disk is full"
    elif e.errno == errno.EROFS:
        why = "the file system is read-only"
    return InputError(f"cannot write {path}: {why}")


def _target(path: Path) -> tuple[Path, os.stat_result | None]:
    """The file to replace (symlinks followed) and its stat, or None when it does not exist yet."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if path.is_symlink():
            return Path(os.path.realpath(path)), None  # a dangling link: create what it points to
        return path, None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputError(f"cannot write {path}: it is a symlink loop; remove the link or pick another name") from None
        raise _cannot(path, e) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"cannot write {path}: it is a folder; pass a file name")
    return Path(os.path.realpath(path)), st


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; its content lands on `path` only if the block succeeds."""
    path = Path(path)
    real, st = _target(path)
    parent = real.parent
    if not parent.exists():
        raise InputError(f"cannot write {path}: folder {parent} does not exist")
    if not parent.is_dir():
        raise InputError(f"cannot write {path}: {parent} is not a folder")
    special = st is not None and not stat.S_ISREG(st.st_mode)
    try:
        # A device or FIFO's folder (/dev) may not take new files: stage those in the temp folder.
        fd, tmp_name = tempfile.mkstemp(dir=None if special else parent, prefix=f".{real.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise _cannot(path, e) from None
    tmp = Path(tmp_name)
    try:
        try:
            yield tmp
        except OSError as e:
            raise _cannot(path, e) from None
        try:
            if special:
                with open(tmp, "rb") as src, open(real, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                os.chmod(tmp, stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_umask())
                os.replace(tmp, real)
        except OSError as e:
            raise _cannot(path, e) from None
    finally:
        tmp.unlink(missing_ok=True)
