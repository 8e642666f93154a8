"""Where a fast-recipe training step spends its time, and what fraction of the machine's
fp32 matrix-product peak it reaches, measured in one run:

    python benchmarks/fast_step_profile.py [--recipe fast] [--batch-size 1024] [--set KEY=VALUE ...]
                                           [--against KEY=VALUE ...] [--against-env NAME=VALUE ...]
                                           [--default-allocator]

1. the peak (cifarlab.machine.matmul_peak_gflops: the better of MKL and oneDNN);
2. seconds a step of the real training step (train/loop.py's forward_step and apply_step, as
   `cifarlab bench train` runs them: input pipeline, forward, loss, backward, optimizer,
   lookahead) on a random CIFAR-sized split, median of --repeats runs of --steps steps; the
   counted FLOPs of a step (full-size images, as in the late epochs) over it = GFLOP/s, and
   its fraction of the peak; the minor page faults a step (memory the kernel hands out anew:
   zero once malloc keeps freed memory, cifarlab/allocator.py);
3. a torch.profiler table of one more step: self CPU time by operator family, and each
   convolution layer's forward and backward by its input shapes, with the algorithm each
   ran (the library's direct convolution, a bfloat16 filter-gradient route, or Winograd).
Where a proxy network chooses the batch (`--set proxy_keep=...`), its FLOPs a step (averaged
over the run: it scores every step, trains on some) count in the step's, and its time is a
family of its own, apart from the network's layers.
The recipe runs in float32 unless --set precision=... says otherwise. With --against, the
same for the recipe with those settings changed, in the same run, and how many times as
fast its step is (`--against precision=bfloat16`: the plain float32 path beside the
bfloat16 one; `--against convolution=auto`: beside Winograd where it was timed faster).
--against-env does the same with environment variables set for the second measurement
(`--against-env CIFARLAB_NATIVE=0`: without the native kernels, so the pool, batch norm and
GELU by PyTorch's operators rather than fused).
Run it on a quiet machine: anything else running halves the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import time
from collections import defaultdict

import torch

from cifarlab.flops import selection_flops, step_flops
from cifarlab.machine import device_name, matmul_peak_gflops
from cifarlab.models import bf16_conv, winograd
from cifarlab.recipes import TrainingPlan

FAMILIES = [  # (family, substrings of profiler op names), first match wins
    ("max-pool, batch norm and GELU fused", ("normgelu",)),  # models/norm_gelu.py
    ("convolution", ("convolution", "conv2d")),
    ("batch norm", ("batch_norm",)),
    ("GELU", ("gelu",)),
    ("max-pool", ("max_pool", "amax", "max")),
    ("optimizer and lookahead", ("_foreach", "lerp", "mm", "norm")),
    ("input pipeline", ("randint", "nonzero", "index", "pad", "where", "flip")),
]
# The profiler region the proxy network's scoring and training run in (its own family).
PROXY_LABEL = "cifarlab proxy selection"


def family(name: str) -> str:
    lowered = name.lower()
    return next((f for f, keys in FAMILIES if any(k in lowered for k in keys)), "other")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="fast", help="fast or fast-muon (or any recipe)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--against", action="append", default=[], metavar="KEY=VALUE",
                        help="also measure the recipe with these settings changed (for "
                             "instance precision=bfloat16), beside the first, in this run")  # fmt: skip
    parser.add_argument("--against-env", action="append", default=[], metavar="NAME=VALUE",
                        help="also measure with these environment variables set (for "
                             "instance CIFARLAB_NATIVE=0), with --against's settings if any")  # fmt: skip
    parser.add_argument("--default-allocator", action="store_true",
                        help="leave glibc's malloc as it is (the CLI configures it: "
                             "cifarlab/allocator.py), to measure what that buys")  # fmt: skip
    args = parser.parse_args()
    for pair in args.against_env:
        if "=" not in pair or not pair.split("=", 1)[0]:
            parser.error(f"--against-env takes NAME=VALUE, not {pair!r}")

    from cifarlab.allocator import configure_allocator
    from cifarlab.config import parse_set

    if not args.default_allocator:
        configure_allocator()
    peak = matmul_peak_gflops(torch.device("cpu"))
    print(f"device: {device_name(torch.device('cpu'))}; torch {torch.__version__}; "
          f"fp32 matmul peak {peak:,.0f} GFLOP/s")  # fmt: skip
    # The first path is the plain one unless --set says otherwise: float32, whatever the
    # recipe's default (fast's precision=auto would be bfloat16 on some CPUs).
    base = {"precision": "float32", **parse_set(args.set)}
    variants = [(" ".join(f"{k}={v}" for k, v in base.items()), base, {})]
    if args.against or args.against_env:
        env = dict(pair.split("=", 1) for pair in args.against_env)
        label = " ".join([*args.against, *args.against_env])
        variants.append((label, {**base, **parse_set(args.against)}, env))
    results = []
    for label, overrides, env in variants:
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        try:
            results.append(measure(args, label, overrides, peak))
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    if len(results) == 2:
        print(f"\n{variants[1][0]}: step {results[0] / results[1]:.2f}x as fast as {variants[0][0]}")


def measure(args, label: str, settings: dict, peak: float) -> float:
    """One variant: its step's median seconds, GFLOP/s, page faults, where the time goes
    (by operator family, and each convolution pass by its input shapes). Returns seconds."""
    from cifarlab.bench import training_state
    from cifarlab.train.loop import apply_step, forward_step

    overrides = {**settings, "batch_size": args.batch_size, "max_steps": 10**6}
    config, recipe, cpu, state = training_state(args.recipe, overrides, seed=0, device="cpu")
    # A typical step, mid-run: the whitening bias frozen (the recipe's prepare_step), as in
    # most of a run's steps, and full-size images (without progressive resizing).
    state.step = config.run.max_steps // 2
    plan = TrainingPlan.for_run(config, 50_000)
    selection = selection_flops(config, plan)[0] // plan.max_steps  # 0 without a proxy
    flops = step_flops(config, state.step, plan) + selection
    if state.selector is not None:  # its time apart in the profile: a region of its own
        select = state.selector.select

        def labelled_select(*a, **kw):
            with torch.profiler.record_function(PROXY_LABEL):
                return select(*a, **kw)

        state.selector.select = labelled_select

    faults: list[float] = []  # minor page faults a step: memory the kernel hands out anew

    def steps(n: int) -> float:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        for _ in range(n):
            apply_step(state, forward_step(state, recipe, state.plan))
        faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n)
        return (time.perf_counter() - start) / n

    steps(2)  # warm-up: allocator, caches, routes timed at first use
    seconds = sorted(steps(args.steps) for _ in range(args.repeats))
    step_s = statistics.median(seconds)
    gflops = flops / step_s / 1e9
    dtype = recipe.compute_dtype(cpu)
    print(f"\n## {args.recipe}, {label} ({dtype or torch.float32} arithmetic)\n")
    print(f"as a result records it: {recipe.arithmetic(cpu)}")  # the routes timed faster here
    print(f"step {step_s:.2f} s (runs {', '.join(f'{s:.2f}' for s in seconds)}), "
          f"{args.batch_size / step_s:,.0f} images/s; {flops / args.batch_size / 1e9:.3f} GFLOP "
          f"an image: {gflops:,.0f} GFLOP/s = {gflops / peak:.0%} of the fp32 peak")  # fmt: skip
    print(f"minor page faults a step: {statistics.median(faults[1:]):,.0f}")

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                record_shapes=True) as prof:  # fmt: skip
        profiled_s = steps(1)
    # A profiled step faults in new pages where a plain one faults none (most likely the
    # profiler's own records taking heap memory between the step's buffers), each zeroed by
    # the kernel at its first write: that time lands in whichever operator writes a new
    # buffer first, mostly fill_ and copy_ ("other"). Said, so it is not read as the step's.
    print(f"profiled step: {profiled_s:.2f} s, {faults[-1]:,.0f} minor page faults (the "
          "operator times below include the kernel's zeroing of those pages, mostly in "
          "fill_ and copy_)")  # fmt: skip
    rest, proxy = split_regions(prof.events(), (PROXY_LABEL,))
    outside, regions = split_regions(rest, ROUTE_LABELS)
    by_family: dict[str, float] = defaultdict(float)
    for event in proxy:  # whatever it ran: the proxy's scoring and training
        by_family["proxy network choosing the batch"] += event.cpu_time_total / 1e3
    for event in outside:
        by_family[family(event.name)] += event.self_cpu_time_total / 1e3
    for event in regions:  # whatever operators a route ran: convolution work
        by_family["convolution"] += event.cpu_time_total / 1e3
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(by_family.values())
    print("\n| operator family | ms (self CPU, one step) | share |\n|---|---:|---:|")
    for name, ms in sorted(by_family.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {ms:,.0f} | {ms / total:.0%} |")
    print_layers(outside, regions, peak)
    print("\ntop operators:")
    for event in ops[:15]:
        print(f"  {event.self_cpu_time_total / 1e3:8.0f} ms  {event.count:4d}x  {event.key}")
    return step_s


ROUTE_LABELS = (bf16_conv.FILTER_GRADIENT_LABEL, winograd.LABEL)
# The library's convolution operators with the time in them (self time): oneDNN's, or its
# own im2col where oneDNN cannot serve, which is bfloat16 on a CPU without native bfloat16.
FORWARD_OPS = ("aten::mkldnn_convolution", "aten::_slow_conv2d_forward")
BACKWARD_OPS = ("aten::convolution_backward", "aten::_slow_conv2d_backward")


def split_regions(events: list, labels: tuple[str, ...]) -> tuple[list, list]:
    """(the profiled operators outside the regions whose names begin with one of `labels`,
    those regions): bf16_conv's filter gradients and Winograd's passes, or the proxy's
    selection. A region's time, whatever it ran (matrix products, copies, transforms), is
    its own."""
    regions = [e for e in events if e.name.startswith(labels)]
    inside: set[int] = set()
    stack = [child for region in regions for child in region.cpu_children]
    while stack:
        event = stack.pop()
        inside.add(id(event))
        stack.extend(event.cpu_children)
    outside = [e for e in events if id(e) not in inside and e not in regions]
    return outside, regions


def print_layers(outside: list, regions: list, peak: float) -> None:
    """One line per convolution shape (input and filters): how many of the step's layers
    have it, the direct-convolution GFLOP of one layer's pass, the forward's and the
    backward's (both gradients) milliseconds over those layers, the equivalent GFLOP/s,
    and the algorithm: the library's direct convolution, with the filter gradient's route
    where bf16_conv chose one, or Winograd. Layers of one shape share a line (the profiler
    names operators, not modules), so its rate counts every layer's passes: one forward
    each, seen in the profile. The fast network's padding: 1 for its 3x3 convolutions, none
    for the 2x2 whitening."""
    layers: dict = defaultdict(
        lambda: {"forward": 0.0, "backward": 0.0, "algorithm": "", "layers": 0}
    )
    for event in outside:
        shapes = [tuple(s) for s in event.input_shapes if s]
        if event.name in FORWARD_OPS and len(shapes) >= 2:
            layers[shapes[0], shapes[1]]["forward"] += event.self_cpu_time_total / 1e3
            layers[shapes[0], shapes[1]]["layers"] += 1
        elif event.name in BACKWARD_OPS and len(shapes) >= 3:  # (grad_y, x, weight)
            layers[shapes[1], shapes[2]]["backward"] += event.self_cpu_time_total / 1e3
    for event in regions:  # "<label> <route or pass> [n, c, h, w] [o, c, k, k]"
        x_shape, w_shape = (tuple(json.loads(s)) for s in re.findall(r"\[[^]]*\]", event.name))
        layer = layers[x_shape, w_shape]
        if event.name.startswith(winograd.LABEL):
            forward = " forward " in event.name
            layer["forward" if forward else "backward"] += event.cpu_time_total / 1e3
            layer["layers"] += forward
            layer["algorithm"] = "Winograd F(4x4, 3x3)"
        else:  # bf16_conv's filter gradient: the route is the word after the label
            layer["backward"] += event.cpu_time_total / 1e3
            route = event.name[len(bf16_conv.FILTER_GRADIENT_LABEL) :].split()[0]
            layer["algorithm"] = f"direct; filter gradient {route}"
    print("\n| shape: input, filters | layers | GFLOP a layer's pass (direct) | forward ms "
          "| backward ms | GFLOP/s (passes run, direct-equivalent) | algorithm |\n"
          "|---|---:|---:|---:|---:|---:|---|")  # fmt: skip
    for (x, w), ms in sorted(layers.items(), key=lambda kv: -(kv[1]["forward"] + kv[1]["backward"])):
        n, c, h, wd = x
        o, _, k, _ = w
        pad = 1 if k == 3 else 0
        gflop = 2 * n * (h + 2 * pad - k + 1) * (wd + 2 * pad - k + 1) * o * c * k * k / 1e9
        passes = 3 if ms["backward"] else 1
        if c == 24 and ms["backward"]:  # on the stem's output: at the measured mid-run step
            passes = 2  # the whitening bias is frozen, so no input gradient is computed
        rate = ms["layers"] * passes * gflop / ((ms["forward"] + ms["backward"]) / 1e3)
        algorithm = ms["algorithm"] or "direct"  # a route only where this step's profile ran one
        print(f"| {list(x)}, {list(w)} | {ms['layers']} | {gflop:.1f} | {ms['forward']:.0f} | "
              f"{ms['backward']:.0f} | {rate:,.0f} ({rate / peak:.0%}) | {algorithm} |")
    products = [e for e in outside if e.name == "aten::mm"]
    print(f"matrix products outside the convolutions (Muon, the head): "
          f"{sum(e.self_cpu_time_total for e in products) / 1e3:.0f} ms")


if __name__ == "__main__":
    main()
