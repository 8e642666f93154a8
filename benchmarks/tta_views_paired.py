"""The same trained weights evaluated with two numbers of test-time views, paired by seed:

    python benchmarks/tta_views_paired.py EXP_DIR [--views 6 18] [--batch-size 500]

For each finished seed of a `cifarlab experiment` folder that kept its final checkpoint (saved
copies in benchmarks/results keep none: run it on the experiment's own folder), the
averaged weights of that checkpoint are evaluated on the whole test set with each number
of views (`tta_views`: 6, the recipe's default, or 18) and compared seed by seed: the
views change only the evaluation, never the training, so each seed is its own control and
the paired t-test needs far fewer seeds than two separate experiments would. Prints a
Markdown table (seed, accuracy with each, the difference) and the mean difference with its
95% interval and p-value. Evaluation FLOPs are not training FLOPs: the recipes' figures
count only training.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from cifarlab.data.datasets import load_run_split
from cifarlab.evaluate import metrics_from_logits, predict_logits
from cifarlab.experiment.results import seed_result
from cifarlab.run.checkpoint import latest_checkpoint
from cifarlab.run.trained import open_run


def accuracy_with_views(run_dir: Path, views: list[int],
                        batch_size: int) -> tuple[int, dict[int, float]]:  # fmt: skip
    """(the checkpoint's step, {views: accuracy}) of the run's newest checkpoint, averaged
    weights, test set."""
    trained = open_run(run_dir)
    images, labels = load_run_split(trained.config.run, run_dir, "test")
    out = {}
    for n in views:
        recipe = type(trained.recipe)(dataclasses.replace(trained.recipe.params, tta_views=n))
        logits = predict_logits(trained.model, recipe, images, batch_size=batch_size,
                                device=torch.device("cpu"), tta=True)  # fmt: skip
        out[n] = metrics_from_logits(logits, labels, trained.dataset.num_classes)["precision_at_1"]
    return trained.step, out


def main() -> None:
    from scipy import stats

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", type=Path)
    parser.add_argument("--views", type=int, nargs=2, default=[6, 18], metavar=("A", "B"))
    parser.add_argument("--batch-size", type=int, default=500, help="images a forward pass")
    args = parser.parse_args()

    seeds = sorted((p for p in args.experiment.glob("seed-*")
                    if seed_result(p) is not None and latest_checkpoint(p)),
                   key=lambda p: int(p.name.split("-")[1]))  # fmt: skip
    if not seeds:
        raise SystemExit(f"{args.experiment}: no finished seed with its final checkpoint")
    a, b = args.views
    print(f"| seed | step | {a} views | {b} views | {b} - {a}, points | seconds |\n"
          "|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    differences = []
    for run_dir in seeds:
        started = time.perf_counter()
        step, accuracy = accuracy_with_views(run_dir, [a, b], args.batch_size)
        differences.append(100 * (accuracy[b] - accuracy[a]))
        print(f"| {run_dir.name.split('-')[1]} | {step} | {accuracy[a]:.2%} | {accuracy[b]:.2%} "
              f"| {differences[-1]:+.2f} | {time.perf_counter() - started:.0f} |",
              flush=True)  # fmt: skip
    mean = statistics.mean(differences)
    if len(differences) < 2:
        print(f"\nn 1: {mean:+.2f} points (one seed: no interval)")
        return
    test = stats.ttest_1samp(differences, 0.0)
    low, high = test.confidence_interval(0.95)
    print(f"\nn {len(differences)}: mean {mean:+.2f} points, 95% interval [{low:+.2f}, "
          f"{high:+.2f}], paired t-test p = {test.pvalue:.3g}")  # fmt: skip


if __name__ == "__main__":
    main()
