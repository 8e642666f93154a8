"""A recipe's measured frontier: the accuracy its configuration reached at several sizes
and run lengths, from which `--budget` picks the size and the length (train/budget.py).

The points are means over seeds from `cifarlab experiment show`; between two measured
lengths of one size the accuracy is interpolated linearly in log(epochs) (each doubling of
the run buys about the same points); below a size's shortest measured run nothing is
predicted (the size is not offered), and beyond its longest the longest's accuracy is
assumed: a longer run is never promised more than was measured.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Measured:
    value: int  # the varied setting's value, e.g. width 128
    epochs: float  # the run's length in passes over the training set
    accuracy: float  # mean final test accuracy over the seeds, percent
    seeds: int
    experiment: str = ""  # the saved experiment it comes from, within the frontier's source


@dataclass(frozen=True)
class Frontier:
    setting: str  # the Params field --budget chooses, e.g. "width"
    points: tuple[Measured, ...]
    source: str  # the folder of the saved experiments the points come from
    # Other settings that shape the network with the chosen one and were measured at their
    # defaults: where a run sets one, the points do not describe its network.
    pinned: tuple[str, ...] = ()

    def set_in(self, asked: dict) -> list[str]:
        """The settings in `asked` that change the network this frontier describes: the
        chosen one itself or a pinned one."""
        return [name for name in (self.setting, *self.pinned) if name in asked]

    def values(self) -> list[int]:
        return sorted({p.value for p in self.points})

    def predicted(self, value: int, epochs: float) -> float | None:
        """Accuracy (percent) expected of `value` trained `epochs`, or None below its
        shortest measured run (or for a value never measured)."""
        curve = sorted((p.epochs, p.accuracy) for p in self.points if p.value == value)
        if not curve or epochs < curve[0][0]:
            return None
        if epochs >= curve[-1][0]:
            return curve[-1][1]
        for (e0, a0), (e1, a1) in itertools.pairwise(curve):
            if epochs <= e1:
                return a0 + (a1 - a0) * math.log(epochs / e0) / math.log(e1 / e0)
        raise AssertionError("unreachable: epochs lies within the curve")

    def ranked(self, epochs_by_value: dict[int, float]) -> list[tuple[float, int, float]]:
        """(predicted accuracy, value, epochs) for every value that has a prediction at the
        epochs it can afford, best first; equal predictions go to the smaller value (less
        work a step, so the estimate of what fits is the safer one)."""
        options = []
        for value, epochs in epochs_by_value.items():
            accuracy = self.predicted(value, epochs)
            if accuracy is not None:
                options.append((accuracy, value, epochs))
        return sorted(options, key=lambda o: (-o[0], o[1]))
