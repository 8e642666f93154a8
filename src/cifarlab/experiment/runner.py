"""Running an experiment's seeds on this machine: each one a `cifarlab train` process, so a
seed costs what the same command typed by hand costs, and a seed's run directory is an
ordinary run (it resumes by itself from its newest checkpoint)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import CifarlabError
from ..run.lock import RunDirectoryBusy, RunLock
from ..run.status import read_status
from .results import seed_result
from .spec import Experiment, seed_dir

LOCK_WAIT_SECONDS = (
    120.0  # a trainer orphaned by a killed experiment writes its checkpoint, then goes
)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the experiment process dies, however it dies,
    so a killed experiment leaves no trainer behind (SIGTERM: it checkpoints and stops)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the orphan finishes its seed, and the rerun waits for its lock


def wait_until_free(run_dir: Path, timeout: float = LOCK_WAIT_SECONDS) -> None:
    """Wait for any trainer still holding the seed's run directory to let go."""
    if not (run_dir / ".lock").exists():
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            RunLock(run_dir).acquire().release()
            return
        except RunDirectoryBusy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


class SeedProcess:
    """One seed's `cifarlab train`, its output appended to EXP_DIR/seed-N.log (and echoed)."""

    def __init__(self, experiment: Experiment, seed: int, threads: int | None, echo: bool,
                 ended: queue.Queue) -> None:  # fmt: skip
        self.seed, self.ended = seed, ended
        self.log_path = Path(experiment.exp_dir) / f"seed-{seed}.log"
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            experiment.command(seed, threads), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            start_new_session=True,  # a terminal's Ctrl-C reaches the runner alone: it passes one on
        )  # fmt: skip
        self.copier = threading.Thread(target=self._copy, args=(echo,), daemon=True)
        self.copier.start()

    def _copy(self, echo: bool) -> None:
        for line in self.process.stdout:
            self.log.write(line)
            self.log.flush()
            if echo:
                sys.stdout.write(f"[seed {self.seed}] {line.decode(errors='replace')}")
                sys.stdout.flush()
        self.process.wait()
        self.ended.put(self)  # wakes the runner at once: no polling delay between seeds

    def finish(self) -> int:
        code = self.process.wait()
        self.copier.join()
        self.log.close()
        return code


def run_seeds(experiment: Experiment, seeds: list[int], jobs: int = 1, threads: int | None = None,
              say=print, take_ctrl_c: bool = True) -> dict[int, int]:  # fmt: skip
    """Train every unfinished seed, `jobs` at a time; returns {seed: exit code} of those run.
    SIGTERM or Ctrl-C: the running seeds checkpoint and stop (rerun the command to go on).
    take_ctrl_c False (a program calling us): its Ctrl-C stays a KeyboardInterrupt, raised
    once the trainers have checkpointed and stopped."""
    todo = []
    for seed in seeds:
        if seed_result(seed_dir(experiment.exp_dir, seed)) is not None:
            say(f"seed {seed}: finished before, skipped")
        else:
            todo.append(seed)
    running: list[SeedProcess] = []
    ended: queue.Queue = queue.Queue()
    codes: dict[int, int] = {}
    stopping: list[int] = []

    def stop(signum, frame) -> None:
        """SIGTERM or Ctrl-C: passed on to the running trainers (each in its own session, so
        the terminal's Ctrl-C reaches only us), which checkpoint and exit; no new seed starts.
        Every signal is passed on, as `cifarlab train` would receive it typed by hand: a
        second one stops a trainer at once, from its last checkpoint."""
        stopping.append(signum)
        for p in running:
            if p.process.poll() is None:
                p.process.send_signal(signum)

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT) if take_ctrl_c else (signal.SIGTERM,):
        try:  # left alone if ignored (`nohup ... &`) or taken by a program that calls us
            if signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler):
                previous[signum] = signal.signal(signum, stop)
        except ValueError:  # called from a thread other than the main one
            pass
    try:
        while (todo and not stopping) or running:
            while todo and len(running) < jobs and not stopping:
                seed = todo.pop(0)
                wait_until_free(seed_dir(experiment.exp_dir, seed))
                say(f"seed {seed}: training (log: {experiment.exp_dir / f'seed-{seed}.log'})")
                running.append(SeedProcess(experiment, seed, threads, echo=jobs == 1, ended=ended))
                if stopping:  # the signal came while this trainer was being started
                    running[-1].process.send_signal(stopping[-1])
            if running:
                p = ended.get()
                running.remove(p)
                codes[p.seed], line = settle(experiment, p.seed, p.finish())
                say(line)
    except KeyboardInterrupt:  # a caller's own Ctrl-C handling: still no trainer left behind
        stop(signal.SIGINT, None)
        for p in running:
            codes[p.seed] = p.finish()
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if stopping:
        raise SeedsStopped(stopping[0])
    return codes


class SeedsStopped(CifarlabError):
    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} ({signum}); "
                         "rerun the same command to go on")  # fmt: skip
        self.signum = signum


def stopped_at_checkpoint(experiment: Experiment, seed: int) -> int | None:
    """The step at which the seed's trainer stopped on a signal, having written a checkpoint
    there (whoever sent the signal); None if it finished, failed, or never began."""
    status = read_status(seed_dir(experiment.exp_dir, seed)) or {}
    if (
        status.get("state") == "interrupted"
        and seed_result(seed_dir(experiment.exp_dir, seed)) is None
    ):
        return status.get("step")
    return None


def settle(experiment: Experiment, seed: int, code: int) -> tuple[int, str]:
    """The seed's exit code as the experiment counts it, and the line that reports the seed.
    A seed whose result is written finished, whatever its trainer's code: a signal that came
    as the trainer exited after writing it (a watcher waiting for result.json) undoes nothing."""
    result = seed_result(seed_dir(experiment.exp_dir, seed))
    if result is not None:
        return 0, (f"seed {seed}: {result['accuracy']:.2%} in {result['seconds']:.0f} s "
                   f"({result['flops']:.3g} training FLOPs)")  # fmt: skip
    step = stopped_at_checkpoint(experiment, seed)
    if step is not None:
        return code, f"seed {seed}: stopped at step {step}, checkpoint written"
    if code in (-signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGTERM):
        return code, (
            f"seed {seed}: stopped in start-up; a rerun starts it from its last checkpoint, if any"
        )
    if code < 0:  # SIGKILL and the like (the kernel's out-of-memory killer): no last checkpoint
        return code, (f"seed {seed}: killed by signal {-code}, no checkpoint written as it "
                      "died; a rerun resumes it from its last checkpoint, if any")  # fmt: skip
    tail = _last_line(Path(experiment.exp_dir) / f"seed-{seed}.log")
    return code, f"seed {seed}: failed (exit {code}): {tail}"


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    return lines[-1] if lines else "no output"


def default_threads(jobs: int) -> int | None:
    """With several seeds at once, the cores divided between them; one seed: torch's default."""
    if jobs <= 1:
        return None
    return max(1, (os.cpu_count() or 1) // jobs)
