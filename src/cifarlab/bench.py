"""Throughput benchmarks behind `cifarlab bench`. Each prints a table; none asserts a speed."""

from __future__ import annotations

import statistics
import time

import torch

from .data.loader import TrainBatches
from .recipes import get_recipe


def bench_data(
    *, batch_size: int = 128, threads: int = 1, seconds: float = 2.0, repeats: int = 5,
    device: str = "cpu", seed: int = 0,
) -> dict:  # fmt: skip
    """Images/s of the full training input pipeline: index a shuffled batch from a
    CIFAR-10-sized split in memory, crop, flip, brightness, contrast, standardize.

    Pixel values do not change the cost, so the split is random uint8 of the real shape
    (50,000 x 32 x 32 x 3): the benchmark needs no download.
    """
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (50_000, 32, 32, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (50_000,), generator=g)
    from .run.device import pick_device

    device = pick_device(device)
    transform = get_recipe("tutorial").train_transform
    batches = TrainBatches(
        images, labels, batch_size, transform=transform, seed=seed, device=device
    )
    sync = torch.cuda.synchronize if batches.device.type == "cuda" else (lambda: None)
    for _ in range(20):  # warm-up: allocator, caches, lazy inits
        batches.next_batch()
    rates = []
    for _ in range(repeats):
        sync()
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            batches.next_batch()
            count += batch_size
        sync()
        elapsed = time.perf_counter() - start
        rates.append(count / elapsed)
    return {
        "images_per_second": statistics.median(rates),
        "runs": rates,
        "batch_size": batch_size,
        "threads": threads,
        "device": str(batches.device),
    }
