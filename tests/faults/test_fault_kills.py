"""SIGKILL at chosen moments, for every kind of recipe state, on 1 and 2 processes: every kill
lands where it was aimed, no checkpoint is ever unreadable, and the run, resumed after each
kill, ends in the same state as an uninterrupted one: weights, weight average, optimizer
buffers, the data position and its random streams, the hard-example losses.

A kill is aimed with cifarlab/pause_points.py: the trainer, asked to, freezes itself at a
named point (start-up, the middle of step N, inside the write of checkpoint N) and says so in
a file; the test then SIGKILLs the whole process tree. A kill that does not land there (the
point never reached, the process gone before the kill) fails the test.

CI runs one chosen plan per recipe: start-up, mid-step, inside a checkpoint write at the
epoch where hard-example selection starts, the first step of selection, the first step after
the whitening bias freezes, inside the final checkpoint's write. The soak adds random plans:
    CIFARLAB_FAULT_TRIALS=20 python -m pytest tests/faults/test_fault_kills.py -s
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cifarlab.run.checkpoint import DIGEST_KEY, list_checkpoints, load_checkpoint

from .conftest import SMALL, assert_one_line_error, cli, proc_stat, signal_tree

TRIALS = int(os.environ.get("CIFARLAB_FAULT_TRIALS", "1"))  # the chosen plan, then random ones
STEPS, EVERY = 25, 5
# 100 images in batches of 20: 5 steps an epoch. For the fast recipes hard-example selection
# starts with epoch 2 (step 11) and the whitening bias is frozen from epoch 3 on (step 16).
ARGS = ["--synthetic", "--set", "synthetic_train_per_class=10", "--set", "synthetic_test_per_class=3",
        "--batch-size", "20", "--threads", "1", "--no-progress", "--max-steps", str(STEPS),
        "--checkpoint-every", str(EVERY), "--set", "keep_checkpoints=2"]  # fmt: skip
RECIPES = {
    "tutorial": ["--recipe", "tutorial"],
    "fast": ["--recipe", "fast", "--set", "width=64"],  # Muon, selection, lookahead, frozen bias
    "fast-muon": ["--recipe", "fast-muon", "--set", "width=64", "--set", "hard_keep=0.7"],
}
CHOSEN = [("start", None), ("step", 8), ("checkpoint", 10), ("step", 11), ("step", 16),
          ("checkpoint", STEPS)]  # fmt: skip
ORDER = {"start": 0, "step": 1, "checkpoint": 2}  # at one step: forward, then the checkpoint
# wall time; the run directory's own path; which commands trained it (more after kills:
# checked on its own below)
NOT_COMPARED = {"seconds", "config", "history", DIGEST_KEY}


def _random_plan(rng: random.Random, kills: int = 3) -> list[tuple[str, int | None]]:
    """Kills in the order a run meets them: each point lies past the previous one, so the
    resumed run, which restarts at its last checkpoint, always reaches it."""
    candidates = [("start", None), *[("step", s) for s in range(1, STEPS + 1)],
                  *[("checkpoint", s) for s in range(EVERY, STEPS + 1, EVERY)]]  # fmt: skip
    plan = rng.sample(candidates, kills)
    return sorted(plan, key=lambda p: (p[1] or 0, ORDER[p[0]]))


def _command(processes: int, recipe: str, run: Path) -> list[str]:
    args = ["train", *RECIPES[recipe], *ARGS, "--run-dir", str(run)]
    if processes == 1:
        return [sys.executable, "-m", "cifarlab", *args]
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    return [torchrun, "--standalone", f"--nproc-per-node={processes}", "-m", "cifarlab", *args]


def _state_of(pid: int) -> str:
    try:
        return proc_stat(pid)[0]
    except OSError:
        return "gone"


def _kill_at(command, env, mark: Path, point: str, step: int | None) -> str:
    """Start the command asking it to pause at (point, step); once a process has frozen
    there, SIGKILL the whole tree. Returns the line the paused process wrote."""
    mark.unlink(missing_ok=True)
    where = point if step is None else f"{point}@{step}"
    env = {**env, "CIFARLAB_PAUSE_AT": where, "CIFARLAB_PAUSE_MARK": str(mark)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while True:
        said = mark.read_text() if mark.exists() else ""
        line = said.split("\n")[0] if "\n" in said else ""  # a whole line, not one being written
        if line and _state_of(int(line.split()[2])) == "T":  # frozen at the point
            break
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) without pausing at {where}: "
                        f"{process.stderr.read().decode()[-3000:]}")  # fmt: skip
        assert time.monotonic() < deadline, f"no pause at {where} in 300 s"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGSTOP)  # the root starts nothing new while the tree is listed
    signal_tree(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the kill did not end the run"
    process.stderr.close()
    return line


def _differences(a, b, path: str = "") -> list[str]:
    """Where two checkpoints' contents differ: tensors bit for bit, everything else by ==."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
        return [] if same and torch.equal(a, b) else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path} keys"]
        return [d for k in a if not (path == "" and k in NOT_COMPARED)
                for d in _differences(a[k], b[k], f"{path}/{k}")]  # fmt: skip
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [f"{path} length"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in _differences(x, y, f"{path}/{i}")
        ]
    return [] if a == b or (a != a and b != b) else [path]  # NaN equals NaN here


def _check_checkpoints(run: Path) -> int:
    """Load every checkpoint (a damaged one raises); returns the newest step."""
    found = list_checkpoints(run)
    for _, path in found:
        load_checkpoint(path)
    return found[-1][0] if found else 0


def _kill_trial(processes, recipe, run, plan, env, mark) -> None:
    command = _command(processes, recipe, run)
    for point, step in plan:
        before = _check_checkpoints(run)
        line = _kill_at(command, env, mark, point, step)
        said_point, said_step = line.split()[:2]
        assert (said_point, said_step) == (point, str(step) if step is not None else "-"), line
        newest = _check_checkpoints(run)  # every checkpoint readable after the kill
        if point == "start":
            assert newest == before  # nothing trained or written
        elif point == "step":
            assert before <= newest < step  # killed before step `step` was saved
        else:  # inside the write: a temporary file, no checkpoint under the final name
            assert list(run.glob(f".ckpt-{step:08d}.pt.tmp-*")), "no partial checkpoint"
            assert not (run / f"ckpt-{step:08d}.pt").exists()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stdout or processes > 1, done.stdout[-2000:]


def _run_all(processes: int, recipe: str, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("CIFARLAB_PAUSE_AT", None)
    straight = tmp_path / "straight"
    subprocess.run(_command(processes, recipe, straight), env=env, check=True, capture_output=True)
    reference = load_checkpoint(straight / f"ckpt-{STEPS:08d}.pt")
    rng = random.Random(f"{recipe}-{processes}")
    plans = [CHOSEN] + [_random_plan(rng) for _ in range(TRIALS - 1)]
    for trial, plan in enumerate(plans):
        run = tmp_path / f"trial-{trial}"
        _kill_trial(processes, recipe, run, plan, env, tmp_path / "paused")
        final = load_checkpoint(run / f"ckpt-{STEPS:08d}.pt")
        differ = _differences(reference, final)
        assert not differ, f"trial {trial} ({plan}) differs from the straight run in {differ[:5]}"
        assert final["step"] == STEPS and "data" in final
        # every command that trained it ran here, as the straight run did, each from a step
        # at or past the previous one's
        (only,) = reference["history"]
        starts = [entry["from_step"] for entry in final["history"]]
        assert starts[0] == 0 and starts == sorted(starts), final["history"]
        assert all({**entry, "from_step": 0} == only for entry in final["history"])
    print(f"\n{recipe}, {processes} process(es): {len(plans)} runs, "
          f"{sum(len(p) for p in plans)} SIGKILLs each where aimed, every checkpoint readable, "
          "every final state bit-identical to the straight run's")  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_sigkill_at_chosen_points_resumes_bit_identically(recipe, tmp_path):
    _run_all(1, recipe, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["tutorial", "fast"])
def test_sigkill_of_a_torchrun_tree_resumes_bit_identically(recipe, tmp_path):
    _run_all(2, recipe, tmp_path)


def test_the_random_plans_are_reachable_in_order():
    rng = random.Random(0)
    for _ in range(200):
        plan = _random_plan(rng)
        keys = [(s or 0, ORDER[p]) for p, s in plan]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        assert all(p != "start" for p, _ in plan[1:])
        assert all(s % EVERY == 0 for p, s in plan if p == "checkpoint")


def test_a_malformed_pause_request_is_refused_in_one_line(tmp_path):
    done = cli("train", *SMALL, "--max-steps", "2", "--run-dir", tmp_path / "run",
               env={"CIFARLAB_PAUSE_AT": "middle@x", "CIFARLAB_PAUSE_MARK": str(tmp_path / "m")})  # fmt: skip
    assert_one_line_error(done, "CIFARLAB_PAUSE_AT='middle@x'", "start, step, checkpoint")
