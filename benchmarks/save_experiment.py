"""Keep an experiment's evidence in the repository: its small files, not its checkpoints.

    python benchmarks/save_experiment.py /work/experiments/fast benchmarks/results/experiments/fast

Copies EXP_DIR/experiment.json and, for every finished seed, seed-N/result.json and
seed-N/config.json (a few KB each), and writes show.json: what `cifarlab experiment show
--json` prints for them. The copy is itself an experiment directory: `cifarlab experiment
show DEST` reads it, and to go on with more seeds on another machine (or after the
machine's files are gone), copy DEST somewhere and rerun the experiment's command on the
copy: the finished seeds are skipped, the rest trained.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from cifarlab.experiment.results import show
from cifarlab.run.result import RESULT


def evidence(dest: Path) -> dict:
    """What produced these figures: the command, and from the seeds' result.json files the
    machines, torch versions, code versions and dates they ran on."""
    spec = json.loads((dest / "experiment.json").read_text())
    results = [json.loads(p.read_text()) for p in sorted(dest.glob(f"seed-*/{RESULT}"))]

    def seen(key: str) -> list:
        return sorted({str(r[key]) for r in results if r.get(key) is not None})

    return {"command": " ".join(["cifarlab experiment run EXP_DIR", *spec.get("train_args", [])]),
            "cpus": seen("cpu"), "threads": seen("threads"), "torch": seen("torch"),
            "code": seen("code"), "finished": seen("finished")}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the experiment directory (EXP_DIR)")
    parser.add_argument("dest", type=Path, help="where its small files go")
    args = parser.parse_args()
    source, dest = args.source, args.dest
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "experiment.json", dest / "experiment.json")
    kept = 0
    for seed_dir in sorted(source.glob("seed-*")):
        if not (seed_dir / RESULT).is_file():
            continue  # unfinished: nothing to keep (its checkpoints stay where they are)
        (dest / seed_dir.name).mkdir(exist_ok=True)
        for name in (RESULT, "config.json"):
            shutil.copy2(seed_dir / name, dest / seed_dir.name / name)
        kept += 1
    (dest / "show.json").write_text(json.dumps(show(dest), indent=1) + "\n")
    (dest / "evidence.json").write_text(json.dumps(evidence(dest), indent=1) + "\n")
    print(f"kept {kept} finished seed(s) of {source} in {dest}")


if __name__ == "__main__":
    main()
