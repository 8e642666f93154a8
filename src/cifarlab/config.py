"""Run configuration: one frozen dataclass, named recipes as presets (data, not code paths).

Resolution order, later wins: the recipe's preset, a TOML file (--config), --set key=value,
then explicit flags. The resolved configuration is saved in the run directory as config.json.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class TrainConfig:
    # What to train
    recipe: str = "tutorial"  # the preset this run started from
    model: str = "tutorial"  # name in the model registry
    dataset: str = "cifar10"  # cifar10 | cifar100
    augment: str = (
        "tutorial"  # training transform: "tutorial" = crop, flip, brightness, contrast, standardize
    )
    synthetic: bool = False  # train and test on the synthetic set (no download)
    synthetic_train_per_class: int = 500  # images per class in the synthetic train split
    synthetic_test_per_class: int = 100
    # Where
    data_dir: str | None = None  # data root; None: $CIFARLAB_DATA, else ~/.cache/cifarlab
    run_dir: str | None = None  # None: runs/<recipe>
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # CPU threads for torch; 0: torch's default (all cores)
    # How long, how big
    max_steps: int = 100_000  # optimizer steps (the documented run; the original's default was 1M)
    batch_size: int = 128  # images per step per process (the tutorial's towers: 128 each)
    global_batch_size: int = 0  # images per step over all processes; 0: batch_size x processes
    seed: int = 0  # weights, data order and augmentation all derive from it
    # Optimizer: plain SGD with a staircase decay of the learning rate
    learning_rate: float = 0.1  # initial, per step
    momentum: float = 0.0  # 0: plain gradient descent, as the tutorial
    lr_decay_factor: float = 0.1  # multiply the rate by this ...
    epochs_per_decay: float = 350.0  # ... every this many epochs (staircase)
    # Averages
    ema_decay: float = (
        0.9999  # moving average of the weights (evaluated), with update-count warm-up
    )
    loss_average_decay: float = 0.9  # moving average of each loss term, for the summaries
    # Reporting and saving, in steps
    log_every: int = 10  # console line
    summary_every: int = 100  # TensorBoard and metrics.jsonl
    checkpoint_every: int = 1000
    keep_checkpoints: int = 5  # newest checkpoints kept; older ones are removed
    eval_batch_size: int = (
        128  # for the end-of-run evaluation (128 runs fastest on our CPU; 1000 is 1.8x slower)
    )
    check_finite_every: int = (
        1  # steps between NaN/Inf checks of the loss (each costs a sync on GPU)
    )

    @property
    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir or f"runs/{self.recipe}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Fields that may change when a run is continued: they do not change what is computed.
RESUMABLE_FIELDS = frozenset(
    {"max_steps", "data_dir", "run_dir", "device", "threads", "log_every", "summary_every",
     "checkpoint_every", "keep_checkpoints", "eval_batch_size", "check_finite_every"}
)  # fmt: skip

RECIPES: dict[str, dict[str, Any]] = {
    # TensorFlow's CIFAR-10 tutorial (TUTORIAL_SPEC.md sections 2-4): the defaults above.
    "tutorial": {},
}

FIELD_NAMES = {f.name for f in fields(TrainConfig)}


def _coerce(name: str, value: Any) -> Any:
    """Convert a --set string (or TOML value) to the field's type."""
    default = getattr(TrainConfig(), name)
    kind = {f.name: f.type for f in fields(TrainConfig)}[name]
    if not isinstance(value, str):
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    try:
        if isinstance(default, bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(value.replace("_", ""))
        if isinstance(default, float):
            return float(value)
    except ValueError:
        raise ConfigError(f"--set {name}={value}: expected {type(default).__name__}") from None
    if "None" in str(kind) and value.lower() in ("none", ""):
        return None
    return value


def check_fields(values: dict[str, Any], where: str) -> None:
    unknown = sorted(set(values) - FIELD_NAMES)
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(FIELD_NAMES))}"
        )


def parse_set(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        key, value = pair.split("=", 1)
        key = key.strip().replace("-", "_")
        check_fields({key: None}, "--set")
        out[key] = _coerce(key, value.strip())
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    check_fields(values, str(path))
    return {k: _coerce(k, v) for k, v in values.items()}


def build_config(recipe: str = "tutorial", overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The recipe's preset with `overrides` applied (already merged from file, --set, flags)."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}: available {', '.join(RECIPES)}")
    values = {**RECIPES[recipe], **(overrides or {}), "recipe": recipe}
    check_fields(values, "configuration")
    config = TrainConfig(**values)
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    from .data.layout import DATASETS
    from .models import model_names

    problems = []
    if config.dataset not in DATASETS:
        problems.append(f"dataset {config.dataset!r} is not one of {', '.join(DATASETS)}")
    if config.model not in model_names():
        problems.append(f"model {config.model!r} is not one of {', '.join(model_names())}")
    if config.global_batch_size < 0:
        problems.append(
            f"global_batch_size must be 0 (off) or positive, got {config.global_batch_size}"
        )
    for name in ("max_steps", "batch_size", "log_every", "summary_every", "checkpoint_every",
                 "keep_checkpoints", "eval_batch_size", "check_finite_every"):  # fmt: skip
        if getattr(config, name) < 1:
            problems.append(f"{name} must be at least 1, got {getattr(config, name)}")
    if config.learning_rate <= 0:
        problems.append(f"learning_rate must be positive, got {config.learning_rate}")
    if not 0 <= config.ema_decay < 1 or not 0 <= config.loss_average_decay < 1:
        problems.append("ema_decay and loss_average_decay must lie in [0, 1)")
    if problems:
        raise ConfigError("; ".join(problems))


def save_config(config: TrainConfig, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    tmp.replace(path)


def load_config(path: Path) -> TrainConfig:
    values = json.loads(Path(path).read_text())
    check_fields(values, str(path))
    return TrainConfig(**values)


def differing_fields(saved: TrainConfig, asked: dict[str, Any]) -> list[str]:
    """Fields the user asked for explicitly that differ from the saved run's, and matter."""
    return sorted(
        name for name, value in asked.items()
        if name not in RESUMABLE_FIELDS and getattr(saved, name) != value
    )  # fmt: skip
