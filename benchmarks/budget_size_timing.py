"""How well --budget's size timing predicts a full step: each width of `fast`'s frontier
timed by the trainer's own step (train/budget.py) on a small batch, scaled to the run's
batch, against the step timed at that batch.

    python benchmarks/budget_size_timing.py --batches 250 500 2000

Prints one line a width: seconds a step at each batch and, scaled to the largest, what
that batch predicts for it. Run it alone: the figures are timings.
"""

from __future__ import annotations

import argparse

import torch

from cifarlab.allocator import configure_allocator
from cifarlab.config import build_config
from cifarlab.recipes import load_recipe
from cifarlab.train import budget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="fast", help="a recipe with a measured frontier")
    parser.add_argument("--batches", type=int, nargs="+", default=[250, 500, 2000])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe parameter (repeatable), e.g. precision=bfloat16")  # fmt: skip
    args = parser.parse_args()
    configure_allocator()  # as the CLI does: the trainer's own allocation behaviour
    frontier = load_recipe(args.recipe)[0].budget_frontier
    if frontier is None:
        parser.error(f"{args.recipe} has no measured frontier")
    asked = dict(item.split("=", 1) for item in args.set)
    full = max(args.batches)
    device = torch.device("cpu")
    for value in frontier.values():
        config = build_config(args.recipe, {**asked, frontier.setting: value})
        cells = []
        for batch in sorted(args.batches):
            timing = budget._TimingRun(config, device, batch, 50_000)
            seconds = timing.step_seconds(0) / budget.STEP_MARGIN
            cells.append(f"batch {batch}: {seconds:.3f} s (predicts {seconds * full / batch:.2f})")
        print(f"{frontier.setting} {value}: " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
