"""One trainer per run directory: an advisory lock on RUN_DIR/.lock.

flock(2) locks belong to the open file: the kernel releases them when the holder exits,
however it exits (SIGKILL included), so a stale lock never blocks a restart. The file
holds the owner's pid and host for the message a second trainer prints.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from ..errors import CifarlabError

LOCK = ".lock"


class RunDirectoryBusy(CifarlabError):
    pass


class RunLock:
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = self.path.read_text(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirectoryBusy(
                f"{self.path.parent} is in use by {owner}: wait for it to stop, or name another --run-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()} (cifarlab train)\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
