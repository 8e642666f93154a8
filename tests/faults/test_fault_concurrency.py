"""Concurrent use of one run directory: one trainer owns it; readers are welcome."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from cifarlab.run.checkpoint import list_checkpoints, load_checkpoint

from .conftest import SMALL, assert_one_line_error, cli, signal_tree

pytestmark = pytest.mark.slow


def _torchrun(*args):
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    return [
        torchrun,
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "cifarlab",
        "train",
        *map(str, args),
    ]


def _wait_for(path, process, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None and time.time() < deadline, process.communicate()[0]
        time.sleep(0.05)


def test_while_a_two_process_job_trains_other_trainers_are_refused_and_readers_work(tmp_path):
    run = tmp_path / "run"
    steps = 400
    # A gentler rate than the tutorial's: many steps of 32 over 100 made-up images at 0.1 can blow up.
    job = subprocess.Popen(_torchrun(*SMALL, "--run-dir", run, "--max-steps", steps, "--checkpoint-every", 20,
                                     "--set", "learning_rate=0.02"),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)  # fmt: skip
    _wait_for(run / "ckpt-00000020.pt", job)
    # Held mid-run (torchrun and both workers stopped, the run directory still theirs), so
    # the refusals below cannot race the job's end, however fast or slow the machine is.
    signal_tree(job.pid, signal.SIGSTOP)
    try:
        held_at = list_checkpoints(run)[-1][0]
        assert held_at < steps
        owner = json.loads((run / "status.json").read_text())["pid"]
        single = cli("train", *SMALL, "--run-dir", run, "--max-steps", steps, "--seed", 7)
        assert_one_line_error(single, f"is in use by process {owner}")
        second = subprocess.run(
            _torchrun(*SMALL, "--run-dir", run, "--max-steps", steps),
            capture_output=True,
            text=True,
        )
        assert second.returncode != 0
        assert f"is in use by process {owner}" in second.stdout + second.stderr
        reader = cli("eval", run, "--json", "--threads", 1)  # reading beside training is fine
        assert reader.returncode == 0, reader.stderr
        assert list_checkpoints(run)[-1][0] == held_at  # the job was still held throughout
    finally:
        signal_tree(job.pid, signal.SIGCONT)
    out, _ = job.communicate(timeout=300)
    assert job.returncode == 0, out
    assert list_checkpoints(run)[-1][0] == steps
    assert (
        load_checkpoint(run / f"ckpt-{steps:08d}.pt")["world_size"] == 2
    )  # the owner's, untouched
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == sorted(set(train_steps))  # one writer: no mixed, repeated steps
