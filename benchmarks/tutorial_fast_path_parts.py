"""What each part of the tutorial network's fast path buys: the network alone (no input
pipeline, no optimizer), forward + backward and forward only, batch 128, in steps from the
straightforward implementation to the fast one, alternating the variants several times.

    python benchmarks/tutorial_fast_path_parts.py [--rounds 5] [--iterations 30]

Variants:
  reference        fast_path=false: NCHW, LRN as a batched band matmul, recorded backward,
                   SAME pool on a -inf padded copy
  + layout, pool   channels_last activations and weights, the unpadded SAME pool, ReLU in
                   place; the reference LRN
  + LRN            the whole fast path: the LRN's window sum as a 1x1 convolution, with
                   its own backward
Also the LRN's window sum alone at the tutorial's LRN shape ([128, 64, 12, 12]): torch.mm
(MKL) against the 1x1 convolution (oneDNN). Prints medians over rounds, in ms.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
import torch.nn.functional as F

from cifarlab.models.lrn import LocalResponseNorm, _band
from cifarlab.models.tutorial import TutorialNet


def variants() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    reference = TutorialNet(10, fast=False)
    layout = TutorialNet(10, fast=True)
    layout.norm1, layout.norm2 = LocalResponseNorm(fast=False), LocalResponseNorm(fast=False)
    fast = TutorialNet(10, fast=True)
    for model in (layout, fast):
        model.load_state_dict(reference.state_dict())
    return {"reference": reference, "+ layout, pool": layout.to(memory_format=torch.channels_last),
            "+ LRN (fast path)": fast.to(memory_format=torch.channels_last)}  # fmt: skip


def timed_ms(fn, iterations: int) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    return (time.perf_counter() - start) / iterations * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=30)
    args = parser.parse_args()

    x = torch.randn(128, 3, 24, 24)
    labels = torch.randint(0, 10, (128,))
    models = variants()

    def train_step(model):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), labels).backward()

    def forward(model):
        with torch.no_grad():
            model(x)

    sq = torch.randn(128, 64, 12, 12).contiguous(memory_format=torch.channels_last)
    band = _band(64, 4, sq.device, sq.dtype)
    rows = sq.permute(0, 2, 3, 1).reshape(-1, 64)
    window = {"torch.mm (MKL)": lambda: rows @ band,
              "1x1 convolution (oneDNN)": lambda: F.conv2d(sq, band.view(64, 64, 1, 1))}  # fmt: skip

    times: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, model in models.items():
            times.setdefault(f"train {name}", []).append(
                timed_ms(partial(train_step, model), args.iterations)
            )
            times.setdefault(f"eval {name}", []).append(
                timed_ms(partial(forward, model), args.iterations)
            )
        for name, fn in window.items():
            times.setdefault(f"LRN window sum, {name}", []).append(
                timed_ms(fn, args.iterations * 5)
            )

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.rounds} rounds\n"
    )
    print("| what | ms (batch 128) | images/s |\n|---|---:|---:|")
    for name, values in times.items():
        ms = statistics.median(values)
        rate = f"{128 / ms * 1e3:,.0f}" if not name.startswith("LRN") else ""
        print(f"| {name} | {ms:.2f} | {rate} |")


if __name__ == "__main__":
    main()
