"""What working through a batch in chunks buys Winograd's convolutions (models/winograd.py).

The fast network's forward and backward (cross-entropy on random labels, random images) at
the run's batch, timed in interleaved rounds: the library's direct convolution, Winograd
over the whole batch at once, and Winograd in chunks of several sizes. Prints the median and
the best of the rounds of each, and each median against the direct one and the whole batch's.

    python benchmarks/winograd_chunks.py --batch-size 2000 --rounds 7

Winograd serves the shapes that `convolution=auto` timed faster here (decided once, at the
default chunking; `--convolution winograd`: every 3x3 shape); every Winograd row uses that
same set of shapes, so that the rows differ in the chunking only. The whitening bias is frozen, as in most of a run's steps (no gradient
into block 1's first convolution's input). Rounds alternate the variants, so that a slow
stretch of a shared machine falls on all of them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from cifarlab.allocator import configure_allocator
from cifarlab.machine import code_version, cpu_kind
from cifarlab.models import winograd
from cifarlab.models.fast import FastNet

WHOLE_BATCH = 1 << 50  # chunk bytes no batch reaches


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=192, help="the fast network's width")
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (one warm-up more)")
    parser.add_argument("--convolution", choices=("auto", "winograd"), default="auto",
                        help="Winograd where timed faster here, or for every 3x3 shape")
    parser.add_argument("--chunk-mb", default="1,2,4,8,16",
                        help="chunk sizes to time, MB of transformed tiles (default chunking: "
                             f"{winograd.CHUNK_BYTES / 2**20:g})")  # fmt: skip
    return parser.parse_args()


def one_pass(net: FastNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    start = time.perf_counter()
    F.cross_entropy(net(images), labels).backward()
    seconds = time.perf_counter() - start
    for p in net.parameters():
        p.grad = None
    return seconds


def main() -> None:
    args = parse_args()
    configure_allocator()  # as the CLI does: freed buffers stay in the process
    if not winograd.available():
        raise SystemExit("winograd_chunks: the native kernels are not built here")
    torch.manual_seed(0)
    widths = (args.width // 4, args.width, args.width)
    direct = FastNet(widths=widths, convolution="direct")
    by_winograd = FastNet(widths=widths, convolution=args.convolution)
    by_winograd.load_state_dict(direct.state_dict())
    images = torch.randn(args.batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (args.batch_size,))
    for net in (direct, by_winograd):
        net.to(memory_format=torch.channels_last)
        net.whiten_bias_trains = False
    default = winograd.CHUNK_BYTES
    one_pass(by_winograd, images, labels)  # times and remembers the shapes (winograd._used)

    variants = {"direct": None, "Winograd, whole batch": WHOLE_BATCH}
    for mb in (float(m) for m in args.chunk_mb.split(",")):
        variants[f"Winograd, {mb:g} MB chunks"] = int(mb * 2**20)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(args.rounds + 1):
        for name, chunk_bytes in variants.items():
            if chunk_bytes is not None:
                winograd.CHUNK_BYTES = chunk_bytes
            seconds = one_pass(direct if chunk_bytes is None else by_winograd, images, labels)
            if round_:  # the first round warms every variant up
                times[name].append(seconds)
    winograd.CHUNK_BYTES = default

    route = (winograd.choices_line() if args.convolution == "auto"
             else "Winograd for every 3x3 convolution shape")  # fmt: skip
    print(f"{cpu_kind()}, {torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"cifarlab {code_version()}")
    print(f"fast network, width {args.width}, batch {args.batch_size}: forward and backward, "
          f"{args.rounds} rounds; {route}")
    print()
    print("| variant | median s | best s | rounds | direct / this (medians) | whole batch / this |")
    print("|---|---:|---:|---|---:|---:|")
    median = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        runs = ", ".join(f"{s:.2f}" for s in t)
        print(f"| {name} | {median[name]:.3f} | {min(t):.3f} | {runs} | "
              f"{median['direct'] / median[name]:.2f}x | "
              f"{median['Winograd, whole batch'] / median[name]:.2f}x |")


if __name__ == "__main__":
    main()
