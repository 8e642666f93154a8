"""`cifarlab train --budget MINUTES`: the longest run that fits a time budget on this machine.

A short timing run of the recipe's real training step (random images of the real shape:
the cost does not depend on pixel values) and of its evaluation gives seconds per step and
the final evaluation's cost; the run gets the steps that fit what remains (at least one
epoch; the recipes' schedules are functions of the step, so a run may end mid-epoch). The
chosen max_steps is saved in config.json like any other field, so a rerun is the same run.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from ..config import TrainConfig
from ..data.layout import dataset_info
from ..errors import ConfigError
from ..recipes import TrainingPlan

STARTUP_SECONDS = 15.0  # imports, data loading and checking, writing the first files
# A real run's steps measured up to 3% slower than the timing run's (BENCHMARKS.md: 3.25 s
# timed, 3.26-3.39 s in the run), so each step is priced 3% above its timing.
STEP_MARGIN = 1.03
LATE_EPOCH = 1000  # an even number: epoch parity (alternating flip) is kept
MAX_STEPS_SCANNED = 10**6  # asking prepare_step this often takes about a second


def _clock() -> float:
    return time.perf_counter()


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, caches, lazy initialisation
    start = _clock()
    for _ in range(repeats):
        fn()
    return (_clock() - start) / repeats


def steps_for_budget(config: TrainConfig, minutes: float, train_examples: int = 50_000,
                     test_examples: int = 10_000, device: torch.device | None = None, log=print) -> int:  # fmt: skip
    """The most steps of `config` whose training and final evaluation fit `minutes` here."""
    from .distributed import Placement
    from .loop import apply_step, build_state, forward_step

    begun = _clock()  # the timing run is part of the budget too
    device = device or torch.device("cpu")
    recipe = config.recipe
    num_classes = dataset_info(config.run.dataset).num_classes
    batch = config.global_batch_size()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2 * batch, 32, 32, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, num_classes, (2 * batch,), generator=g)
    # The trainer's own state and step (train/loop.py), on random images of the real shape;
    # a run length no timed step reaches, so schedules stay in their early, sane range.
    long_run = dataclasses.replace(config, run=dataclasses.replace(config.run, max_steps=10**9))
    state = build_state(long_run, recipe, Placement(device), images, labels, num_classes)
    state.net.train()
    # Timed as a late epoch: a recipe whose early epochs are cheaper (progressive resizing)
    # gets a conservative estimate rather than an optimistic one.
    transform = state.batches.transform
    state.batches.transform = lambda x, generator, position: transform(
        x, generator, dataclasses.replace(position, epoch=position.epoch + LATE_EPOCH))  # fmt: skip
    run_plan = TrainingPlan(10**9, train_examples // batch, batch, train_examples)  # length: sought
    seconds_by_kind: dict = {}

    def step_seconds(at_step: int) -> float:
        """Each kind of step the recipe names (prepare_step: e.g. the fast recipes' whitening
        bias trained, then frozen) is timed once, with the model switched as the run will."""
        kind = recipe.prepare_step(state.model, at_step, run_plan)
        if kind not in seconds_by_kind:

            def one_step() -> None:
                state.step = at_step
                apply_step(state, forward_step(state, recipe, run_plan))

            seconds_by_kind[kind] = _timed(one_step, 3) * STEP_MARGIN
        return seconds_by_kind[kind]

    # Every kind a run could reach, timed now, so that the budget's remainder is known: the
    # longest possible run is bounded by the first kind's count, doubled for safety.
    for at_step in range(min(int(2 * minutes * 60 / step_seconds(0)) + 1, MAX_STEPS_SCANNED)):
        step_seconds(at_step)
    preprocess = recipe.eval_preprocess().to(device)
    eval_batch = config.run.eval_batch_size
    sample = images[:eval_batch].to(device)
    model = state.model

    @torch.no_grad()
    def evaluate() -> None:
        model.eval()
        with recipe.autocast(device):
            x = preprocess(sample)
            recipe.tta_logits(model, x) if recipe.final_eval_tta else model(x)

    eval_seconds = _timed(evaluate, 1) * test_examples / sample.shape[0]
    steps_per_epoch = run_plan.steps_per_epoch
    spare = minutes * 60 - STARTUP_SECONDS - eval_seconds - (_clock() - begun)
    steps, spent = 0, 0.0
    while steps < MAX_STEPS_SCANNED and spent + step_seconds(steps) <= spare:
        spent += step_seconds(steps)
        steps += 1
    if steps < steps_per_epoch:
        epoch = sum(step_seconds(s) for s in range(steps_per_epoch))
        raise ConfigError(f"--budget {minutes:g} min: one epoch takes about "
                          f"{(epoch + eval_seconds + STARTUP_SECONDS) / 60:.1f} min "
                          "on this machine; give more time")  # fmt: skip
    per_step = ", ".join(f"{t:.2f}" for t in seconds_by_kind.values())
    log(f"budget {minutes:g} min: {per_step} s a step, about {eval_seconds:.0f} s to evaluate; "
        f"{steps} steps ({steps / steps_per_epoch:.1f} epochs) fit")  # fmt: skip
    return steps
