"""The watcher's stopping rules, on real files (the concurrent-training case is in test_evaluate)."""

import subprocess
import sys

from cifarlab.run.checkpoint import save_checkpoint
from cifarlab.run.status import write_status
from cifarlab.watch import watch_run


def _dead_pid():
    return int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
        ).stdout
    )


def test_stops_when_the_trainer_died_without_finishing(tmp_path):
    for step in (10, 20):
        save_checkpoint(tmp_path, step, {"step": step})
    write_status(tmp_path, "running", 20, 100, pid=_dead_pid())
    seen, messages = [], []
    count = watch_run(
        tmp_path, lambda step, path: seen.append(step), interval_secs=0.1, log=messages.append
    )
    assert seen == [10, 20] and count == 2
    assert "is gone without finishing, last at step 20" in messages[-1]


def test_skips_checkpoints_already_evaluated_and_lost_ones(tmp_path):
    for step in (5, 10, 15):
        save_checkpoint(tmp_path, step, {"step": step})
    write_status(tmp_path, "finished", 15, 15)

    def evaluate(step, path):
        if step == 10:
            raise FileNotFoundError(path)  # rotated away by the trainer before its turn
        seen.append(step)

    seen, messages = [], []
    watch_run(
        tmp_path,
        evaluate,
        interval_secs=0.1,
        already_done=lambda step: step == 5,
        log=messages.append,
    )
    assert seen == [15]
    assert any("ckpt-00000010.pt was removed" in m for m in messages)
    assert messages[-1] == "training finished at step 15; stopping"
