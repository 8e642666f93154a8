"""The bfloat16 filter gradient's routes (models/bf16_conv.py) at a real batch: every 3x3
convolution shape of a recipe's network, every route timed on the same tensors, the routes
alternating round by round, beside the route this machine's timed choice (made once, at
bf16_conv.TIMING_BATCH images) gives that shape.

    python benchmarks/bf16_weight_grad_routes.py [--recipe fast] [--batch-size 2000] [--rounds 5]
                                                 [--set KEY=VALUE ...] [--chunks-mb 1 2 4 8]

Prints one row a shape: the fastest and the median of the rounds for each route, in ms;
with --chunks-mb, also the unfolded route with each of those chunk sizes
(bf16_conv.UNFOLDED_CHUNK_BYTES), to choose it.
The fastest of several rounds is the figure to compare: on a shared machine a round can
take twice as long for reasons of its own. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from cifarlab.config import build_config
from cifarlab.machine import cpu_name
from cifarlab.models import bf16_conv


def conv_shapes(model: torch.nn.Module) -> list[tuple[int, int, int, int]]:
    """(in, out, height, width) of each distinct 3x3 bf16_conv.Conv2d input, in the order
    the network runs them (one image through it, hooks recording the inputs)."""
    shapes: list[tuple[int, int, int, int]] = []

    def record(module, inputs):
        _, c, h, w = inputs[0].shape
        shape = (c, module.out_channels, h, w)
        if module.kernel_size == (3, 3) and shape not in shapes:
            shapes.append(shape)

    hooks = [m.register_forward_pre_hook(record) for m in model.modules()
             if isinstance(m, bf16_conv.Conv2d)]  # fmt: skip
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe parameter (repeatable), e.g. width=128")  # fmt: skip
    parser.add_argument("--chunks-mb", type=float, nargs="*", default=[],
                        help="also time the unfolded route with these chunk sizes")  # fmt: skip
    args = parser.parse_args()
    if args.rounds < 1 or args.batch_size < 1:
        parser.error("--rounds and --batch-size must be positive")
    config = build_config(args.recipe, dict(item.split("=", 1) for item in args.set))
    model = config.recipe.build_model(10, None)
    routes = sorted(bf16_conv.WEIGHT_GRAD_ROUTES)
    variants = {r: bf16_conv.WEIGHT_GRAD_ROUTES[r] for r in routes}
    for mb in args.chunks_mb:
        variants[f"unfolded at {mb:g} MB"] = functools.partial(
            bf16_conv._unfolded_weight_grad, chunk_bytes=int(mb * 2**20)
        )
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{args.recipe} {' '.join(args.set)}, batch {args.batch_size}, {args.rounds} rounds")  # fmt: skip
    print("| input, filters | " + " | ".join(f"{v}, ms (fastest / median)" for v in variants)
          + " | fastest route here | the timed choice |")  # fmt: skip
    print("|---|" + "---:|" * len(variants) + "---|---|")
    g = torch.Generator().manual_seed(0)
    layout = torch.channels_last
    for c_in, c_out, h, w in conv_shapes(model):
        x = torch.randn(args.batch_size, c_in, h, w, generator=g).to(torch.bfloat16)
        x = x.contiguous(memory_format=layout)
        weight = (torch.randn(c_out, c_in, 3, 3, generator=g) * 0.05).to(torch.bfloat16)
        grad_y = torch.randn(args.batch_size, c_out, h, w, generator=g).to(torch.bfloat16)
        grad_y = grad_y.contiguous(memory_format=layout)
        times: dict[str, list[float]] = {v: [] for v in variants}
        for round_ in range(args.rounds + 1):  # the first round warms up, untimed
            for variant, route in variants.items():
                start = time.perf_counter()
                route(grad_y, x, weight, 1)
                if round_:
                    times[variant].append((time.perf_counter() - start) * 1000)
        fastest = min(routes, key=lambda r: min(times[r]))
        chosen = bf16_conv.weight_grad_route(c_in, c_out, h, w, 3, 1)
        cells = " | ".join(f"{min(times[v]):.1f} / {statistics.median(times[v]):.1f}"
                           for v in variants)  # fmt: skip
        print(f"| [{args.batch_size}, {c_in}, {h}, {w}], [{c_out}, {c_in}, 3, 3] | {cells} | "
              f"{fastest} | {chosen} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
