"""Signals that ask a training process to stop at the next step boundary."""

from __future__ import annotations

import signal


class StopRequests:
    """SIGINT / SIGTERM set a flag the loop checks after each step, so it can write a
    checkpoint at a step boundary and exit; a second signal falls through to the default.

    Installed only when training is the process's command (`cifarlab train`, torchrun's
    workers): a program that calls the trainer as a library (a notebook, a test under
    pytest) keeps its own Ctrl-C, which then interrupts training like any other code."""

    def __init__(self, install: bool = True) -> None:
        self.signal: int | None = None
        self.install = install
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # asked twice: stop now
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.signal = signum

    def __enter__(self) -> StopRequests:
        for signum in (signal.SIGINT, signal.SIGTERM) if self.install else ():
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
