"""Training FLOPs: the one count behind `--budget`, `bench`, `experiment` and BENCHMARKS.md.

A step's FLOPs are what torch's FLOP counter sees in forward, loss, backward and the
optimizer step (matrix products and convolutions: Muon's orthogonalization counts, SGD's
element-wise update does not, as the published records count), and in choosing the batch
where the recipe chooses it (a proxy network's scoring and training, recipes/proxy.py;
`selection_flops`). A step's cost depends only
on the shape of the images the recipe makes in its epoch (progressive resizing) and on the
kind of step the recipe's `prepare_step` names (a frozen layer needs fewer gradients), so
each (shape, kind) is counted once and the run's total is the sum over its steps.

Every counted operation is either per image (convolutions, the head) or independent of
the batch (Muon's products on the filters), so a step's count is a + b x batch exactly:
it is counted at two small batches and extrapolated, which takes well under a second where
counting a real batch of 2,000 would take many.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import TrainConfig
from .data.layout import dataset_info
from .data.loader import BatchPosition
from .errors import ConfigError
from .muon import Muon
from .recipes import TrainingPlan

COUNTED_BATCHES = (2, 4)  # two points fix the line a + b x batch


def _counted_step(config: TrainConfig, step: int, plan: TrainingPlan,
                  batch: int) -> tuple[FlopCounterMode, FlopCounterMode]:  # fmt: skip
    """Training step `step` of `plan` at `batch` images under two FLOP counters: (forward,
    loss and backward; the optimizer's step)."""
    recipe = config.recipe.for_flop_count()
    num_classes = dataset_info(config.run.dataset).num_classes
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 32, 32, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    torch.manual_seed(0)
    model = recipe.build_model(num_classes, images)
    position = BatchPosition(step // plan.steps_per_epoch, 0, batch, torch.arange(batch))
    x = recipe.train_transform(images, torch.Generator().manual_seed(0), position)
    optimizer = recipe.build_optimizer(model)
    if isinstance(optimizer, Muon):
        optimizer.gram_form = False  # the function's FLOPs, as written (muon.py)
    for group, rate in zip(optimizer.param_groups, recipe.learning_rates(step, plan), strict=True):
        group["lr"] = rate
    recipe.prepare_step(model, step, plan)
    model.train()
    with FlopCounterMode(display=False) as passes:
        with recipe.autocast(torch.device("cpu")):
            logits = model(x)
        loss, _ = recipe.loss(model, logits.float(), labels)
        loss.backward()
    with FlopCounterMode(display=False) as optimizer_step:
        optimizer.step()
    return passes, optimizer_step


def counted_step_flops(config: TrainConfig, step: int, plan: TrainingPlan, batch: int) -> int:
    """FLOPs of training step `step` of `plan`, optimizer's step included, counted directly
    at `batch` images (the check on step_flops' extrapolation)."""
    passes, optimizer = _counted_step(config, step, plan, batch)
    return int(passes.get_total_flops() + optimizer.get_total_flops())


def _own_flops(counter: FlopCounterMode) -> dict[str, int]:
    """Each module's own FLOPs in `counter` (its count less its children's: "Net.blocks.0"
    keeps what its forward computed outside its submodules), by module path without the
    network's class name; "" for what ran outside the network (the loss)."""
    totals = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    own = dict(totals)
    for name, total in totals.items():
        if name != "Global":
            parent = name.rsplit(".", 1)[0] if "." in name else "Global"
            own[parent] = own.get(parent, 0) - total
    named = {}
    for name, flops in own.items():
        path = "" if name == "Global" else name.partition(".")[2] or "(network)"
        if flops:
            named[path] = flops
    return named


def step_flops_by_module(config: TrainConfig, step: int, plan: TrainingPlan) -> dict[str, int]:
    """Where training step `step`'s FLOPs go at the plan's global batch: each module's own
    forward and backward (counted at two small batches and extrapolated, as step_flops),
    then "optimizer step". The values sum to step_flops."""
    small, large = COUNTED_BATCHES
    (a, optimizer), (b, _) = (_counted_step(config, step, plan, n) for n in COUNTED_BATCHES)
    own_a, own_b = _own_flops(a), _own_flops(b)
    by_module = {}
    for name in own_b:
        per_image = (own_b[name] - own_a.get(name, 0)) // (large - small)
        by_module[name] = own_a.get(name, 0) + (plan.global_batch_size - small) * per_image
    by_module["optimizer step"] = int(optimizer.get_total_flops())
    return by_module


def step_flops(config: TrainConfig, step: int, plan: TrainingPlan) -> int:
    """FLOPs of training step `step` at the plan's global batch (see the module's note):
    forward and backward counted at two small batches and extrapolated, the optimizer's
    step (the same at any batch) counted once."""
    small, large = COUNTED_BATCHES
    (a, optimizer), (b, _) = (_counted_step(config, step, plan, n) for n in COUNTED_BATCHES)
    per_image = (b.get_total_flops() - a.get_total_flops()) // (large - small)
    return int(a.get_total_flops() + optimizer.get_total_flops()
               + (plan.global_batch_size - small) * per_image)  # fmt: skip


def _extrapolated(counted, at: int) -> int:
    """counted(n): the FLOPs of something linear in a batch of n (a + b n), counted at the
    two small batches; its value at `at`."""
    small, large = COUNTED_BATCHES
    a, b = counted(small), counted(large)
    return int(a + (at - small) * (b - a) // (large - small))


def selection_flops(config: TrainConfig, plan: TrainingPlan) -> tuple[int, int]:
    """(the run's, the first step's) FLOPs of the recipe's example selector, 0 without one:
    the proxy scoring every step's candidates, and its own training steps on the chosen
    batch (recipes/proxy.py), counted as a training step is."""
    recipe = config.recipe.for_flop_count()
    num_classes = dataset_info(config.run.dataset).num_classes
    g = torch.Generator().manual_seed(0)
    probe = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, num_classes, (8,), generator=g)
    torch.manual_seed(0)
    selector = recipe.example_selector(num_classes, probe, plan.global_batch_size,
                                       torch.device("cpu"))  # fmt: skip
    if selector is None:
        return 0, 0
    x = recipe.train_transform(probe, torch.Generator().manual_seed(0),
                               BatchPosition(0, 0, 8, torch.arange(8)))  # fmt: skip

    def scoring(n: int) -> int:
        with FlopCounterMode(display=False) as counter:
            with recipe.autocast(torch.device("cpu")):
                selector.losses(x[:n], labels[:n])
        return counter.get_total_flops()

    def training(n: int) -> int:
        with FlopCounterMode(display=False) as counter:
            with recipe.autocast(torch.device("cpu")):
                selector.train_on(x[:n], labels[:n], 0, plan)
        return counter.get_total_flops()

    scored = _extrapolated(scoring, recipe.candidate_batch(plan.global_batch_size))
    trained = _extrapolated(training, plan.global_batch_size)
    training_steps = sum(selector.trains_at(step) for step in range(plan.max_steps))
    first = scored + (trained if selector.trains_at(0) else 0)
    return plan.max_steps * scored + training_steps * trained, first


def image_shape(config: TrainConfig, epoch: int) -> tuple[int, ...]:
    """The shape of one model input the recipe makes in `epoch`."""
    probe = torch.zeros(2, 32, 32, 3, dtype=torch.uint8)
    position = BatchPosition(epoch, 0, 2, torch.arange(2))
    return tuple(
        config.recipe.for_flop_count()
        .train_transform(probe, torch.Generator().manual_seed(0), position)
        .shape[1:]
    )


def training_flops(config: TrainConfig, train_examples: int, world_size: int = 1) -> dict:
    """{"run_flops": the run's total, "step_flops": its first step's, "kinds": distinct
    kinds of step} for `config` trained on `train_examples` examples."""
    plan = TrainingPlan.for_run(config, train_examples, world_size)
    if plan.steps_per_epoch == 0:
        raise ConfigError(f"{train_examples} training examples cannot fill one global batch of "
                          f"{plan.global_batch_size}: use a smaller --batch-size")  # fmt: skip
    num_classes = dataset_info(config.run.dataset).num_classes
    counting = config.recipe.for_flop_count()
    probe_model = counting.build_model(num_classes, torch.zeros(2, 32, 32, 3, dtype=torch.uint8))
    by_kind: dict = {}
    total = 0
    shapes: dict[int, tuple] = {}  # by epoch
    for step in range(plan.max_steps):
        epoch = step // plan.steps_per_epoch
        if epoch not in shapes:
            shapes[epoch] = image_shape(config, epoch)
        key = (shapes[epoch], counting.prepare_step(probe_model, step, plan))
        if key not in by_kind:
            by_kind[key] = step_flops(config, step, plan)
        total += by_kind[key]
    selected, selected_first = selection_flops(config, plan)
    first = next(iter(by_kind.values())) + selected_first
    return {"run_flops": total + selected, "step_flops": first, "kinds": len(by_kind)}
