"""Training speed of the tutorial recipe: 1 process vs N processes under torchrun (gloo/NCCL).

    python benchmarks/train_speed.py --steps 60 --repeats 3 --nproc 2 [--device cpu|cuda]

Each configuration trains the tutorial network for --steps steps on the synthetic set (pixel
values do not change the cost) with the global batch the tutorial's towers give: 128 per
process. images/s is read from the run's own console lines (every 10 steps), dropping the
first interval (warm-up); the table shows the median over repeats. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

LINE = re.compile(r"step (\d+), loss = [\d.]+ \(([\d.]+) examples/sec")


def run_once(nproc: int, steps: int, device: str, batch: int, workdir: str) -> float:
    run_dir = tempfile.mkdtemp(dir=workdir)
    args = ["train", "--synthetic", "--run-dir", run_dir, "--max-steps", str(steps), "--batch-size", str(batch),
            "--device", device, "--no-progress", "--checkpoint-every", str(10**9), "--summary-every", str(10**9)]  # fmt: skip
    if nproc == 1:
        cmd = [sys.executable, "-m", "cifarlab", *args]
    else:
        torchrun = shutil.which("torchrun") or os.path.join(
            os.path.dirname(sys.executable), "torchrun"
        )
        cmd = [torchrun, "--standalone", f"--nproc-per-node={nproc}", "-m", "cifarlab", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rates = [float(m.group(2)) for m in LINE.finditer(out)][
        1:
    ]  # the first interval includes warm-up
    shutil.rmtree(run_dir, ignore_errors=True)
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128, help="per process")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        print(f"| processes | global batch | images/s (median of {args.repeats}) | runs |")
        print("|---:|---:|---:|---|")
        for nproc in (1, args.nproc):
            runs = [
                run_once(nproc, args.steps, args.device, args.batch_size, workdir)
                for _ in range(args.repeats)
            ]
            print(
                f"| {nproc} | {nproc * args.batch_size} | {statistics.median(runs):,.0f} | {', '.join(f'{r:,.0f}' for r in runs)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
