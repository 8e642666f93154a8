"""RUN_DIR/result.json: a finished run's outcome in one small file, written by the trainer
after its final evaluation (train/loop.py) and read by `cifarlab experiment`: the
accuracy, the wall time from the command to it, the training FLOPs, where it ran."""

from __future__ import annotations

import json
from pathlib import Path

from ..files import atomic_write

RESULT = "result.json"


def write_result(run_dir: Path, record: dict) -> None:
    atomic_write(Path(run_dir) / RESULT, json.dumps(record, indent=1) + "\n")


def read_result(run_dir: Path) -> dict | None:
    """The record, or None for a run that has not finished (or a file that is not one)."""
    try:
        record = json.loads((Path(run_dir) / RESULT).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
