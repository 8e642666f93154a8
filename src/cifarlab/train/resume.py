"""Continuing a run: which configuration and checkpoint a (re)started training uses."""

from __future__ import annotations

from pathlib import Path

from ..config import TrainConfig, differing_fields, load_config
from ..errors import CifarlabError, ConfigError
from . import distributed
from .checkpoint import latest_checkpoint, load_checkpoint
from .runtime import Placement


def resolve_run(config: TrainConfig, asked: dict) -> tuple[TrainConfig, Path | None]:
    """Continue the run in config's run directory if it holds a checkpoint.

    A continued run keeps its saved configuration; fields the user asked for explicitly
    must agree with it, except those that do not change what is computed (max_steps...).
    """
    run_dir = config.resolved_run_dir
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        return config, None
    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        raise ConfigError(f"{run_dir} holds checkpoints but no config.json: name a new --run-dir")
    saved = load_config(saved_path)
    differ = differing_fields(saved, asked)
    if differ:
        details = ", ".join(
            f"{name} (saved {getattr(saved, name)!r}, asked {asked[name]!r})" for name in differ
        )
        raise ConfigError(f"{run_dir} holds a run with a different configuration: {details}. "
                          "To start over, name a new --run-dir; nothing is ever deleted")  # fmt: skip
    keep = {k: v for k, v in asked.items() if k in saved.to_dict()}
    return TrainConfig(**{**saved.to_dict(), **keep, "run_dir": str(run_dir)}), checkpoint


def agree_on_run(
    config: TrainConfig, asked: dict, placement: Placement
) -> tuple[TrainConfig, dict | None, str | None]:
    """Rank 0 resolves the run and reads its checkpoint; every rank gets the same answer
    (other nodes need not see rank 0's run directory). An error on rank 0 is raised on all."""
    reply: tuple = ("ok", None, None, None)
    if placement.is_main:
        try:
            resolved, checkpoint = resolve_run(config, asked)
            state = load_checkpoint(checkpoint) if checkpoint is not None else None
            reply = ("ok", resolved.to_dict(), state, checkpoint.name if checkpoint else None)
        except CifarlabError as e:
            reply = ("error", type(e).__name__, str(e), None)
    reply = distributed.broadcast_object(reply, placement)
    if reply[0] == "error":
        raise (ConfigError if reply[1] == "ConfigError" else CifarlabError)(reply[2])
    return TrainConfig(**reply[1]), reply[2], reply[3]
