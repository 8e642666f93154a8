"""Check that a code change changes no result: the same short runs trained by two source
trees, every tensor of their final checkpoints compared for equality.

    git worktree add /tmp/before HEAD~3        # or any copy of an older checkout
    python benchmarks/same_result.py /tmp/before/src [src]

The runs (seed 0, the synthetic set, so no download is needed): the tutorial for 200 steps
at batch 128, on its CPU fast path with conv2 by Fourier transform (CIFARLAB_FFT_CONV=1, so
both trees take the same route whatever a timing would choose) and again on the oneDNN
route (=0); and `fast` for 4 steps at batch 256, in float32 and in bfloat16 (`--runs` picks
some). Both trees share the kernel cache, so bfloat16's filter-gradient routes, chosen by a
timing kept there, are the same for both (where the route names are). Each run is a
`python -m cifarlab train` process with PYTHONPATH set to the tree. Exit status 0 when every tensor of the weights,
the weight average and the optimizer state is equal to the bit.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from cifarlab.run.checkpoint import tensors_in

RUNS = {
    "tutorial-200-fourier": (["--max-steps", "200", "--batch-size", "128"], {"CIFARLAB_FFT_CONV": "1"}),
    "tutorial-200-onednn": (["--max-steps", "200", "--batch-size", "128"], {"CIFARLAB_FFT_CONV": "0"}),
    "fast-4": (["--recipe", "fast", "--max-steps", "4", "--batch-size", "256",
                "--set", "precision=float32"], {}),  # named: fast's default is auto
    "fast-4-bfloat16": (["--recipe", "fast", "--max-steps", "4", "--batch-size", "256",
                         "--set", "precision=bfloat16"], {}),
}  # fmt: skip


def train(src: Path, run_dir: Path, args: list[str], env: dict) -> Path:
    command = [sys.executable, "-m", "cifarlab", "train", "--synthetic", "--seed", "0",
               "--run-dir", str(run_dir), "--no-progress", *args]  # fmt: skip
    environment = {**os.environ, **env, "PYTHONPATH": str(src)}
    subprocess.run(command, env=environment, check=True, stdout=subprocess.DEVNULL)
    return max(run_dir.glob("ckpt-*.pt"))


def tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return {name: t for part in ("model", "average", "optimizer")
            for name, t in tensors_in(state.get(part), part)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="the older tree's src folder")
    parser.add_argument("after", type=Path, nargs="?", default=Path("src"),
                        help="the newer tree's src folder (default: src)")  # fmt: skip
    parser.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=sorted(RUNS),
                        help="which runs (default: all)")  # fmt: skip
    args = parser.parse_args()
    different = 0
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.runs:
            train_args, env = RUNS[name]
            a = tensors(
                train(args.before.resolve(), Path(scratch) / f"{name}-before", train_args, env)
            )
            b = tensors(
                train(args.after.resolve(), Path(scratch) / f"{name}-after", train_args, env)
            )
            unequal = sorted(k for k in a.keys() | b.keys()
                             if k not in a or k not in b or not torch.equal(a[k], b[k]))  # fmt: skip
            verdict = "bit-identical" if not unequal else f"{len(unequal)} differ: {unequal[:5]}"
            print(f"{name}: {len(a)} tensors, {verdict}")
            different += bool(unequal)
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())
