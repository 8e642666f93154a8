"""Does the per-machine choice of conv2's route pick the faster one here? The timing
conv2_choice.py makes (conv2 alone, forward and backward at batch 128, both routes
alternating), taken afresh several times, against the whole training step and evaluation
with each route forced (`cifarlab bench train|eval --recipe tutorial` with
CIFARLAB_FFT_CONV=1 and =0, alternating rounds).

    python benchmarks/conv2_routes.py --rounds 3

Run it on a quiet machine: it is a speed comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch

from cifarlab.machine import cpu_name
from cifarlab.models.tutorial_cpu import build, conv2_choice


def bench(what: str, route: str) -> float:
    command = [sys.executable, "-m", "cifarlab", "bench", what, "--recipe", "tutorial",
               "--repeats", "3", "--json"]  # fmt: skip
    env = {**os.environ, "CIFARLAB_FFT_CONV": route}
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["images_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if build.kernels() is None or conv2_choice.route_available():
        sys.exit(f"nothing to choose here: {conv2_choice.route_available()}")
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    timings = [conv2_choice._time_both() for _ in range(args.rounds)]
    fourier = statistics.median(t[0] for t in timings)
    onednn = statistics.median(t[1] for t in timings)
    print(f"conv2 alone, forward and backward at batch 128 (fastest of 9, median of "
          f"{args.rounds}): Fourier {fourier:.2f} ms, oneDNN {onednn:.2f} ms -> the choice: "
          f"{'Fourier' if fourier < onednn else 'oneDNN'}")  # fmt: skip
    rates: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for route in ("1", "0"):
            for what in ("train", "eval"):
                rates.setdefault((what, route), []).append(bench(what, route))
    print("| work | Fourier (CIFARLAB_FFT_CONV=1), images/s | oneDNN (=0), images/s | faster |")
    print("|---|---:|---:|---|")
    for what in ("train", "eval"):
        by_fft, by_dnn = rates[(what, "1")], rates[(what, "0")]
        winner = "Fourier" if statistics.median(by_fft) > statistics.median(by_dnn) else "oneDNN"
        print(f"| {what} | {statistics.median(by_fft):,.0f} ({', '.join(f'{r:,.0f}' for r in by_fft)}) "
              f"| {statistics.median(by_dnn):,.0f} ({', '.join(f'{r:,.0f}' for r in by_dnn)}) | {winner} |")  # fmt: skip


if __name__ == "__main__":
    main()
