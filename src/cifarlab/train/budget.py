"""`cifarlab train --budget MINUTES`: the run that fits a time budget on this machine.

A short timing run of the recipe's real training step (random images of the real shape:
the cost does not depend on pixel values) and of its evaluation gives seconds per step and
the final evaluation's cost; the run gets the steps that fit what remains (at least one
epoch; the recipes' schedules are functions of the step, so a run may end mid-epoch).

A recipe with a measured frontier (cifarlab/frontier.py: its accuracy at several widths and
lengths) gets its size chosen too: every measured size is timed on a small batch first, and
the one the frontier expects to end most accurate in the epochs it can afford here is the
one whose steps are then timed in full. The chosen fields (max_steps, and the width) are
saved in config.json like any other, so a rerun is the same run.
"""

from __future__ import annotations

import dataclasses
import itertools
import time

import torch

from ..config import TrainConfig, build_config
from ..data.layout import dataset_info
from ..errors import ConfigError
from ..frontier import Frontier
from ..recipes import TrainingPlan

STARTUP_SECONDS = 15.0  # imports, data loading and checking, writing the first files
# A real run's steps, averaged over the run, measured up to 9% slower than the timing run's
# few (BENCHMARKS.md, "A time budget": 0-4% on Xeon, -3 to +3% on EPYC Zen 4, 8-9% on the AVX2
# VM, whose steps swing by 20-30% from one minute to the next); so each step is priced 10%
# above its timing, which covers every run measured. On the AVX2 VM with this margin the timing
# itself came out 3-10% above the run's steps, leaving 2.7 of 20 minutes unused.
STEP_MARGIN = 1.10
LATE_EPOCH = 1000  # an even number: epoch parity (alternating flip) is kept
MAX_STEPS_SCANNED = 10**6  # asking prepare_step this often takes about a second
# Sizes are compared on steps of this many images, scaled to the run's batch: a tenth of a
# full step each, so timing five widths costs less than one full step of the widest.
SIZE_TIMING_BATCH = 250
# What timing the chosen size in full costs afterwards, in its steps: a warm-up and three
# timed steps of each of the (at most two) kinds of step.
FULL_TIMING_STEPS = 8
# A small batch's timing, scaled, was off by up to 40% against a full step
# (benchmarks/budget_size_timing.py), which moves a size's expected accuracy by up to about
# 2 points on the frontier. So the sizes expected within CONTENDER_POINTS of the best (at
# most MAX_CONTENDERS) are timed again at the run's own batch, one step each after a
# warm-up, where that costs at most CONTENDER_SHARE of the budget.
CONTENDER_POINTS = 2.0
MAX_CONTENDERS = 3
CONTENDER_SHARE = 0.1


def _clock() -> float:
    return time.perf_counter()


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, caches, lazy initialisation
    start = _clock()
    for _ in range(repeats):
        fn()
    return (_clock() - start) / repeats


class _TimingRun:
    """The trainer's own state and step (train/loop.py) for `config` at `batch` images a
    step, on random images of the real shape, with a run length no timed step reaches, so
    schedules stay in their early, sane range."""

    def __init__(self, config: TrainConfig, device: torch.device, batch: int,
                 train_examples: int) -> None:  # fmt: skip
        from .distributed import Placement
        from .loop import build_state

        self.recipe, self.batch = config.recipe, batch
        num_classes = dataset_info(config.run.dataset).num_classes
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (2 * batch, 32, 32, 3), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, num_classes, (2 * batch,), generator=g)
        run = dataclasses.replace(
            config.run, max_steps=10**9, batch_size=batch, global_batch_size=0
        )
        long_run = dataclasses.replace(config, run=run)
        self.state = build_state(long_run, self.recipe, Placement(device), self.images, labels,
                                 num_classes)  # fmt: skip
        self.state.net.train()
        # Timed as a late epoch: a recipe whose early epochs are cheaper (progressive
        # resizing) gets a conservative estimate rather than an optimistic one.
        transform = self.state.batches.transform
        self.state.batches.transform = lambda x, generator, position: transform(
            x, generator, dataclasses.replace(position, epoch=position.epoch + LATE_EPOCH))  # fmt: skip
        # The trainer's plan of the run being sized (its length is what is sought).
        self.plan = dataclasses.replace(TrainingPlan.for_run(config, train_examples),
                                        max_steps=10**9)  # fmt: skip
        self.seconds_by_kind: dict = {}
        self.device, self.eval_batch = device, config.run.eval_batch_size

    def step_seconds(self, at_step: int, repeats: int = 3) -> float:
        """Each kind of step the recipe names (prepare_step: e.g. the fast recipes' whitening
        bias trained, then frozen) is timed once (a warm-up, then `repeats` steps), with the
        model switched as the run will. Where a proxy network chooses the batch and trains
        only every few steps, the timed steps are a whole number of its cycles (the warm-up
        and then steps `at_step`, `at_step + 1`, ...), so its training is priced at the
        share of steps the run gives it."""
        from .loop import apply_step, forward_step

        kind = self.recipe.prepare_step(self.state.model, at_step, self.plan)
        if kind not in self.seconds_by_kind:
            cycle = getattr(self.state.selector, "train_every", 1)
            repeats = -(-repeats // cycle) * cycle
            calls = itertools.count()

            def one_step() -> None:
                self.state.step = at_step + next(calls) % cycle
                apply_step(self.state, forward_step(self.state, self.recipe, self.plan))

            self.seconds_by_kind[kind] = _timed(one_step, repeats) * STEP_MARGIN
        return self.seconds_by_kind[kind]

    def eval_seconds(self, test_examples: int) -> float:
        """The final evaluation of `test_examples` images (test-time views included where
        the recipe uses them), from one batch."""
        recipe, model = self.recipe, self.state.model
        preprocess = recipe.eval_preprocess().to(self.device)
        sample = self.images[: min(self.eval_batch, len(self.images))].to(self.device)

        @torch.no_grad()
        def evaluate() -> None:
            model.eval()
            with recipe.autocast(self.device):
                x = preprocess(sample)
                recipe.tta_logits(model, x) if recipe.final_eval_tta else model(x)

        return _timed(evaluate, 1) * test_examples / sample.shape[0]


def steps_for_budget(config: TrainConfig, minutes: float, train_examples: int = 50_000,
                     test_examples: int = 10_000, device: torch.device | None = None, log=print,
                     spent: float = 0.0) -> int:  # fmt: skip
    """The most steps of `config` whose training and final evaluation fit `minutes` here,
    of which `spent` seconds are gone already."""
    begun = _clock() - spent  # the timing run is part of the budget too
    device = device or torch.device("cpu")
    batch = config.global_batch_size()
    log(f"budget {minutes:g} min: timing {config.recipe.name}'s steps at batch {batch}")
    timing = _TimingRun(config, device, batch, train_examples)
    # Every kind a run could reach, timed now, so that the budget's remainder is known: the
    # longest possible run is bounded by the first kind's count, doubled for safety.
    for at_step in range(
        min(int(2 * minutes * 60 / timing.step_seconds(0)) + 1, MAX_STEPS_SCANNED)
    ):
        timing.step_seconds(at_step)
    eval_seconds = timing.eval_seconds(test_examples)
    steps_per_epoch = timing.plan.steps_per_epoch
    spare = minutes * 60 - STARTUP_SECONDS - eval_seconds - (_clock() - begun)
    steps, used = 0, 0.0
    while steps < MAX_STEPS_SCANNED and used + timing.step_seconds(steps) <= spare:
        used += timing.step_seconds(steps)
        steps += 1
    if steps < steps_per_epoch:
        epoch = sum(timing.step_seconds(s) for s in range(steps_per_epoch))
        raise ConfigError(f"--budget {minutes:g} min: one epoch takes about "
                          f"{(epoch + eval_seconds + STARTUP_SECONDS) / 60:.1f} min "
                          "on this machine; give more time")  # fmt: skip
    per_step = ", ".join(f"{t:.2f}" for t in timing.seconds_by_kind.values())
    log(f"budget {minutes:g} min: {per_step} s a step, about {eval_seconds:.0f} s to evaluate; "
        f"{steps} steps ({steps / steps_per_epoch:.1f} epochs) fit")  # fmt: skip
    return steps


def chosen_fields(config: TrainConfig, asked: dict) -> list[str]:
    """The fields --budget sets for this configuration: max_steps, and the recipe's
    frontier setting (the width) unless the user set it or a setting the frontier was
    measured without (e.g. block 3's own width)."""
    frontier = config.recipe.budget_frontier
    if frontier is None or frontier.set_in(asked):
        return ["max_steps"]
    return [frontier.setting, "max_steps"]


def fit_budget_fields(config: TrainConfig, asked: dict, minutes: float,
                      train_examples: int = 50_000, test_examples: int = 10_000,
                      device: torch.device | None = None, log=print) -> dict:  # fmt: skip
    """{field: value} that make `config` (built from `asked`) the run of `minutes` here:
    the steps, and the size where the recipe has a measured frontier."""
    begun = _clock()
    device = device or torch.device("cpu")
    frontier = config.recipe.budget_frontier
    fields: dict = {}
    if frontier is not None and frontier.setting in chosen_fields(config, asked):
        value = choose_size(config, asked, frontier, minutes, train_examples, test_examples,
                            device, log)  # fmt: skip
        fields[frontier.setting] = value
        config = build_config(config.recipe_spec, {**asked, **fields})
    elif frontier is not None:
        names = " and ".join(frontier.set_in(asked))
        log(f"budget {minutes:g} min: {names} set, so only the steps are chosen")
    fields["max_steps"] = steps_for_budget(config, minutes, train_examples, test_examples,
                                           device, log, spent=_clock() - begun)  # fmt: skip
    return fields


def choose_size(config: TrainConfig, asked: dict, frontier: Frontier, minutes: float,
                train_examples: int, test_examples: int, device: torch.device, log) -> int:  # fmt: skip
    """The frontier value (width) expected to end most accurate in `minutes` here: each
    value's step timed on a small batch and scaled to the run's, what would be left after
    start-up, evaluation and the full timing priced in its steps, and the frontier read at
    the epochs that buys; then the values expected near the best timed at the run's own
    batch (contenders), and the frontier read again."""
    begun = _clock()
    batch = config.global_batch_size()
    small = min(SIZE_TIMING_BATCH, batch)
    name = frontier.setting
    costs = {}  # value -> (seconds a step at the run's batch, seconds to evaluate)
    for value in frontier.values():
        log(f"budget {minutes:g} min: timing {name} {value} at batch {small}")
        timing = _TimingRun(_sized(config, asked, name, value), device, small, train_examples)
        costs[value] = (timing.step_seconds(0) * batch / small, timing.eval_seconds(test_examples))
    steps_per_epoch = timing.plan.steps_per_epoch  # the run's plan, at its own batch

    def options() -> list[tuple[float, int, float]]:
        left = minutes * 60 - STARTUP_SECONDS - (_clock() - begun)
        epochs = {v: max(0.0, left - evaluate - FULL_TIMING_STEPS * step) / (step * steps_per_epoch)
                  for v, (step, evaluate) in costs.items()}  # fmt: skip
        return frontier.ranked(epochs)

    ranked = options()
    contenders = [v for a, v, _ in ranked if a >= ranked[0][0] - CONTENDER_POINTS][:MAX_CONTENDERS]
    # A contender's timing: building its state, a warm-up and one step, about three steps.
    retiming = sum(3 * costs[v][0] for v in contenders)
    if small < batch and len(contenders) > 1 and retiming <= CONTENDER_SHARE * minutes * 60:
        log(f"budget {minutes:g} min: timing {name} " + ", ".join(map(str, contenders))
            + f" at batch {batch}, the run's own")  # fmt: skip
        for value in contenders:
            timing = _TimingRun(_sized(config, asked, name, value), device, batch, train_examples)
            costs[value] = (timing.step_seconds(0, repeats=1), costs[value][1])
        ranked = options()
    if not ranked:
        value = frontier.values()[0]
        log(f"budget {minutes:g} min: no {name} was measured as short a run as fits here; "
            f"the smallest, {value}, is used")  # fmt: skip
        return value
    accuracy, value, epochs = ranked[0]
    others = "; ".join(f"{name} {v}: {e:.1f} epochs, {a:.1f}%" for a, v, e in ranked[1:])
    log(f"budget {minutes:g} min: {name} {value}, about {epochs:.1f} epochs here, which "
        f"the measured frontier puts at {accuracy:.1f}%" + (f" (against {others})" if others else ""))  # fmt: skip
    return value


def _sized(config: TrainConfig, asked: dict, name: str, value: int) -> TrainConfig:
    return build_config(config.recipe_spec, {**asked, name: value})
