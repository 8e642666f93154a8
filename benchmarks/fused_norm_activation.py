"""What fusing the memory-bound layers around the fast network's convolutions buys:

    python benchmarks/fused_norm_activation.py [--batch-size 2000] [--width 192] [--rounds 5]
                                               [--dtype float32|bfloat16]

Between its convolutions the fast network runs max-pool, BatchNorm (batch statistics) and
GELU, each a full pass over memory forward and more backward. This times, at the real
shapes (channels_last), the forward and backward of those parts of every block as the
network ran them before models/norm_gelu.py (PyTorch's separate operators), against the
same computation compiled by torch.compile (Inductor: one loop nest for what it can fuse, C++
generated for this CPU) and against the native fused kernels the network runs now
(models/norm_gelu.py: two passes over memory each way), interleaved over rounds, median and
best. The difference, against a whole step's time (fast_step_profile.py), says what fusion
buys. Compilation is timed apart. Each way's output is compared with PyTorch's operators'.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from cifarlab.allocator import configure_allocator
from cifarlab.machine import device_name
from cifarlab.models import norm_gelu


def first_half(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A block after its first convolution: 2x2 max-pool, BatchNorm (weight 1), GELU."""
    x = F.max_pool2d(x, 2)
    return F.gelu(F.batch_norm(x, None, None, None, bias, training=True, eps=1e-12))


def second_half(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A block after its second convolution: BatchNorm (weight 1), GELU."""
    return F.gelu(F.batch_norm(x, None, None, None, bias, training=True, eps=1e-12))


def shapes(batch: int, width: int) -> list[tuple[str, object, tuple[int, ...]]]:
    """(name, part, input shape) of every block's memory-bound parts in `fast` at `width`."""
    widths, side = (width // 4, width, width), 31  # the whitening stem's output is 31x31
    parts = []
    for i, channels in enumerate(widths, start=1):
        parts.append((f"block {i}: pool, BN, GELU", first_half, (batch, channels, side, side)))
        side //= 2
        parts.append((f"block {i}: BN, GELU", second_half, (batch, channels, side, side)))
    return parts


def native(part, channels: int):
    """The part by the fused kernels, with a BatchNorm2d as the network has (weight frozen at
    1, a float32 bias): part(x, bias) ignores the bias given, the module holds its own."""
    norm = torch.nn.BatchNorm2d(channels, eps=1e-12)
    norm.weight.requires_grad_(False)
    pool, gelu = torch.nn.MaxPool2d(2), torch.nn.GELU()
    if part is first_half:
        return lambda x, _bias: norm_gelu.pool_norm_gelu(x, pool, norm, gelu, route="fused")
    return lambda x, _bias: norm_gelu.norm_gelu(x, norm, gelu, route="fused")


def forward_backward(fn, x: torch.Tensor, bias: torch.Tensor, grad: torch.Tensor) -> None:
    out = fn(x, bias)
    torch.autograd.backward(out, grad)
    x.grad = bias.grad = None


def seconds(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--width", type=int, default=192, help="fast's width (block 1: / 4)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args()
    configure_allocator()  # as the CLI does: freed buffers stay in the process
    dtype = getattr(torch, args.dtype)
    print(f"{device_name(torch.device('cpu'))}; torch {torch.__version__}; "
          f"batch {args.batch_size}, width {args.width}, {args.dtype}\n")  # fmt: skip

    if not norm_gelu.available():
        parser.error("the native kernels are not built here (CIFARLAB_NATIVE=0, or no compiler)")
    ways = ("eager", "compiled", "native")
    rows, totals = [], {way: [] for way in ways}
    for name, part, shape in shapes(args.batch_size, args.width):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        bias = torch.zeros(shape[1], dtype=dtype, requires_grad=True)
        with torch.no_grad():
            out_shape = part(x, bias).shape
        grad = torch.randn(out_shape, generator=g).to(dtype)
        grad = grad.contiguous(memory_format=torch.channels_last)
        functions = {"eager": part, "compiled": torch.compile(part, dynamic=False),
                     "native": native(part, shape[1])}  # fmt: skip
        compile_s = seconds(forward_backward, functions["compiled"], x, bias, grad)
        # Same function: each way's output against PyTorch's operators'.
        with torch.no_grad():
            want = part(x, bias).float()
            gaps = {way: (functions[way](x, bias).float() - want).abs().max().item()
                    for way in ways[1:]}  # fmt: skip
        forward_backward(part, x, bias, grad)  # warm-up
        forward_backward(functions["native"], x, bias, grad)
        times = {way: [] for way in ways}
        for _ in range(args.rounds):  # interleaved: all see the same machine
            for way in ways:
                times[way].append(seconds(forward_backward, functions[way], x, bias, grad))
        medians = {k: statistics.median(v) for k, v in times.items()}
        for k in totals:
            totals[k].append(medians[k])
        rows.append((name, shape, medians, {k: min(v) for k, v in times.items()}, compile_s, gaps))

    print("| part | input | eager ms (best) | compiled ms (best) | native ms (best) | "
          "eager / compiled | eager / native | compile s | max difference: compiled, native |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, shape, med, best, compile_s, gaps in rows:
        cells = [f"{med[way] * 1e3:.0f} ({best[way] * 1e3:.0f})" for way in ways]
        print(f"| {name} | {list(shape)} | {' | '.join(cells)} "
              f"| {med['eager'] / med['compiled']:.2f}x | {med['eager'] / med['native']:.2f}x "
              f"| {compile_s:.1f} | {gaps['compiled']:.1e}, {gaps['native']:.1e} |")  # fmt: skip
    eager, compiled, fused = (sum(totals[way]) for way in ways)
    print(f"\nall parts, forward and backward, sum of medians: eager {eager * 1e3:.0f} ms, "
          f"compiled {compiled * 1e3:.0f} ms ({eager / compiled:.2f}x; "
          f"{(eager - compiled) * 1e3:.0f} ms a step saved), native {fused * 1e3:.0f} ms "
          f"({eager / fused:.2f}x; {(eager - fused) * 1e3:.0f} ms a step saved)")  # fmt: skip


if __name__ == "__main__":
    main()
