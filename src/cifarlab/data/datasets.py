"""The splits a run trains and evaluates on, as its configuration names them."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from ..errors import DataError
from .layout import dataset_dir, dataset_info
from .records import load_split
from .sources import download, installed_problem, is_installed, verify_folder
from .synthetic import make_synthetic


def synthetic_root(run_dir: Path) -> Path:
    """A synthetic run keeps its (small, deterministic) data set inside its run directory."""
    return Path(run_dir) / "synthetic-data"


def ensure_synthetic(
    root: Path, dataset: str, train_per_class: int, test_per_class: int, seed: int, log=print
) -> Path:
    """Make the synthetic set under `root` once, atomically (built aside, then renamed).
    A set that fails its check is moved aside (never deleted) and made again: it is a pure
    function of its sizes and seed, so the new one is the one the run was trained on."""
    # Checked against the manifest written when it was made, not the official md5s.
    info = dataclasses.replace(dataset_info(dataset), file_md5={})
    problem = installed_problem(info, root)
    if problem is None:
        return root
    target = root / info.folder
    if target.exists():
        aside = target.with_name(
            f"{info.folder}.invalid-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        )
        target.rename(aside)
        log(f"synthetic data failed its check ({problem}); moved it to {aside} and made it again")
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


def split_sizes(run) -> tuple[int, int]:
    """(training, test) examples of the run's data (`run`: a RunConfig), without reading it."""
    info = dataset_info(run.dataset)
    if run.synthetic:
        classes = info.num_classes
        return run.synthetic_train_per_class * classes, run.synthetic_test_per_class * classes
    return info.examples["train"], info.examples["test"]


def load_run_split(
    run, run_dir: Path, split: str, *, data_dir: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A split of the run's data, checked against its checksums first (cached by file size
    and mtime); `data_dir` overrides the saved data root. Fetches nothing."""
    if run.synthetic and data_dir is not None:
        raise DataError(f"{run_dir} was trained on the synthetic set, which it keeps in "
                        f"{synthetic_root(run_dir)}; --data-dir is for runs on the real data")  # fmt: skip
    root = data_dir if data_dir is not None else data_root_for(run, run_dir, fetch=False)
    info = dataset_info(run.dataset)
    if run.synthetic:
        info = dataclasses.replace(info, file_md5={})  # made here: its manifest vouches for it
    folder = dataset_dir(root, run.dataset)
    if folder.is_dir():  # a missing folder gets load_split's message, which says what to run
        verify_folder(info, folder, use_cache=True)
    return load_split(root, split, run.dataset)
