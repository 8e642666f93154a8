"""Throughput benchmarks behind `cifarlab bench`. Each prints a table; none asserts a speed."""

from __future__ import annotations

import statistics
import time

import torch

from .data.loader import TrainBatches
from .recipes import get_recipe


def bench_data(
    recipe: str = "tutorial", *, batch_size: int = 128, threads: int = 1, seconds: float = 2.0,
    repeats: int = 5, device: str = "cpu", seed: int = 0,
) -> dict:  # fmt: skip
    """Images/s of a recipe's full training input pipeline: index a shuffled batch from a
    CIFAR-10-sized split in memory, then the recipe's train_transform (the tutorial's:
    crop, flip, brightness, contrast, standardize).

    Pixel values do not change the cost, so the split is random uint8 of the real shape
    (50,000 x 32 x 32 x 3): the benchmark needs no download.
    """
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (50_000, 32, 32, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (50_000,), generator=g)
    from .run.device import pick_device

    device = pick_device(device)
    transform = get_recipe(recipe).train_transform
    batches = TrainBatches(
        images, labels, batch_size, transform=transform, seed=seed, device=device
    )
    sync = torch.cuda.synchronize if batches.device.type == "cuda" else (lambda: None)
    for _ in range(20):  # warm-up: allocator, caches, lazy inits
        batches.next_batch()
    counts, timed = [], []
    for _ in range(repeats):
        sync()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            batches.next_batch()
            count += batch_size
        sync()
        counts.append(count)
        timed.append(time.perf_counter() - start)
    return {
        **_rates(counts, timed),
        "warmup_seconds": 0.0,
        "recipe": recipe,
        "batch_size": batch_size,
        "threads": threads,
        "device": str(batches.device),
    }


def _random_split(n: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [n, 32, 32, 3] and labels: pixel values do not change the cost of any step."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g)
    return images, torch.randint(0, num_classes, (n,), generator=g)


def _bench_setup(recipe: str, overrides: dict | None, seed: int, device: str):
    """(config, recipe, device) for a benchmark, with the configured thread count applied."""
    from .config import build_config
    from .run.device import pick_device

    config = build_config(recipe, {**(overrides or {}), "run_dir": "unused", "seed": seed})
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    dev = pick_device(device)
    config.recipe.prepare_device(dev)  # kernels built and routes chosen outside the timings
    return config, config.recipe, dev


def training_state(recipe: str, overrides: dict | None, seed: int, device: str):
    """(config, recipe, device, state): the trainer's state (train/loop.build_state) on a
    random CIFAR-10-sized split, in training mode, ready for forward_step/apply_step."""
    from .train.distributed import Placement
    from .train.loop import build_state

    config, recipe_obj, dev = _bench_setup(recipe, overrides, seed, device)
    images, labels = _random_split(50_000, 10, seed)
    state = build_state(config, recipe_obj, Placement(dev), images, labels, num_classes=10)
    state.net.train()
    return config, recipe_obj, dev, state


def _rates(images: list[int], seconds: list[float]) -> dict:
    """Each timed run's images/s and the median; the images and seconds behind them go into
    the report too, so a reader (and the tests) can check the arithmetic."""
    rates = [n / t for n, t in zip(images, seconds, strict=True)]
    return {"images_per_second": statistics.median(rates), "runs": rates, "run_images": images,
            "run_seconds": seconds}  # fmt: skip


def _measure(warm_up, run_once, images_per_run: int, repeats: int, device: torch.device,
             batch_size: int) -> dict:  # fmt: skip
    """Time warm_up once (reported apart), then run_once `repeats` times: images/s each."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    warm_up()
    sync()
    warmup_seconds = time.perf_counter() - start
    timed = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        run_once()
        sync()
        timed.append(time.perf_counter() - start)
    return {**_rates([images_per_run] * repeats, timed), "batch_size": batch_size,
            "warmup_seconds": warmup_seconds, "threads": torch.get_num_threads(), "device": str(device)}  # fmt: skip


def bench_train(
    recipe: str = "tutorial", *, overrides: dict | None = None, steps: int = 50,
    warmup_steps: int = 10, repeats: int = 5, device: str = "cpu", seed: int = 0,
) -> dict:  # fmt: skip
    """Images/s of the real training step, as `cifarlab train` runs it: the batch drawn and
    distorted by the input pipeline, forward, loss, backward, the optimizer step and the
    recipe's weight average (train/loop.py's forward_step and apply_step), on a random
    CIFAR-10-sized split. The first `warmup_steps` (lazy initialisation, any compilation)
    are timed separately and not in the rate; each repeat then times `steps` steps."""
    from .train.loop import apply_step, forward_step

    config, recipe_obj, dev, state = training_state(recipe, overrides, seed, device)

    def run(n: int) -> None:
        for _ in range(n):
            apply_step(state, forward_step(state, recipe_obj, state.plan))

    batch = state.plan.global_batch_size  # trained on (a selector draws more)
    result = _measure(
        lambda: run(warmup_steps), lambda: run(steps), steps * batch, repeats, dev, batch
    )
    from .data.datasets import split_sizes
    from .flops import training_flops

    counted = training_flops(config, split_sizes(config.run)[0])
    return {**result, **counted, "max_steps": config.run.max_steps}


def bench_eval(
    recipe: str = "tutorial", *, overrides: dict | None = None, images: int = 10_000,
    batch_size: int = 128, repeats: int = 5, device: str = "cpu", seed: int = 0,
) -> dict:  # fmt: skip
    """Images/s of evaluation as `cifarlab eval` runs it (evaluate.predict_logits: the
    recipe's preprocessing, then the forward pass, batch by batch, no TTA) over a random
    test-sized split; one untimed pass first warms caches (and compiles, if any)."""
    from .evaluate import predict_logits

    _, recipe_obj, dev = _bench_setup(recipe, overrides, seed, device)
    test_images, _ = _random_split(images, 10, seed)
    torch.manual_seed(seed)
    model = recipe_obj.build_model(10, test_images).to(dev)

    def run() -> None:
        predict_logits(model, recipe_obj, test_images, batch_size=batch_size, device=dev)

    return _measure(run, run, images, repeats, dev, batch_size)
