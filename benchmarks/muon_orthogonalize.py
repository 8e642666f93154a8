"""What Muon's orthogonalization costs a step, and what its faster forms buy:

    python benchmarks/muon_orthogonalize.py [--recipe fast] [--set NAME=VALUE ...] [--rounds 7]
                                            [--checkpoint RUN/ckpt-N.pt ...]

Muon replaces each filter bank's update by its Newton-Schulz orthogonalization (muon.py).
This times it for every bank the recipe's optimizer orthogonalizes, three ways, interleaved
over rounds (median of each round's mean of 10 calls): the iteration as written in float32
(what the training FLOP count counts), on the m x m Gram matrix in float32 (what training
runs where that multiplies less: the same function) and as written in bfloat16
(`muon_precision=bfloat16`). Each way's distance from float64's iteration as written says
whether it computes the same thing; the last row sums a step's banks. The updates are
random (Gaussian) unless `--checkpoint` names checkpoints of a Muon run: then each of their
filter banks' momentum, a real update's spectrum.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cifarlab.config import build_config, parse_set
from cifarlab.machine import code_version, device_name
from cifarlab.muon import Muon, gram_form_is_cheaper, orthogonalize
from cifarlab.run.checkpoint import load_checkpoint

CALLS = 10  # a round's calls of each way: well above the timer's resolution


def ways(iterations: int) -> dict:
    return {
        "as written": lambda u: orthogonalize(u, iterations, gram_form=False),
        "Gram form": lambda u: orthogonalize(u, iterations),
        "bfloat16": lambda u: orthogonalize(u, iterations, torch.bfloat16, gram_form=False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--checkpoint", action="append", default=[], metavar="PATH",
                        help="orthogonalize these checkpoints' filter momentum instead")  # fmt: skip
    args = parser.parse_args()
    recipe = build_config(args.recipe, parse_set(args.set)).recipe
    images = torch.randint(0, 256, (50, 32, 32, 3), dtype=torch.uint8)
    optimizer = recipe.build_optimizer(recipe.build_model(10, images))
    if not isinstance(optimizer, Muon):
        parser.error(f"{args.recipe} does not train with Muon here (conv_optimizer=muon)")
    banks = [q.shape for g in optimizer.param_groups if g["orthogonalize"] for q in g["params"]]
    iterations = optimizer.param_groups[-1]["iterations"]
    print(f"{device_name(torch.device('cpu'))}; torch {torch.__version__}; cifarlab "
          f"{code_version()}; {args.recipe}, {len(banks)} banks, {iterations} iterations\n")  # fmt: skip

    functions = ways(iterations)
    print("| bank | m x n | " + " | ".join(f"{w} ms" for w in functions)
          + " | " + " | ".join(f"{w}: from float64" for w in functions) + " |")  # fmt: skip
    print("|---|---|" + "---:|" * (2 * len(functions)))
    totals = dict.fromkeys(functions, 0.0)
    if args.checkpoint:
        updates = [(f"{list(buffer.shape)}, step {state['step']}", buffer)
                   for path in args.checkpoint
                   for state in [load_checkpoint(path)]
                   for buffer in momentum_of_filters(state)]  # fmt: skip
    else:
        updates = [(list(shape), torch.randn(shape, generator=torch.Generator().manual_seed(0)))
                   for shape in banks]  # fmt: skip
    for label, update in updates:
        shape = update.shape
        m, n = sorted((shape[0], shape[1:].numel()))
        want = orthogonalize(update.double(), iterations, gram_form=False)
        gaps = {w: ((f(update).double() - want).norm() / want.norm()).item()
                for w, f in functions.items()}  # fmt: skip
        times: dict[str, list[float]] = {w: [] for w in functions}
        for round_ in range(args.rounds + 1):  # the first a warm-up
            for w, f in functions.items():
                start = time.perf_counter()
                for _ in range(CALLS):
                    f(update)
                if round_:
                    times[w].append((time.perf_counter() - start) / CALLS * 1e3)
        medians = {w: statistics.median(t) for w, t in times.items()}
        for w in totals:
            totals[w] += medians[w]
        gram = "" if gram_form_is_cheaper(m, n, iterations) else " (as written)"
        print(f"| {label} | {m} x {n}{gram} | "
              + " | ".join(f"{medians[w]:.2f}" for w in functions) + " | "
              + " | ".join(f"{gaps[w]:.1e}" for w in functions) + " |")  # fmt: skip
    print("| **a step** | | " + " | ".join(f"**{totals[w]:.1f}**" for w in functions)
          + " | | | |")  # fmt: skip
    base = totals["as written"]
    print(f"\nGram form {base / totals['Gram form']:.2f}x, bfloat16 "
          f"{base / totals['bfloat16']:.2f}x as fast as the iteration as written")  # fmt: skip


def momentum_of_filters(state: dict) -> list[torch.Tensor]:
    """The momentum buffers of a checkpoint's 4-D parameters: its filter banks' updates."""
    buffers = (entry.get("momentum_buffer") for entry in state["optimizer"]["state"].values())
    return [b.float() for b in buffers if b is not None and b.ndim == 4]


if __name__ == "__main__":
    main()
