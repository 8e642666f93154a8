"""What profiling costs a training step: page faults and the zeroing they bring.

Alternates plain and profiled steps of a recipe (the profiler as fast_step_profile.py runs
it, shapes recorded) and prints for each its wall time, the minor page faults it took and
the self time the profile gives `fill_`; then times zeroing the max-pool gradient's two
largest buffers alone, for comparison. In float32 unless --set precision=... says otherwise.
BENCHMARKS.md, "bfloat16 on the CPU", cites it.

  python benchmarks/profiled_step_faults.py --recipe fast --batch-size 2000 --rounds 4 \\
      --set precision=bfloat16
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=4, help="plain and profiled step pairs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    from cifarlab.allocator import configure_allocator
    from cifarlab.bench import training_state
    from cifarlab.config import parse_set
    from cifarlab.train.loop import apply_step, forward_step

    configure_allocator()  # as the CLI does
    # float32 unless --set precision=... (fast's default, auto, depends on the CPU)
    overrides = {"precision": "float32", **parse_set(args.set), "batch_size": args.batch_size,
                 "max_steps": 10**6}  # fmt: skip
    config, recipe, _, state = training_state(args.recipe, overrides, seed=0, device="cpu")
    state.step = config.run.max_steps // 2  # mid-run, as fast_step_profile.py measures

    def step(profiled: bool) -> tuple[float, int, float]:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        activities = [torch.profiler.ProfilerActivity.CPU]
        profiler = torch.profiler.profile(activities=activities, record_shapes=True)
        with profiler if profiled else contextlib.nullcontext():
            start = time.perf_counter()
            apply_step(state, forward_step(state, recipe, state.plan))
            seconds = time.perf_counter() - start
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        fill = 0.0
        if profiled:
            fill = sum(e.self_cpu_time_total for e in profiler.events() if e.name == "aten::fill_")
        return seconds, faults, fill / 1e3

    step(False), step(False)  # warm-up: allocator, caches, routes timed at first use
    print("| round | plain step s | plain page faults | profiled step s | profiled page faults "
          "| profiled fill_ ms |\n|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    for round_ in range(1, args.rounds + 1):
        (a, fa, _), (b, fb, fill) = step(False), step(True)
        print(f"| {round_} | {a:.2f} | {fa:,} | {b:.2f} | {fb:,} | {fill:.0f} |")

    width = recipe.widths() if hasattr(recipe, "widths") else (64, 256, 256)
    dtype = recipe.compute_dtype(torch.device("cpu")) or torch.float32
    for shape in ((args.batch_size, width[0], 31, 31), (args.batch_size, width[1], 15, 15)):
        buffer = torch.empty(shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            buffer.zero_()
            times.append((time.perf_counter() - start) * 1e3)
        print(f"zeroing {list(shape)} {dtype} alone: {min(times):.1f} ms (best of 5)")


if __name__ == "__main__":
    main()
