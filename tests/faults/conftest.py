"""Helpers for the fault suite: commands run as a user runs them, in their own process,
and the promise every refusal keeps: one line, naming the problem, no traceback."""

import os
import shutil
import subprocess
import sys

import pytest

SMALL = ["--synthetic", "--set", "synthetic_train_per_class=10", "--set", "synthetic_test_per_class=3",
         "--batch-size", "16", "--threads", "1", "--no-progress"]  # fmt: skip


def cli(*args, env=None, preexec_fn=None, timeout=300):
    """`cifarlab ARGS` in a fresh process -> CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-m", "cifarlab", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})},
                          preexec_fn=preexec_fn)  # fmt: skip


def proc_stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name: state, parent pid, ..."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants, root first (torchrun puts its workers in process groups
    of their own, so a process group does not reach them). Stop the root first if it must
    start no new process while the tree is listed."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(proc_stat(int(entry))[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def signal_tree(pid: int, signum: int) -> None:
    for member in process_tree(pid):
        try:
            os.kill(member, signum)
        except ProcessLookupError:
            pass


def assert_one_line_error(done, *fragments, code=1):
    """Refused: exit `code`, stderr exactly one line, each fragment in it, no traceback."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == code, (done.returncode, done.stdout[-2000:], done.stderr[-4000:])
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr and "weights_only=False" not in done.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def assert_usage_error(done, *fragments):
    """A flag refused by the parser: exit 2, usage then one error line naming the flag."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    error = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert len(error) == 1, done.stderr
    for fragment in fragments:
        assert fragment in error[0], (fragment, error[0])


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """A finished 8-step synthetic tutorial run with checkpoints at 4 and 8."""
    run = tmp_path_factory.mktemp("faults") / "run"
    done = cli("train", *SMALL, "--run-dir", run, "--max-steps", 8, "--checkpoint-every", 4)
    assert done.returncode == 0, done.stderr
    return run


@pytest.fixture
def run_copy(small_run, tmp_path):
    """A copy of small_run that a test may damage."""
    copy = tmp_path / "run"
    shutil.copytree(small_run, copy)
    return copy
