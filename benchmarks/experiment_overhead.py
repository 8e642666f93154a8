"""What `cifarlab experiment run` costs beyond the seeds' own `cifarlab train` commands.

    python benchmarks/experiment_overhead.py --seeds 3 --rounds 2 -- --recipe fast --max-steps 10

Each round times the same N seeds two ways, in alternating order: N separate `cifarlab
train` commands one after another, and one `cifarlab experiment run --seeds 0-(N-1)` with
the same flags (each in a fresh folder, so nothing is skipped or resumed). Prints each
round's wall times and the median ratio; the goal is at most 1.02. Run it on a quiet
machine: anything else running changes both sides, but not by the same amount.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-2000:]}")
    return seconds


def separate(cifarlab: list[str], flags: list[str], seeds: int, here: Path) -> float:
    """N `cifarlab train` commands, one after another, as a user would type them."""
    return sum(timed([*cifarlab, "train", *flags, "--seed", str(seed), "--no-progress",
                      "--run-dir", str(here / f"train-{seed}")]) for seed in range(seeds))  # fmt: skip


def experiment(cifarlab: list[str], flags: list[str], seeds: int, here: Path) -> float:
    return timed(
        [
            *cifarlab,
            "experiment",
            "run",
            str(here / "experiment"),
            "--seeds",
            f"0-{seeds - 1}",
            *flags,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per side (default 3)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, alternating the order")
    parser.add_argument(
        "train_flags", nargs=argparse.REMAINDER, help="-- then cifarlab train flags"
    )
    args = parser.parse_args()
    flags = [f for f in args.train_flags if f != "--"]
    cifarlab = [sys.executable, "-m", "cifarlab"]
    root = Path(tempfile.mkdtemp(prefix="experiment-overhead-"))
    ratios = []
    print(f"{args.seeds} seeds of: cifarlab train {' '.join(flags)}")
    print(
        "| round | separate train commands, s | experiment run, s | ratio |\n|---:|---:|---:|---:|"
    )
    try:
        for round_ in range(args.rounds):
            here = root / f"round-{round_}"
            if round_ % 2 == 0:
                a, b = (
                    separate(cifarlab, flags, args.seeds, here),
                    experiment(cifarlab, flags, args.seeds, here),
                )
            else:
                b, a = (
                    experiment(cifarlab, flags, args.seeds, here),
                    separate(cifarlab, flags, args.seeds, here),
                )
            ratios.append(b / a)
            print(f"| {round_ + 1} | {a:.1f} | {b:.1f} | {b / a:.4f} |", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nmedian ratio {statistics.median(ratios):.4f} over {len(ratios)} round(s)")


if __name__ == "__main__":
    main()
