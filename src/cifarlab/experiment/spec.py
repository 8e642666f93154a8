"""What an experiment is: a configuration, a set of seeds, and EXP_DIR/experiment.json."""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from ..config import RUN_FIELDS, TrainConfig
from ..errors import ConfigError
from ..files import atomic_write
from ..settings import resumable_names

SPEC = "experiment.json"
# Fields that say where and how a seed runs, not what it computes: they may differ between
# sittings (and between the machines a plan's commands run on).
NOT_THE_EXPERIMENT = {"seed", "run_dir", "data_dir", "device", "threads"}


def parse_seeds(text: str) -> list[int]:
    """'0-9', '3', '0-4,10-14' -> sorted seeds; overlapping or empty ranges refused."""
    seeds: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ConfigError(f"--seeds {text}: expected ranges like 0-9 or 0-4,10,20-24")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise ConfigError(f"--seeds {text}: {part} is an empty range")
        new = range(first, last + 1)
        overlap = sorted(set(seeds) & set(new))
        if overlap:
            raise ConfigError(f"--seeds {text}: the ranges overlap at seed {overlap[0]}")
        if len(seeds) + len(new) > 100_000:
            raise ConfigError(f"--seeds {text}: more than 100,000 seeds")
        seeds.extend(new)
    return sorted(seeds)


def seed_dir(exp_dir: Path, seed: int) -> Path:
    return Path(exp_dir) / f"seed-{seed}"


def identity(config: TrainConfig) -> dict:
    """The fields that make two seeds' runs the same experiment: everything computed."""
    flat = config.flat()
    may_differ = NOT_THE_EXPERIMENT | resumable_names(type(config.run))
    may_differ |= resumable_names(type(config.params)) - RUN_FIELDS
    return {k: v for k, v in flat.items() if k not in may_differ}


@dataclass
class Experiment:
    exp_dir: Path
    recipe: str
    fields: dict  # identity(config)
    train_args: list[str]  # the train flags each seed gets, less --seed and --run-dir
    seeds: list[int]

    def to_dict(self) -> dict:
        return {"format": 1, "recipe": self.recipe, "fields": self.fields,
                "train_args": self.train_args, "seeds": self.seeds}  # fmt: skip

    def save(self) -> None:
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.exp_dir / SPEC, json.dumps(self.to_dict(), indent=1) + "\n")

    def command(self, seed: int, threads: int | None = None) -> list[str]:
        """The self-contained `cifarlab train` command of one seed."""
        extra = ["--threads", str(threads)] if threads else []
        return [sys.executable, "-m", "cifarlab", "train", *self.train_args, *extra,
                "--seed", str(seed), "--run-dir", str(seed_dir(self.exp_dir, seed).resolve()),
                "--no-progress"]  # fmt: skip

    def shell_command(self, seed: int) -> str:
        command = self.command(seed)
        return shlex.join(["cifarlab", *command[3:]])  # the installed entry point


def load_experiment(exp_dir: Path) -> Experiment | None:
    """The experiment saved in EXP_DIR; None when there is none. One line for a broken one."""
    exp_dir = Path(exp_dir)
    path = exp_dir / SPEC
    if not path.is_file():
        if exp_dir.is_dir() and any(exp_dir.iterdir()) and not any(exp_dir.glob("seed-*")):
            raise ConfigError(
                f"{exp_dir}: not an experiment directory (it holds other files and no {SPEC})"
            )
        return None
    try:
        values = json.loads(path.read_text())
        return Experiment(exp_dir, values["recipe"], dict(values["fields"]),
                          list(values["train_args"]), [int(s) for s in values["seeds"]])  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a cifarlab experiment ({type(e).__name__}: {e})") from None


def check_same_experiment(saved: Experiment, fields: dict, added: dict | None = None) -> None:
    """Refuse a rerun whose configuration differs from the saved one, naming the fields.
    `added`: the values the settings added since the experiment began had in its seeds."""
    then = {**(added or {}), **saved.fields}
    names = sorted(set(then) | set(fields))
    differ = [n for n in names if then.get(n) != fields.get(n)]
    if differ:
        details = ", ".join(f"{n} (saved {then.get(n)!r}, asked {fields.get(n)!r})" for n in differ)
        raise ConfigError(f"{saved.exp_dir} holds another experiment: {details}. "
                          "Name a new EXP_DIR for a new configuration")  # fmt: skip


def claim(
    exp_dir: Path,
    recipe: str,
    fields: dict,
    train_args: list[str],
    seeds: list[int],
    added: dict | None = None,
) -> Experiment:
    """The experiment in EXP_DIR, created or checked to be this one (`added`: as in
    check_same_experiment); new seeds are added."""
    exp_dir = Path(exp_dir)
    if exp_dir.exists() and not exp_dir.is_dir():
        raise ConfigError(f"{exp_dir}: exists and is not a directory")
    saved = load_experiment(exp_dir)
    if saved is None:
        experiment = Experiment(exp_dir, recipe, fields, train_args, seeds)
    else:
        check_same_experiment(saved, fields, added)
        # The same computation: this command's flags serve (they may change only how a seed
        # runs: where it logs, how often it checkpoints); new seeds join.
        experiment = Experiment(exp_dir, saved.recipe, saved.fields, train_args,
                                sorted(set(saved.seeds) | set(seeds)))  # fmt: skip
    experiment.save()
    return experiment
