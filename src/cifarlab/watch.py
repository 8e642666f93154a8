"""`cifarlab eval --watch`: evaluate each new checkpoint of a run once, beside its training.

Reads only: checkpoints appear by atomic rename, so a half-written one is never seen; one
removed by the trainer's keep-N rotation before its turn is skipped with a note. Stops when
the trainer reports it has finished (status.json), when the trainer is gone, or on Ctrl-C.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from .run.checkpoint import list_checkpoints
from .run.status import read_status, trainer_alive


def watch_run(
    run_dir: Path,
    evaluate: Callable[[int, Path], None],
    *,
    interval_secs: float = 300.0,
    already_done: Callable[[int], bool] = lambda step: False,
    log: Callable[[str], None] = print,
    poll_secs: float = 1.0,
    checkpoint_every: int | None = None,
) -> int:
    """Call evaluate(step, path) once per checkpoint as it appears; return how many ran.

    Looks for new checkpoints every `interval_secs` (300 s, as the original), and sooner
    when the trainer stops. With `checkpoint_every`, says at the end how many checkpoints
    the trainer's keep-N rotation removed before they could be evaluated.
    """
    run_dir = Path(run_dir)
    seen: set[int] = set()  # every checkpoint step listed at some point
    lost: set[int] = set()  # listed, but removed before its turn
    evaluated = 0
    log(f"watching {run_dir} for new checkpoints every {interval_secs:g} s (Ctrl-C to stop)")
    while True:
        # Read the trainer's state before listing: once it has finished or died, this
        # listing is complete, so evaluating it and then stopping misses nothing.
        status = read_status(run_dir)
        ended = _ended(status)
        for step, path in list_checkpoints(run_dir):
            if step in seen:
                continue
            seen.add(step)
            if already_done(step):
                continue
            try:
                evaluate(step, path)
                evaluated += 1
            except FileNotFoundError:
                lost.add(step)
                log(
                    f"{path.name} was removed by the trainer's rotation before it could be evaluated; skipped"
                )
        if ended:
            log(f"{ended}, last checkpoint at step {max(seen, default=0)}; stopping")
            _report_rotated(seen, lost, checkpoint_every, log)
            return evaluated
        deadline = time.monotonic() + interval_secs
        while time.monotonic() < deadline and not _ended(read_status(run_dir)):
            time.sleep(min(poll_secs, max(0.0, deadline - time.monotonic())))


def _ended(status: dict | None) -> str | None:
    """Why the trainer will write no more checkpoints, or None while it runs."""
    if status is None:
        return None
    if status["state"] != "running":
        return f"training {status['state']}"
    if not trainer_alive(status):
        return f"the trainer (pid {status.get('pid')}) is gone without finishing"
    return None


def _report_rotated(seen: set[int], lost: set[int], checkpoint_every: int | None, log) -> None:
    expected = set(lost)
    if checkpoint_every and seen:
        expected |= set(range(checkpoint_every, max(seen) + 1, checkpoint_every))
    missed = sorted(expected - (seen - lost))
    if missed:
        shown = ", ".join(map(str, missed[:5])) + (", ..." if len(missed) > 5 else "")
        log(f"{len(missed)} checkpoint(s) were removed by the trainer's keep-N rotation before they "
            f"could be evaluated (steps {shown}); a shorter --interval-secs or a larger "
            "keep_checkpoints evaluates them all")  # fmt: skip
