"""The splits a run trains and evaluates on, as its configuration names them."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .layout import dataset_info
from .records import load_split
from .sources import download, is_installed
from .synthetic import make_synthetic


def synthetic_root(run_dir: Path) -> Path:
    """A synthetic run keeps its (small, deterministic) data set inside its run directory."""
    return Path(run_dir) / "synthetic-data"


def ensure_synthetic(
    root: Path, dataset: str, train_per_class: int, test_per_class: int, seed: int
) -> Path:
    """Make the synthetic set under `root` once, atomically (built aside, then renamed)."""
    # Checked against the manifest written when it was made, not the official md5s.
    info = dataclasses.replace(dataset_info(dataset), file_md5={})
    if is_installed(info, root):
        return root
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".synthetic-{os.getpid()}-", dir=root))
    try:
        make_synthetic(
            work,
            info.name,
            train_per_class=train_per_class,
            test_per_class=test_per_class,
            seed=seed,
        )
        try:
            (work / info.folder).rename(root / info.folder)
        except OSError:
            if not is_installed(info, root):  # not a concurrent maker winning the race
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return root


def data_root_for(run, run_dir: Path, *, fetch: bool) -> Path | str | None:
    """Where the run's data lives (`run`: a RunConfig); makes or downloads it first if
    `fetch` and it is missing."""
    if run.synthetic:
        root = synthetic_root(run_dir)
        if fetch:
            ensure_synthetic(root, run.dataset, run.synthetic_train_per_class,
                             run.synthetic_test_per_class, seed=0)  # fmt: skip
        return root
    if fetch:
        download(run.dataset, run.data_dir)  # verifies; does nothing when installed
    return run.data_dir


def load_run_split(
    run, run_dir: Path, split: str, *, data_dir: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A split of the run's data; `data_dir` overrides the saved data root. Fetches nothing."""
    root = data_dir if data_dir is not None else data_root_for(run, run_dir, fetch=False)
    return load_split(root, split, run.dataset)
