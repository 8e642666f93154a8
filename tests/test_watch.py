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
    assert "is gone without finishing, last checkpoint at step 20; stopping" in messages[-1]


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
    assert "training finished, last checkpoint at step 15; stopping" in messages


def test_checkpoints_written_while_evaluating_are_evaluated_even_if_the_trainer_then_dies(tmp_path):
    # Regression: the watcher checked the trainer's liveness after its listing, so
    # checkpoints written during an evaluation by a trainer that then died were never seen.
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    save_checkpoint(tmp_path, 10, {"step": 10})
    write_status(tmp_path, "running", 0, 100, pid=trainer.pid)
    seen, messages = [], []

    def evaluate(step, path):
        seen.append(step)
        if step == 10:  # meanwhile: two more checkpoints, then the trainer is killed
            save_checkpoint(tmp_path, 20, {"step": 20})
            save_checkpoint(tmp_path, 30, {"step": 30})
            trainer.kill()
            trainer.wait()

    watch_run(tmp_path, evaluate, interval_secs=0.1, log=messages.append, checkpoint_every=10)
    assert seen == [10, 20, 30]
    assert "last checkpoint at step 30" in messages[-1]


def test_says_how_many_checkpoints_rotation_took_before_their_turn(tmp_path):
    for step in (40, 50):  # keep-2 rotation already removed 10, 20, 30
        save_checkpoint(tmp_path, step, {"step": step})
    write_status(tmp_path, "finished", 50, 50)
    messages = []
    watch_run(
        tmp_path,
        lambda step, path: None,
        interval_secs=0.1,
        log=messages.append,
        checkpoint_every=10,
    )
    assert "3 checkpoint(s) were removed by the trainer's keep-N rotation" in messages[-1]
    assert "(steps 10, 20, 30)" in messages[-1]
