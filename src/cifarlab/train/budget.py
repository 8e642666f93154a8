"""`cifarlab train --budget MINUTES`: the longest run that fits a time budget on this machine.

A short timing run of the recipe's real training step (random images of the real shape:
the cost does not depend on pixel values) and of its evaluation gives seconds per step and
the final evaluation's cost; the run gets the steps that fit what remains (at least one
epoch; the recipes' schedules are functions of the step, so a run may end mid-epoch). The
chosen max_steps is saved in config.json like any other field, so a rerun is the same run.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from ..config import TrainConfig
from ..data.loader import TrainBatches
from ..errors import ConfigError
from ..recipes import TrainingPlan, get_recipe

STARTUP_SECONDS = 15.0  # imports, data loading and checking, writing the first files
# A real run's steps measured up to 3% slower than the timing run's (BENCHMARKS.md: 3.25 s
# timed, 3.26-3.39 s in the run), so each step is priced 3% above its timing.
STEP_MARGIN = 1.03
LATE_EPOCH = 1000  # an even number: epoch parity (alternating flip) is kept


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
    begun = _clock()  # the timing run is part of the budget too
    device = device or torch.device("cpu")
    recipe = get_recipe(config.recipe, config.params)
    batch = config.run.global_batch_size or config.run.batch_size
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2 * batch, 32, 32, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (2 * batch,), generator=g)
    model = recipe.build_model(10, images).to(device)
    optimizer = recipe.build_optimizer(model)

    # Timed as a late epoch: a recipe whose early epochs are cheaper (progressive resizing)
    # gets a conservative estimate rather than an optimistic one.
    def late_epoch_transform(x, generator, position):
        return recipe.train_transform(
            x, generator, replace(position, epoch=position.epoch + LATE_EPOCH)
        )

    batches = TrainBatches(images, labels, batch, transform=late_epoch_transform, device=device)
    timing_plan = TrainingPlan(1000, batches.steps_per_epoch, batch, 2 * batch)
    for group, rate in zip(optimizer.param_groups, recipe.learning_rates(0, timing_plan), strict=True):  # fmt: skip
        group["lr"] = rate * 1e-6  # time the real update without wrecking the weights

    def step() -> None:
        x, y = batches.next_batch()
        with recipe.autocast(device):
            logits = model(x)
        loss, _ = recipe.loss(model, logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # Each kind of step the recipe names (prepare_step: e.g. the fast recipes' whitening bias
    # training, then frozen, which skips a layer's input gradient) is timed once, with the
    # model switched as the run will switch it.
    steps_per_epoch = train_examples // batch
    run_plan = TrainingPlan(10**9, steps_per_epoch, batch, train_examples)  # its length: sought
    seconds_by_kind: dict = {}

    def step_seconds(at_step: int) -> float:
        kind = recipe.prepare_step(model, at_step, run_plan)
        if kind not in seconds_by_kind:
            model.train()
            seconds_by_kind[kind] = _timed(step, 3) * STEP_MARGIN
        return seconds_by_kind[kind]

    # Every kind a run could reach, timed now, so that the budget's remainder is known: the
    # longest possible run is bounded by the first kind's count, doubled for safety (and
    # capped: a million steps of asking prepare_step take about a second).
    for at_step in range(min(int(2 * minutes * 60 / step_seconds(0)) + 1, 10**6)):
        step_seconds(at_step)
    preprocess = recipe.eval_preprocess().to(device)
    eval_batch = config.run.eval_batch_size
    sample = images[:eval_batch].to(device)

    @torch.no_grad()
    def evaluate() -> None:
        model.eval()
        with recipe.autocast(device):
            x = preprocess(sample)
            recipe.tta_logits(model, x) if recipe.final_eval_tta else model(x)

    eval_seconds = _timed(evaluate, 1) * test_examples / sample.shape[0]
    spare = minutes * 60 - STARTUP_SECONDS - eval_seconds - (_clock() - begun)
    steps, spent = 0, 0.0
    while spent + step_seconds(steps) <= spare:
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
