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
) -> int:
    """Call evaluate(step, path) once per checkpoint as it appears; return how many ran.

    Looks for new checkpoints every `interval_secs` (300 s, as the original), and sooner
    when the trainer reports it has stopped.
    """
    run_dir = Path(run_dir)
    done: set[int] = set()
    evaluated = 0
    log(f"watching {run_dir} for new checkpoints every {interval_secs:g} s (Ctrl-C to stop)")
    while True:
        status = read_status(run_dir)  # read before listing: a final state means the list is final
        for step, path in list_checkpoints(run_dir):
            if step in done:
                continue
            done.add(step)
            if already_done(step):
                continue
            try:
                evaluate(step, path)
                evaluated += 1
            except FileNotFoundError:
                log(
                    f"{path.name} was removed by the trainer's rotation before it could be evaluated; skipped"
                )
        if status is not None and status["state"] != "running":
            log(f"training {status['state']} at step {status['step']}; stopping")
            return evaluated
        if status is not None and not trainer_alive(status):
            log(
                f"the trainer (pid {status['pid']}) is gone without finishing, last at step {status['step']}; stopping"
            )
            return evaluated
        deadline = time.monotonic() + interval_secs
        while time.monotonic() < deadline:  # short sleeps: react quickly when training ends
            time.sleep(min(poll_secs, max(0.0, deadline - time.monotonic())))
            state = read_status(run_dir)
            if state is not None and state["state"] != "running":
                break
