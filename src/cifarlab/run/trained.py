"""A trained run, opened for eval, predict and export: its configuration, its recipe, and
a network holding one checkpoint's averaged (or raw) weights."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import TrainConfig
from ..data.layout import DatasetInfo, dataset_info
from ..errors import CifarlabError
from ..recipes import Recipe
from .checkpoint import (
    CheckpointError,
    checkpoint_part,
    latest_checkpoint,
    load_checkpoint,
    saved_average,
)
from .config_file import load_config

WEIGHTS = ("averaged", "raw")  # which weights of a checkpoint are evaluated


@dataclass
class TrainedRun:
    run_dir: Path
    config: TrainConfig
    recipe: Recipe
    dataset: DatasetInfo
    model: nn.Module  # in eval mode, on the asked device
    step: int
    checkpoint: Path


def averaged_weights(recipe: Recipe, model: nn.Module, state: dict, path: Path) -> dict:
    """The weights a checkpoint's weight average says to evaluate. `model` must hold the
    checkpoint's raw weights already: an average that writes back evaluates those."""
    average = recipe.weight_average(model, None)
    if average is None:
        return checkpoint_part(state, "model", path)
    try:
        average.load_state_dict(saved_average(state, path))
    except (RuntimeError, KeyError, TypeError, AttributeError, ValueError) as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(
            f"{path}: its averaged weights do not fit this run's network ({first})"
        ) from None
    return average.evaluated_state()


def load_weights(model: nn.Module, weights: dict, path: Path) -> None:
    """load_state_dict, with a one-line error for a checkpoint of another network."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(
            f"{path}: its weights do not fit this run's network ({first})"
        ) from None


def warn_if_recipe_changed(config: TrainConfig, run_dir: Path) -> None:
    """Reading a run whose recipe file changed since it trained: go on (the weights are what
    they are; a changed network fails to load by name), but say so once, on stderr."""
    source = config.source
    if source.changed_from:
        print(f"warning: {run_dir} was trained with {source.file} at sha256 {source.changed_from[:12]}; "
              f"it has changed since (now {source.sha256[:12]}): using it as it is now",
              file=sys.stderr)  # fmt: skip


def open_run(
    run_dir: Path,
    checkpoint: Path | None = None,
    *,
    weights: str = "averaged",
    device: str | torch.device = "cpu",
) -> TrainedRun:
    """`checkpoint`: a path, or None for the run's newest."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CifarlabError(f"{run_dir}: no such run directory")
    config = load_config(run_dir)
    warn_if_recipe_changed(config, run_dir)
    recipe = config.recipe
    info = dataset_info(config.run.dataset)
    checkpoint = checkpoint or latest_checkpoint(run_dir)
    if checkpoint is None:
        raise CifarlabError(f"{run_dir}: no checkpoint yet")
    state = load_checkpoint(checkpoint)
    recipe.prepare_device(torch.device(device))  # before any evaluation clock starts
    model = recipe.build_model(info.num_classes, None)
    load_weights(model, checkpoint_part(state, "model", checkpoint), checkpoint)
    if weights != "raw":
        with torch.no_grad():
            load_weights(model, averaged_weights(recipe, model, state, checkpoint), checkpoint)
    return TrainedRun(
        run_dir, config, recipe, info, model.to(device).eval(), int(state["step"]), Path(checkpoint)
    )
