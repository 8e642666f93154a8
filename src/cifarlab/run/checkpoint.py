"""Checkpoints: one file holds all that resume needs, written atomically, loaded safely,
checked for damage.

Files are `ckpt-<step, 8 digits>.pt` in the run directory, written through `atomic_writer`:
a crash at any moment leaves the old set of checkpoints or the new one, never a partial
file under a checkpoint's name. Each checkpoint carries a SHA-256 digest of its content
(every tensor's bytes and every plain value), recomputed on load, so one flipped byte is
refused instead of trained or evaluated on. Loading uses torch.load(weights_only=True):
tensors and plain containers only, so opening a checkpoint never runs code from it.
The file stays a plain torch.save archive that `torch.load` reads.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import resource
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from .. import pause_points
from ..errors import CifarlabError
from ..files import atomic_writer, remove_dead_writers_temporaries

_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")
DIGEST_KEY = "sha256"  # of everything else in the checkpoint's top-level dict


class CheckpointError(CifarlabError):
    """A file under a checkpoint's name that cannot be used: unreadable, damaged, or not ours."""


TRUST_UNDIGESTED = "CIFARLAB_TRUST_UNDIGESTED"


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


def _feed(digest: Any, value: Any) -> None:
    """Hash a checkpoint value canonically: containers in key order, tensors by dtype,
    shape and raw bytes, plain values by type and repr."""
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}".encode())
        for key in sorted(value, key=repr):
            _feed(digest, key)
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"L{len(value)}".encode())
        for item in value:
            _feed(digest, item)
    else:
        digest.update(f"V{type(value).__name__}:{value!r}".encode())


def content_digest(state: dict) -> str:
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in state.items() if k != DIGEST_KEY})
    return digest.hexdigest()


def save_checkpoint(run_dir: Path, step: int, state: dict, keep: int = 5) -> Path:
    """Write `state` atomically, with its digest, as the checkpoint of `step`; keep the newest
    `keep`. A failed write (disk full, file-size limit) raises CheckpointError and leaves the
    earlier checkpoints as they were."""
    run_dir = Path(run_dir)
    final = checkpoint_path(run_dir, step)
    state = {**state, DIGEST_KEY: content_digest(state)}
    try:
        with atomic_writer(final) as f:
            torch.save(state, f)
            pause_points.reached("checkpoint", step)
    except (OSError, RuntimeError) as e:  # torch reports a short write as RuntimeError
        raise CheckpointError(f"cannot write {final} ({_why_unwritten(e, run_dir, state)}); "
                              "the earlier checkpoints are intact") from None  # fmt: skip
    for _, old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def _why_unwritten(error: Exception, folder: Path, state: dict) -> str:
    """A short write's cause in words: torch's own message for one says only "unexpected
    pos"; the file system's free space against the checkpoint's size says more."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return "No space left on device"
    if isinstance(error, OSError) and error.errno == errno.EFBIG:
        return "File too large: the file-size limit (ulimit -f) is below a checkpoint's size"
    needed = sum(t.numel() * t.element_size() for _, t in tensors_in(state, ""))
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and limit < needed:
        return (f"File too large: the file-size limit (ulimit -f, {limit / 1e6:.1f} MB) is below "
                f"a checkpoint's {needed / 1e6:.1f} MB")  # fmt: skip
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and free < needed:
        return (f"No space left on device: about {needed / 1e6:.1f} MB needed, "
                f"{free / 1e6:.1f} MB free")  # fmt: skip
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Read and check a checkpoint: CheckpointError, in one line, for a file that is not a
    readable checkpoint, is damaged (digest mismatch), or lacks a step. FileNotFoundError
    passes through (a watcher may lose a race with keep-N rotation). A checkpoint without a
    digest (or with an empty one) is refused: its content cannot be checked. Those written
    before digests existed load only when CIFARLAB_TRUST_UNDIGESTED=1 says to trust them."""
    try:
        # torch warns on stderr about some damaged files (an unknown pickle protocol) before
        # it fails: the one-line error below says all there is to say
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # unpickling errors come in many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            first = "it holds Python objects a checkpoint never holds; refused without loading them"
        raise CheckpointError(f"{path}: not a readable cifarlab checkpoint ({first})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        what = type(state).__name__ if not isinstance(state, dict) else "a dict without a step"
        raise CheckpointError(f"{path}: not a cifarlab checkpoint (it holds {what})")
    expected = state.get(DIGEST_KEY)
    if not isinstance(expected, str) or not expected:
        if os.environ.get(TRUST_UNDIGESTED) == "1":
            return state
        raise CheckpointError(f"{path}: has no SHA-256 digest, so its content cannot be checked; "
                              f"refused (one written before digests existed: set "
                              f"{TRUST_UNDIGESTED}=1 to trust it)")  # fmt: skip
    if content_digest(state) != expected:
        raise CheckpointError(f"{path}: damaged (its content no longer matches its SHA-256 digest)")
    check_values(state, path)
    return state


MAX_STEP = 10**12  # beyond any run: a larger step is a corrupted or forged file


def check_values(state: dict, path: Path | str) -> None:
    """What a digest cannot tell (it proves only that the file is as written): the step and
    the process count in range, and the weights finite. CheckpointError, by name."""
    step = state["step"]
    if not 0 <= step <= MAX_STEP:
        raise CheckpointError(f"{path}: step {step} is out of range (0 to {MAX_STEP:.0e})")
    world = state.get("world_size", 1)
    if not isinstance(world, int) or world < 1:
        raise CheckpointError(f"{path}: world_size {world!r} is not a process count")
    for part in ("model", "average"):
        weights = state.get(part)
        for name, value in tensors_in(weights, part):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise CheckpointError(f"{path}: {name} holds NaN or infinite values; refused")


def tensors_in(value: Any, prefix: str):
    """(path, tensor) for every tensor inside nested dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from tensors_in(item, f"{prefix}/{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from tensors_in(item, f"{prefix}/{i}")


def checkpoint_part(state: dict, key: str, path: Path | str) -> Any:
    """state[key], or a one-line CheckpointError naming the file and the missing part."""
    if key not in state:
        raise CheckpointError(f"{path}: not a complete cifarlab checkpoint (no {key!r})")
    return state[key]


def remove_stale_temporaries(run_dir: Path) -> None:
    """Temporary files of checkpoint writers that were killed (their pid is gone)."""
    remove_dead_writers_temporaries(run_dir, ".ckpt-*.pt.tmp-*")


def saved_average(state: dict, path: Path | str) -> Any:
    """The weight average's state; checkpoints written before recipes were modules call it "ema"."""
    for key in ("average", "ema"):
        if key in state:
            return state[key]
    return checkpoint_part(state, "average", path)
