"""Time to accuracy: train a recipe for several seeds and print a table of accuracy,
seconds and FLOPs, with the device's name and its measured fp32 matrix-product peak.

    python benchmarks/time_to_accuracy.py --recipe fast --seeds 3
    python benchmarks/time_to_accuracy.py --recipe fast --seeds 1 --set width=128 --max-steps 240

Each seed is a full `cifarlab train` (data loading, training, checkpoints, the final
evaluation with the recipe's TTA) in this process, timed by the wall clock; on CUDA the
device is synchronized first, and one untimed warm-up run comes before the timed ones.
Training FLOPs are counted with torch's FLOP counter over one training step (forward,
loss, backward, and the optimizer's matrix products: Muon's orthogonalization) at the run's
batch size, once for each kind of step (image sizes may change between epochs, a layer may
stop training), summed over the steps; the optimizer's element-wise work is not counted (it
is under 0.1% here).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(
            line.split(":", 1)[1].strip()
            for line in out.splitlines()
            if line.startswith("Model name")
        )
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {torch.get_num_threads()} threads"


def matmul_peak_gflops(device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """fp32 [size x size] @ [size x size], best of `repeats` (the peak, not the typical).
    On the CPU, the better of two libraries: torch.mm (MKL) and oneDNN's matmul, which the
    convolutions use. On AMD CPUs MKL's GEMM does not use AVX-512 and reaches about half of
    what oneDNN does, so torch.mm alone would understate the machine's peak."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    products = [lambda: a @ b]
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        a_dnn, b_dnn = a.to_mkldnn(), b.t().contiguous().to_mkldnn()
        products.append(lambda: torch._C._nn.mkldnn_linear(a_dnn, b_dnn, None))
    best = float("inf")
    for product in products:
        for _ in range(repeats + 2):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            product()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def run_plan(config, steps: int, train_examples: int = 50_000):
    """The TrainingPlan of a run of `steps` steps of this configuration on the full data."""
    from cifarlab.recipes import TrainingPlan

    batch = config.run.global_batch_size or config.run.batch_size
    return TrainingPlan(steps, train_examples // batch, batch, train_examples)


def flops_per_step(config, device: torch.device, step: int = 0, plan=None) -> float:
    """Forward + loss + backward + optimizer FLOPs of the run's training step `step` at the
    run's batch size: with the images the recipe makes in that step's epoch (their size may
    change: progressive resizing) and the model switched as the recipe switches it for that
    step (a frozen layer needs fewer gradients). The optimizer counts only where it
    multiplies matrices (Muon); SGD's element-wise update is not counted, as the records do
    not count it."""
    from torch.utils.flop_counter import FlopCounterMode

    from cifarlab.data.loader import BatchPosition
    from cifarlab.recipes import get_recipe

    recipe = get_recipe(config.recipe, config.params)
    plan = plan or run_plan(config, config.run.max_steps)
    batch = plan.global_batch_size
    images = torch.randint(0, 256, (batch, 32, 32, 3), dtype=torch.uint8, device=device)
    model = recipe.build_model(10, images.cpu()).to(device)
    x = recipe.train_transform(images, torch.Generator(device).manual_seed(0),
                               BatchPosition(step // plan.steps_per_epoch, 0, batch,
                                             torch.arange(batch, device=device)))  # fmt: skip
    labels = torch.randint(0, 10, (batch,), device=device)
    optimizer = recipe.build_optimizer(model)
    recipe.prepare_step(model, step, plan)
    with FlopCounterMode(display=False) as counter:
        with recipe.autocast(device):
            logits = model(x)
        loss, _ = recipe.loss(model, logits.float(), labels)
        loss.backward()
        optimizer.step()
    return float(counter.get_total_flops())


def training_flops(config, device: torch.device, steps: int, train_examples: int = 50_000) -> float:
    """The sum over the run's steps of each step's FLOPs (the last partial batch of an epoch
    is dropped, as the trainer does). A step's count depends only on the shape of the images
    the recipe makes in its epoch and on the kind of step the recipe's prepare_step names,
    so each (shape, kind) is counted once."""
    from cifarlab.data.loader import BatchPosition
    from cifarlab.recipes import get_recipe

    recipe = get_recipe(config.recipe, config.params)
    plan = run_plan(config, steps, train_examples)
    probe = torch.zeros(2, 32, 32, 3, dtype=torch.uint8)
    model = recipe.build_model(10, probe)  # only to ask prepare_step for each step's kind
    counts: dict[tuple, float] = {}
    total = 0.0
    for step in range(steps):
        position = BatchPosition(step // plan.steps_per_epoch, 0, 2, torch.arange(2))
        shape = recipe.train_transform(probe, torch.Generator().manual_seed(0), position).shape
        key = (tuple(shape[1:]), recipe.prepare_step(model, step, plan))
        if key not in counts:
            counts[key] = flops_per_step(config, device, step, plan)
        total += counts[key]
    return total


def run_seed(recipe: str, seed: int, overrides: dict, run_dir: Path, device: torch.device) -> dict:
    from cifarlab.config import build_config
    from cifarlab.train.loop import train

    config = build_config(recipe, {**overrides, "seed": seed, "run_dir": str(run_dir)})
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = train(config, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"seed": seed, "accuracy": result.eval["precision_at_1"], "seconds": seconds,
            "steps": result.step, "config": config}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--run-root", help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", action="store_true", help="print the table as one JSON line last")
    args = parser.parse_args()

    from cifarlab.allocator import configure_allocator
    from cifarlab.config import parse_set
    from cifarlab.run.device import pick_device

    configure_allocator()
    device = pick_device(args.device)
    overrides = {**parse_set(args.set), "device": str(device)}
    if args.max_steps:
        overrides["max_steps"] = args.max_steps
    root = Path(args.run_root or tempfile.mkdtemp(prefix="tta-"))
    peak = matmul_peak_gflops(device)
    print(
        f"device: {device_name(device)}; fp32 matmul peak {peak:,.0f} GFLOP/s; torch {torch.__version__}"
    )
    if device.type == "cuda":  # compile and warm caches once, untimed
        run_seed(args.recipe, 10_000, {**overrides, "max_steps": 20}, root / "warmup", device)
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        row = run_seed(args.recipe, seed, overrides, root / f"seed-{seed}", device)
        row["flops"] = training_flops(row.pop("config"), device, row["steps"])
        rows.append(row)
        print(f"seed {seed}: accuracy {row['accuracy']:.4f}, {row['seconds']:.0f} s, "
              f"{row['flops']:.3g} training FLOPs", flush=True)  # fmt: skip
    accuracy = [r["accuracy"] for r in rows]
    print("\n| seed | accuracy | seconds | training FLOPs |\n|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['seed']} | {r['accuracy']:.4f} | {r['seconds']:.0f} | {r['flops']:.3g} |")
    spread = statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0
    print(f"\nmean {statistics.mean(accuracy):.4f}, std {spread:.4f}, min {min(accuracy):.4f} over "
          f"{len(rows)} seed(s); median time {statistics.median(r['seconds'] for r in rows):.0f} s")  # fmt: skip
    if args.json:
        print(json.dumps({"device": device_name(device), "peak_gflops": peak, "runs": rows}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
