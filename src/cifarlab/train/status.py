"""status.json: what a run's trainer is doing, for watchers (`cifarlab eval --watch`).

state: running | finished | interrupted | diverged | failed. Written atomically.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

STATUS = "status.json"


def write_status(
    run_dir: Path, state: str, step: int, max_steps: int, pid: int | None = None
) -> None:
    path = Path(run_dir) / STATUS
    tmp = path.with_name(f".{STATUS}.tmp-{os.getpid()}")
    tmp.write_text(
        json.dumps(
            {
                "state": state,
                "step": step,
                "max_steps": max_steps,
                "pid": pid or os.getpid(),
                "time": time.time(),
            }
        )
    )
    tmp.replace(path)


def read_status(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / STATUS).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def trainer_alive(status: dict) -> bool:
    try:
        os.kill(int(status["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError):
        return True
    return True
