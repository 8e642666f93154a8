"""Learning-rate schedules as pure functions of the step: no counters, nothing to save."""

from __future__ import annotations

import math


def staircase_decay_steps(num_train_examples: int, batch_size: int, epochs_per_decay: float) -> int:
    """Steps between decays: int(50000 / 128 * 350) = 136,718 for the tutorial."""
    return max(1, int(num_train_examples / batch_size * epochs_per_decay))


def staircase_learning_rate(
    step: int, initial: float, decay_factor: float, decay_steps: int
) -> float:
    """initial * decay_factor ** floor(step / decay_steps): the rate used for step `step` (0-based)."""
    return initial * decay_factor ** math.floor(step / decay_steps)
