"""Starting or continuing a run: who owns the run directory, which configuration and
which checkpoint a (re)started training uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import TrainConfig, build_config, differing_fields
from ..errors import CifarlabError, ConfigError
from ..run.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from ..run.config_file import load_config
from ..run.lock import RunLock
from . import distributed
from .distributed import Placement


@dataclass
class StartingPoint:
    config: TrainConfig
    state: dict | None = None  # the checkpoint to continue from; None: a new run
    checkpoint_name: str | None = None
    notes: list[str] = field(default_factory=list)  # said to the user before training


def resolve_run(config: TrainConfig, asked: dict) -> StartingPoint:
    """Continue the run in config's run directory if it holds a checkpoint.

    A continued run keeps its saved configuration; fields the user asked for explicitly
    must agree with it, except those that do not change what is computed (max_steps for
    recipes whose schedules do not span the run, intervals, paths...).
    """
    run_dir = config.run_dir
    found = list_checkpoints(run_dir)
    if not found:
        return StartingPoint(config)
    if not (run_dir / "config.json").is_file():
        raise ConfigError(f"{run_dir} holds checkpoints but no config.json: name a new --run-dir")
    saved = load_config(run_dir)
    refuse_changed_recipe(saved, run_dir)
    differ = differing_fields(saved, asked)
    if differ:
        details = ", ".join(
            f"{name} (saved {saved.get(name)!r}, asked {asked[name]!r})" for name in differ
        )
        raise ConfigError(f"{run_dir} holds a run with a different configuration: {details}. "
                          "To start over, name a new --run-dir; nothing is ever deleted")  # fmt: skip
    values = {**saved.flat(), **asked, "run_dir": str(run_dir)}
    resumed = build_config(saved.recipe_spec, values)
    state, name, notes = newest_intact_checkpoint(found)
    return StartingPoint(resumed, state, name, notes)


def refuse_changed_recipe(saved: TrainConfig, run_dir: Path) -> None:
    """A run continues only on the code it started with: changed code would make the
    continued run neither the old run nor a new one."""
    source = saved.source
    if source.changed_from:
        raise ConfigError(f"{run_dir} was trained with {source.file} at sha256 {source.changed_from[:12]}; "
                          f"the file has changed since (now {source.sha256[:12]}), so the run cannot "
                          "continue exactly: restore the file, or name a new --run-dir")  # fmt: skip


def newest_intact_checkpoint(found: list[tuple[int, Path]]) -> tuple[dict, str, list[str]]:
    """The newest checkpoint that loads and passes its digest; damaged ones are named and
    left in place (never deleted), and an older one is used."""
    notes = []
    for _, path in reversed(found):
        try:
            return load_checkpoint(path), path.name, notes
        except CheckpointError as e:
            notes.append(f"skipping {e}")
        except FileNotFoundError:
            continue
    raise CheckpointError(
        f"{found[-1][1].parent}: none of its {len(found)} checkpoint(s) is intact ({notes[-1]}); "
        "name a new --run-dir to start over"
    )


def claim_run_dir(run_dir: Path) -> RunLock:
    """Create the run directory if needed and become its only trainer."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir}: exists and is not a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--run-dir {run_dir}: cannot create it ({e.strerror or e})") from None
    return RunLock(run_dir).acquire()


def agree_on_run(
    config: TrainConfig, asked: dict, placement: Placement
) -> tuple[StartingPoint, RunLock | None]:
    """Rank 0 claims the run directory, resolves the run and reads its checkpoint; every
    rank gets the same answer (other nodes need not see rank 0's run directory). An error on
    rank 0 is raised on all. Returns rank 0's lock, held until training ends."""
    lock, reply = None, None
    if placement.is_main:
        try:
            lock = claim_run_dir(config.run_dir)
            reply = resolve_run(config, asked)
        except CifarlabError as e:
            if lock is not None:
                lock.release()
            reply = e
    reply = distributed.broadcast_object(reply, placement)
    if isinstance(reply, CifarlabError):
        raise reply
    return reply, lock
