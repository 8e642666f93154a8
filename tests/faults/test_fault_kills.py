"""SIGKILL at random moments (often inside a checkpoint write), for 1 and 2 processes:
every run resumes, no checkpoint is ever unreadable, and the final weights are
bit-identical to an uninterrupted run's.

CI runs a few trials; the soak runs more:
    CIFARLAB_FAULT_TRIALS=20 python -m pytest tests/faults/test_fault_kills.py -s
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from cifarlab.run.checkpoint import list_checkpoints, load_checkpoint

from .conftest import signal_tree

TRIALS = int(os.environ.get("CIFARLAB_FAULT_TRIALS", "2"))
KILLS_PER_TRIAL = 3  # at most; a kill lands anywhere in start-up, steps, checkpoint writes
STEPS = 60
ARGS = ["--synthetic", "--set", "synthetic_train_per_class=10", "--set", "synthetic_test_per_class=3",
        "--batch-size", "8", "--threads", "1", "--no-progress", "--max-steps", str(STEPS),
        "--checkpoint-every", "1", "--set", "keep_checkpoints=3"]  # fmt: skip


def _command(processes, run):
    if processes == 1:
        return [sys.executable, "-m", "cifarlab", "train", *ARGS, "--run-dir", str(run)]
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    return [torchrun, "--standalone", f"--nproc-per-node={processes}", "-m", "cifarlab", "train",
            *ARGS, "--run-dir", str(run)]  # fmt: skip


def _kill_tree(pid):
    """SIGKILL a process and all its descendants at once, as a crashing machine would.
    The root is stopped first, so it starts no new process while the tree is listed."""
    os.kill(pid, signal.SIGSTOP)
    signal_tree(pid, signal.SIGKILL)


def _final_weights(run):
    state = load_checkpoint(run / f"ckpt-{STEPS:08d}.pt")
    return {**{f"model/{k}": v for k, v in state["model"].items()},
            **{f"average/{k}": v for k, v in state["average"].items()}}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_sigkill_at_random_moments_resumes_bit_identically(tmp_path, processes):
    straight = tmp_path / "straight"
    started = time.monotonic()
    subprocess.run(_command(processes, straight), check=True, capture_output=True)
    duration = time.monotonic() - started  # start-up, 60 steps and 60 checkpoint writes
    reference = _final_weights(straight)
    rng = random.Random(processes)
    kills = unreadable = mid_write = 0
    for trial in range(TRIALS):
        run = tmp_path / f"trial-{trial}"
        for attempt in range(KILLS_PER_TRIAL + 1):  # the last attempt runs to the end
            process = subprocess.Popen(_command(processes, run), stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE)  # fmt: skip
            delay = rng.uniform(0.2, 1.0) * duration if attempt < KILLS_PER_TRIAL else None
            try:
                process.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                _kill_tree(process.pid)
                process.wait()
                kills += 1
                mid_write += bool(list(run.glob(".ckpt-*.tmp-*")))  # killed inside a write
            for _, path in list_checkpoints(run):
                try:
                    load_checkpoint(path)
                except Exception:
                    unreadable += 1
            if process.returncode == 0:
                break
            assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-3000:]
        assert process.returncode == 0, f"trial {trial} did not finish"
        got = _final_weights(run)
        assert all(torch.equal(reference[k], got[k]) for k in reference), f"trial {trial} differs"
    print(
        f"\n{processes} process(es): {TRIALS}/{TRIALS} runs finished after {kills} SIGKILLs "
        f"({mid_write} inside a checkpoint write), {unreadable} unreadable checkpoints, "
        "final weights bit-identical"
    )
    assert unreadable == 0
