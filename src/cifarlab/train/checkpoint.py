"""Checkpoints: one file holds all that resume needs, written atomically, loaded safely.

Files are `ckpt-<step, 8 digits>.pt` in the run directory. A checkpoint is written to a
temporary name, flushed to disk, then renamed: a crash at any moment leaves either the old
set of checkpoints or the new one, never a partial file under a checkpoint's name. Loading
uses torch.load(weights_only=True): tensors and plain containers only, so opening a
checkpoint never runs code from it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..errors import CifarlabError

_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"ckpt-{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in the run directory, oldest first. Temporary files are ignored."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for path in run_dir.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def _fsync_dir(path: Path) -> None:
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


def save_checkpoint(run_dir: Path, step: int, state: dict, keep: int = 5) -> Path:
    """Write `state` atomically as the checkpoint of `step`; keep the newest `keep`."""
    run_dir = Path(run_dir)
    final = checkpoint_path(run_dir, step)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)  # atomic on POSIX: readers see the old name set or the new one
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (disk full, interrupt) leaves nothing behind
        raise
    _fsync_dir(run_dir)
    for _, old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """FileNotFoundError passes through (a watcher may lose a race with keep-N rotation)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # unpickling errors come in many types
        raise CifarlabError(
            f"{path}: not a readable cifarlab checkpoint ({type(e).__name__}: {e})"
        ) from None


def remove_stale_temporaries(run_dir: Path) -> None:
    """Temporary files of writers that were killed (their pid is gone)."""
    for tmp in Path(run_dir).glob(".ckpt-*.pt.tmp-*"):
        try:
            os.kill(int(tmp.name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (ValueError, PermissionError):
            pass
