"""A small, learnable data set in the CIFAR binary format, made deterministically from a seed.

Each class has its own colour cast and its own stripe pattern (orientation and frequency);
every image adds a random phase, a random stripe strength and heavy pixel noise. A small
network separates the classes in a few hundred steps, which is what tests and demos need:
real files in the real format, through the real reader and pipeline, with no download.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .layout import dataset_info
from .records import write_records
from .sources import write_manifest


def make_images(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """labels int [N] -> images uint8 [N, 32, 32, 3]."""
    n = labels.shape[0]
    palette_rng = np.random.default_rng(1234)  # the classes' look is fixed, whatever the seed
    # Classes k and k + num_classes/2 share a colour cast and differ only in their stripes,
    # whose random phase averages out: a classifier of mean colours or mean pixels can tell
    # the pair, not the class (about half right), so a network must learn shapes to do better.
    casts = palette_rng.uniform(40, 215, size=((num_classes + 1) // 2, 3))
    colours = casts[np.arange(num_classes) % casts.shape[0]]  # RGB cast per class
    angles = np.arange(num_classes) * math.pi / num_classes  # stripe orientation per class
    frequencies = 0.25 + 0.5 * ((np.arange(num_classes) * 7) % num_classes) / num_classes

    ys, xs = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")  # [32, 32]
    angle = angles[labels][:, None, None]
    freq = frequencies[labels][:, None, None]
    phase = rng.uniform(0, 2 * math.pi, size=(n, 1, 1))
    wave = np.sin(freq * (xs * np.cos(angle) + ys * np.sin(angle)) + phase)  # [N, 32, 32]
    strength = rng.uniform(40, 80, size=(n, 1, 1, 1))
    images = colours[labels][:, None, None, :] + strength * wave[..., None]
    images += rng.normal(0, 25, size=images.shape)
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def make_synthetic(
    data_dir: str | os.PathLike,
    dataset: str = "cifar10",
    *,
    train_per_class: int = 200,
    test_per_class: int = 50,
    seed: int = 0,
) -> Path:
    """Write a synthetic data set under `data_dir` in the layout `load_split` reads.

    The train split is spread over the official file names (five files for CIFAR-10), so
    every code path of the real data is exercised. Returns the data set's folder.
    """
    info = dataset_info(dataset)
    rng = np.random.default_rng(seed)
    folder = Path(data_dir) / info.folder
    folder.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(info.num_classes), per_class))
        images = make_images(labels, info.num_classes, rng)
        files = info.split_files(split)
        for name, idx in zip(
            files, np.array_split(np.arange(labels.size), len(files)), strict=True
        ):
            write_records(folder / name, images[idx], labels[idx], info.name)
    meta = "batches.meta.txt" if info.name == "cifar10" else "fine_label_names.txt"
    (folder / meta).write_text("\n".join(info.class_names) + "\n\n")
    write_manifest(info, folder)
    return folder
