"""The two file-system primitives every part of a run directory relies on."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (best effort: some file systems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """`.name.tmp-<pid>` beside `path`: hidden, and tied to its writer's pid so a later
    process can tell a dead writer's leftover from a live writer's file."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, *, durable: bool = True) -> Iterator[BinaryIO]:
    """Write a file so that readers see the old content or the new, never a part.

    Yields a binary file under a temporary name; on success it is flushed (and fsynced if
    `durable`) and renamed over `path`. On any failure (disk full, interrupt) the temporary
    file is removed and the old `path`, if any, is untouched.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, data: bytes | str, *, durable: bool = False) -> None:
    """Replace `path` with `data` atomically (text is written as UTF-8)."""
    with atomic_writer(path, durable=durable) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (one we may not signal counts)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def remove_dead_writers_temporaries(folder: Path, pattern: str) -> None:
    """Temporary files (named by `temporary_name`) whose writing process is gone."""
    for tmp in Path(folder).glob(pattern):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            continue
        if not pid_alive(pid):
            tmp.unlink(missing_ok=True)
