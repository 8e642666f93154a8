"""Where one training step's FLOPs go, layer by layer, for a recipe and its settings:

    python benchmarks/step_flops_by_layer.py [--recipe fast95] [--batch-size N] [--set KEY=VALUE ...]

A Markdown table of a typical mid-run step (full-size images, the whitening bias frozen as
in most of a run's steps): each layer's forward and backward FLOPs at the run's batch, as
the training-FLOP count behind `experiment show` counts them (cifarlab/flops.py: matrix
products and convolutions, Muon's orthogonalization in the optimizer's step), with each
layer's share and the step's total, then the run's total. Where a proxy network chooses the
batch (`proxy_keep`), its FLOPs a step, averaged over the run (it scores every step and
trains on some), are a row of their own. Counting only: nothing is timed,
so it runs in seconds beside anything else.
"""

from __future__ import annotations

import argparse

import torch

from cifarlab.config import build_config, parse_set
from cifarlab.flops import selection_flops, step_flops_by_module, training_flops
from cifarlab.recipes import TrainingPlan

TRAIN_EXAMPLES = 50_000
PROXY = "(proxy)"
LABELS = {"": "loss", "(network)": "the network's own forward (the whitening stem)",
          PROXY: "the proxy network choosing the batch (average a step)"}  # fmt: skip


def describe(name: str, modules: dict) -> str:
    """A layer's path, with its channels where it has filters ("blocks.1.conv1, 96 -> 384")."""
    if name in LABELS:
        return LABELS[name]
    weight = getattr(modules.get(name), "weight", None)
    if weight is None or weight.dim() < 2:
        return name
    return f"{name}, {weight.shape[1]} -> {weight.shape[0]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="fast95")
    parser.add_argument("--batch-size", type=int, help="default: the recipe's")
    parser.add_argument("--max-steps", type=int, help="default: the recipe's")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    overrides = parse_set(args.set)
    for key in ("batch_size", "max_steps"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    config = build_config(args.recipe, overrides)
    plan = TrainingPlan.for_run(config, TRAIN_EXAMPLES)
    step = plan.max_steps // 2
    by_layer = step_flops_by_module(config, step, plan)
    selection, _ = selection_flops(config, plan)
    if selection:
        by_layer[PROXY] = selection // plan.max_steps
    total = sum(by_layer.values())
    images = torch.zeros(2, 32, 32, 3, dtype=torch.uint8)
    model = config.recipe.for_flop_count().build_model(10, images)
    modules = dict(model.named_modules())
    settings = " ".join(args.set)
    print(f"## {args.recipe}{' ' + settings if settings else ''}: step {step} of "
          f"{plan.max_steps}, batch {plan.global_batch_size}\n")  # fmt: skip
    print("| layer | GFLOP a step | share |\n|---|---:|---:|")
    for name, flops in sorted(by_layer.items(), key=lambda kv: -kv[1]):
        print(f"| {describe(name, modules)} | {flops / 1e9:,.1f} | {flops / total:.1%} |")
    print(f"| **the step** | **{total / 1e9:,.1f}** | 100% |")
    run = training_flops(config, TRAIN_EXAMPLES)["run_flops"]
    print(f"\nthe run: {run:.3g} training FLOPs over {plan.max_steps} steps")


if __name__ == "__main__":
    main()
