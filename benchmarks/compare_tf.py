"""The tutorial network against TensorFlow on this machine: training and evaluation
images/s, side by side, alternating, in one invocation.

    python benchmarks/compare_tf.py [--rounds 5] [--steps 50] [--threads N] [--extra-set fast_path=false]

Each round runs, as separate processes one after the other, `cifarlab bench train --recipe
tutorial`, `benchmarks/tf_reference.py train`, then the same two for evaluation; each
prints the median of its own repeats and this script takes the median over rounds. The
fp32 matrix-product peak is measured here too (best of several 2,048-square products
with torch), before and after the rounds, and each side's rate is turned into a fraction
of it with FLOPs per image counted by torch's FLOP counter (the tutorial network, batch
128: training = forward + backward, evaluation = forward). Needs the `tf-bench` extra.
Run it on a quiet machine: anything else running halves the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from cifarlab.machine import cpu_name, matmul_peak_gflops

HERE = Path(__file__).parent


def tutorial_mflop_per_image(batch: int = 128) -> tuple[float, float]:
    """(training, evaluation) MFLOP per image of the tutorial network, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    from cifarlab.models.tutorial import TutorialNet

    model = TutorialNet(10, fast=False)
    x = torch.randn(batch, 3, 24, 24)
    with FlopCounterMode(display=False) as forward:
        with torch.no_grad():
            model(x)
    with FlopCounterMode(display=False) as training:
        torch.nn.functional.cross_entropy(model(x), torch.zeros(batch, dtype=torch.long)).backward()
    return training.get_total_flops() / batch / 1e6, forward.get_total_flops() / batch / 1e6


def images_per_second(cmd: list[str]) -> float:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr.strip()[-2000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["images_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50, help="training steps per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs inside each process")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for both (0: default)")
    parser.add_argument("--extra-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a tutorial parameter for our side, e.g. fast_path=false")  # fmt: skip
    args = parser.parse_args()

    threads = ["--threads", str(args.threads)] if args.threads else []
    sets = [a for kv in args.extra_set for a in ("--set", kv)]
    common = ["--repeats", str(args.repeats), "--json", *threads]
    ours = [sys.executable, "-m", "cifarlab", "bench"]
    tf = [sys.executable, str(HERE / "tf_reference.py")]
    commands = {
        ("train", "cifarlab"): [*ours, "train", "--recipe", "tutorial", "--steps", str(args.steps), *sets, *common],
        ("train", "TensorFlow"): [*tf, "train", "--steps", str(args.steps), *common],
        ("eval", "cifarlab"): [*ours, "eval", "--recipe", "tutorial", *sets, *common],
        ("eval", "TensorFlow"): [*tf, "eval", *common],
    }  # fmt: skip

    train_mflop, eval_mflop = tutorial_mflop_per_image()
    if args.threads:
        torch.set_num_threads(args.threads)
    peaks = [matmul_peak_gflops(torch.device("cpu"))]
    rates: dict[tuple[str, str], list[float]] = {key: [] for key in commands}
    for r in range(args.rounds):
        for key, cmd in commands.items():
            rates[key].append(images_per_second(cmd))
        shown = ", ".join(f"{k[1]} {k[0]} {v[-1]:,.0f}" for k, v in rates.items())
        print(f"round {r + 1}: {shown} images/s", flush=True)
    peaks.append(matmul_peak_gflops(torch.device("cpu")))
    peak = max(peaks)

    print(f"\nCPU: {cpu_name()}, {torch.get_num_threads()} threads; fp32 matmul peak {peak:,.0f} GFLOP/s "
          f"(before {peaks[0]:,.0f}, after {peaks[1]:,.0f}); torch {torch.__version__}; "
          f"{args.rounds} alternating rounds, medians")  # fmt: skip
    if args.extra_set:
        print(f"our side with: {', '.join(args.extra_set)}")
    print(
        "\n| work | MFLOP/image | cifarlab images/s | TensorFlow images/s | ratio | cifarlab % of peak | TensorFlow % of peak |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    summary = {"cpu": cpu_name(), "peak_gflops": peak}
    for work, mflop in (("train", train_mflop), ("eval", eval_mflop)):
        mine = statistics.median(rates[(work, "cifarlab")])
        theirs = statistics.median(rates[(work, "TensorFlow")])
        print(f"| {work} | {mflop:.1f} | {mine:,.0f} | {theirs:,.0f} | {mine / theirs:.2f}x | "
              f"{100 * mine * mflop / 1e3 / peak:.0f}% | {100 * theirs * mflop / 1e3 / peak:.0f}% |")  # fmt: skip
        summary[work] = {"cifarlab": mine, "tensorflow": theirs, "ratio": mine / theirs,
                         "mflop_per_image": mflop, "runs": {k[1]: v for k, v in rates.items() if k[0] == work}}  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
