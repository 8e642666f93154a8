"""Named moments where a fault test can freeze the trainer, so that it kills it exactly there.

The kill suite (tests/faults/test_fault_kills.py) SIGKILLs training at chosen moments (in
start-up, in the middle of a step, inside a checkpoint write) instead of at random times,
and must know that each kill landed where it meant. Two environment variables ask for it:

    CIFARLAB_PAUSE_AT=POINT[@STEP]   start, step or checkpoint; STEP: that step only
    CIFARLAB_PAUSE_MARK=FILE         where to say "POINT STEP PID" when the point is reached

On reaching the point, the process appends its line to FILE and stops itself (SIGSTOP); the
test reads the line, then SIGKILLs the process tree, as a crashing machine would. Nothing
else changes: with the variables unset, `reached` is one dictionary lookup.

Points, with the step they carry:
    start        the run directory is locked and its config written; nothing trained yet
    step N       step N's forward pass and loss are done; its backward and update are not
    checkpoint N the checkpoint of step N is in its temporary file, not yet renamed
"""

from __future__ import annotations

import os
import signal

from .errors import ConfigError

POINTS = ("start", "step", "checkpoint")
PAUSE_AT, PAUSE_MARK = "CIFARLAB_PAUSE_AT", "CIFARLAB_PAUSE_MARK"


def _requested() -> tuple[str, int | None, str] | None:
    spec = os.environ.get(PAUSE_AT)
    if not spec:
        return None
    point, _, step = spec.partition("@")
    mark = os.environ.get(PAUSE_MARK, "")
    if point not in POINTS or (step and not step.isdigit()) or not mark:
        raise ConfigError(f"{PAUSE_AT}={spec!r}: expected one of {', '.join(POINTS)}, "
                          f"optionally @STEP, with {PAUSE_MARK} naming a file")  # fmt: skip
    return point, int(step) if step else None, mark


def reached(point: str, step: int | None = None) -> None:
    """Pause here if a test asked for this point (and step)."""
    if PAUSE_AT not in os.environ:
        return
    requested = _requested()
    if requested is None:
        return
    wanted, wanted_step, mark = requested
    if point != wanted or (wanted_step is not None and step != wanted_step):
        return
    with open(mark, "a") as f:
        f.write(f"{point} {step if step is not None else '-'} {os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGSTOP)
