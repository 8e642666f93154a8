"""Read and write the fixed-length binary records of CIFAR-10 / CIFAR-100.

A record is the label byte(s) followed by 3,072 pixel bytes: the red plane, then green, then
blue, each 32x32 row-major. We hand images out as uint8 [N, 32, 32, 3] (height, width,
channel), the layout the input pipeline crops from.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .layout import IMAGE_CHANNELS, IMAGE_SIZE, dataset_dir, dataset_info


def _decode(raw: np.ndarray, label_bytes: int, path: Path, num_classes: tuple[int, ...]):
    """raw: uint8 [N, record_bytes] -> (images uint8 [N,32,32,3], label columns int64 [N] each)."""
    labels = []
    for column, limit in enumerate(num_classes):
        values = raw[:, column].astype(np.int64)
        bad = np.flatnonzero(values >= limit)
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"{path}: record {i} has label {values[i]}, outside 0..{limit - 1} "
                f"({bad.size} bad record(s) in all): not a {'CIFAR-100' if label_bytes == 2 else 'CIFAR-10'} file?"
            )
        labels.append(torch.from_numpy(values))
    planes = raw[:, label_bytes:].reshape(-1, IMAGE_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    # [N, C, H, W] -> [N, H, W, C]; one copy so the result is contiguous.
    images = torch.from_numpy(np.ascontiguousarray(planes.transpose(0, 2, 3, 1)))
    return images, labels


def read_records(
    path: str | os.PathLike, dataset: str = "cifar10", *, coarse: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one binary file -> (images uint8 [N, 32, 32, 3], labels int64 [N]).

    CIFAR-100 files carry a coarse and a fine label; the fine one is returned unless `coarse`.
    Raises DataError, naming the file, for a missing or empty file, a size that is not a whole
    number of records, or a label out of range.
    """
    info = dataset_info(dataset)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0:
        raise DataError(f"{path}: file is empty")
    leftover = raw.size % info.record_bytes
    if leftover:
        raise DataError(
            f"{path}: size {raw.size:,} bytes is not a multiple of the {info.title} record size "
            f"{info.record_bytes:,} ({leftover:,} bytes left over): truncated or not a {info.title} file"
        )
    raw = raw.reshape(-1, info.record_bytes)
    if info.label_bytes == 1:
        images, (labels,) = _decode(raw, 1, path, (info.num_classes,))
        return images, labels
    images, (coarse_labels, fine_labels) = _decode(
        raw, 2, path, (info.num_coarse_classes, info.num_classes)
    )
    return images, coarse_labels if coarse else fine_labels


def write_records(
    path: str | os.PathLike,
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    dataset: str = "cifar10",
    *,
    coarse_labels: torch.Tensor | np.ndarray | None = None,
) -> None:
    """The inverse of read_records: images uint8 [N, 32, 32, 3], labels [N] -> one binary file.

    For CIFAR-100, `labels` are the fine labels; `coarse_labels` default to fine // 5 (any
    value in 0..19 will do for data the project makes itself).
    """
    info = dataset_info(dataset)
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise ValueError(f"images must be uint8 [N, 32, 32, 3], got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be [N={images.shape[0]}], got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise ValueError(f"labels must lie in 0..{info.num_classes - 1}")
    records = np.empty((images.shape[0], info.record_bytes), dtype=np.uint8)
    if info.label_bytes == 2:
        coarse = labels // 5 if coarse_labels is None else np.asarray(coarse_labels)
        records[:, 0] = coarse
        records[:, 1] = labels
    else:
        records[:, 0] = labels
    records[:, info.label_bytes :] = images.transpose(0, 3, 1, 2).reshape(images.shape[0], -1)
    records.tofile(Path(path))


def load_split(
    data_dir: str | os.PathLike | None,
    split: str,
    dataset: str = "cifar10",
    *,
    coarse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All files of a split, concatenated in official order -> (images, labels).

    `data_dir` is the data root (None: the default rule), which holds the archive's folder
    (`cifar-10-batches-bin/` or `cifar-100-binary/`).
    """
    info = dataset_info(dataset)
    folder = dataset_dir(data_dir, dataset)
    files = info.split_files(split)
    if not folder.is_dir() or not any(folder.iterdir()):
        raise DataError(
            f"no {info.title} data in {folder}: run `cifarlab download --dataset {dataset}"
            + (f" --data-dir {data_dir}`" if data_dir else "`")
        )
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder}: missing {info.title} {split} file(s): {', '.join(missing)}")
    parts = [read_records(folder / name, dataset, coarse=coarse) for name in files]
    images = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    return images, labels
