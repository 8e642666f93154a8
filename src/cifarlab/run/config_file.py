"""RUN_DIR/config.json: the resolved configuration of a run, saved atomically."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import TrainConfig, config_from_dict
from ..errors import ConfigError
from ..files import atomic_write

CONFIG = "config.json"


def save_config(config: TrainConfig, run_dir: Path) -> None:
    atomic_write(Path(run_dir) / CONFIG, json.dumps(config.to_dict(), indent=2) + "\n")


def load_config(run_dir: Path) -> TrainConfig:
    """The saved configuration; a one-line ConfigError for a file that is not one."""
    path = Path(run_dir) / CONFIG
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{run_dir}: not a cifarlab run directory (no {CONFIG})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    return config_from_dict(values, str(path))


def saved_recipe(run_dir: Path) -> str | None:
    """The recipe spec a run directory's config.json names (not yet loaded: a missing or
    changed recipe file is reported by whoever builds the configuration), if any."""
    try:
        recipe = json.loads((Path(run_dir) / CONFIG).read_text()).get("recipe")
    except (OSError, ValueError, AttributeError):
        return None
    return recipe if isinstance(recipe, str) else None
