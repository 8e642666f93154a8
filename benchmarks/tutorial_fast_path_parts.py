"""What each part of the tutorial network's fast path buys: the network alone (no input
pipeline, no optimizer), forward + backward and forward only, batch 128, in steps from the
straightforward implementation to the fast one, alternating the variants several times.

    python benchmarks/tutorial_fast_path_parts.py [--rounds 5] [--iterations 30]

Variants, each adding to the one before:
  reference        fast_path=false: NCHW, LRN as a batched band matmul, recorded backward,
                   SAME pool on a -inf padded copy
  + layout, pool   channels_last activations and weights, the unpadded SAME pool, ReLU in
                   place; the reference LRN
  + LRN            the LRN's window sum as a 1x1 convolution, with its own backward
  + conv1's pool before its ReLU, NCHW backward   (models/tutorial_cpu/conv_pool.py)
  + oneDNN fully connected layers (models/tutorial_cpu/onednn_linear.py)
  + conv2 by Fourier transform: the whole fast path (models/tutorial_cpu/fft_conv.py)
Also single operations at the tutorial's shapes (batch 128), each against what it replaced:
the LRN's window sum as torch.mm (MKL) and as a 1x1 convolution (oneDNN), conv1's weight
gradient channels-last and in NCHW, local3's forward product with MKL and with oneDNN;
and the convolutions alone (what no rearranging around them can speed up). Prints medians
over rounds, in ms.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
import torch.nn.functional as F

from cifarlab.allocator import configure_allocator
from cifarlab.models import tutorial_cpu
from cifarlab.models.lrn import LocalResponseNorm, _band
from cifarlab.models.tutorial import TutorialNet
from cifarlab.models.tutorial_cpu import fft_conv, onednn_linear


class _DirectConv2(TutorialNet):
    """The fast path before conv2 went by Fourier transform."""

    conv2_by_fft = False


class _ReluBeforePool(_DirectConv2):
    """The fast path before conv1's ReLU moved after its pool (and its NCHW backward)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # A hook on conv1's ReLU is what keeps the tutorial's order on the fast path (summary
        # steps watch that activation): ReLU, then pool, with PyTorch's backward.
        self.conv1_relu.register_forward_hook(lambda module, inputs, output: None)


def _plain_linear(x, layer):
    return layer(x)


def variants() -> dict[str, tuple[torch.nn.Module, bool]]:
    """name -> (model, whether its fully connected layers run on oneDNN)."""
    torch.manual_seed(0)
    reference = TutorialNet(10, fast=False)
    layout = _ReluBeforePool(10, fast=True)
    layout.norm1, layout.norm2 = LocalResponseNorm(fast=False), LocalResponseNorm(fast=False)
    lrn, conv_pool = _ReluBeforePool(10, fast=True), _DirectConv2(10)
    linear, fast = _DirectConv2(10), TutorialNet(10)
    for model in (layout, lrn, conv_pool, linear, fast):
        model.load_state_dict(reference.state_dict())
    return {"reference": (reference, False),
            "+ layout, pool": (layout.to(memory_format=torch.channels_last), False),
            "+ LRN": (lrn.to(memory_format=torch.channels_last), False),
            "+ conv1's pool before its ReLU, NCHW backward": (conv_pool.to(memory_format=torch.channels_last), False),
            "+ oneDNN fully connected layers": (linear.to(memory_format=torch.channels_last), True),
            "+ conv2 by Fourier transform (the fast path)": (fast.to(memory_format=torch.channels_last), True)}  # fmt: skip


def timed_ms(fn, iterations: int) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    return (time.perf_counter() - start) / iterations * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=30)
    args = parser.parse_args()
    configure_allocator()  # as the CLI does: freed buffers stay in the heap, no page faults

    x = torch.randn(128, 3, 24, 24)
    labels = torch.randint(0, 10, (128,))
    models = variants()

    def train_step(model):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), labels).backward()

    def forward(model):
        with torch.no_grad():
            model(x)

    sq = torch.randn(128, 64, 12, 12).contiguous(memory_format=torch.channels_last)
    band = _band(64, 4, sq.device, sq.dtype)
    rows = sq.permute(0, 2, 3, 1).reshape(-1, 64)
    images = torch.randn(128, 3, 24, 24)
    filters, conv_grad = torch.randn(64, 3, 5, 5), torch.randn(128, 64, 24, 24)

    def conv1_weight_grad(layout):
        args = [t.contiguous(memory_format=layout) for t in (conv_grad, images, filters)]
        return lambda: torch.ops.aten.convolution_backward(
            *args, [64], [1, 1], [2, 2], [1, 1], False, [0, 0], 1, [False, True, True]
        )

    local3, flat = torch.nn.Linear(2304, 384), torch.randn(128, 2304)
    cl = torch.channels_last
    conv2_in, conv2_w = sq.clone(), torch.randn(64, 64, 5, 5).contiguous(memory_format=cl)
    conv2_nchw = sq.contiguous()
    conv1_in, conv1_w = images.contiguous(memory_format=cl), filters.contiguous(memory_format=cl)
    kernels = {"LRN window sum, torch.mm (MKL)": lambda: rows @ band,
               "LRN window sum, 1x1 convolution (oneDNN)": lambda: F.conv2d(sq, band.view(64, 64, 1, 1)),
               "conv1 weight gradient, channels_last": conv1_weight_grad(torch.channels_last),
               "conv1 weight gradient, NCHW": conv1_weight_grad(torch.contiguous_format),
               "local3 forward, F.linear (MKL)": lambda: local3(flat),
               "local3 forward, oneDNN": lambda: onednn_linear.linear(flat, local3),
               "conv1 forward (channels_last)": lambda: F.conv2d(conv1_in, conv1_w, padding=2),
               "conv2 forward (channels_last)": lambda: F.conv2d(conv2_in, conv2_w, padding=2),
               "conv2 forward by Fourier transform (NCHW)": lambda: fft_conv.conv2d(conv2_nchw, conv2_w, None, 2),
               "conv2 backward, input and weight gradients (channels_last)": lambda: torch.ops.aten.convolution_backward(
                   sq, conv2_in, conv2_w, [64], [1, 1], [2, 2], [1, 1], False, [0, 0], 1, [True, True, True])}  # fmt: skip

    times: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, (model, onednn) in models.items():
            tutorial_cpu.linear = onednn_linear.linear if onednn else _plain_linear
            times.setdefault(f"train {name}", []).append(
                timed_ms(partial(train_step, model), args.iterations)
            )
            times.setdefault(f"eval {name}", []).append(
                timed_ms(partial(forward, model), args.iterations)
            )
        tutorial_cpu.linear = onednn_linear.linear
        with torch.no_grad():
            for name, fn in kernels.items():
                times.setdefault(name, []).append(timed_ms(fn, args.iterations * 5))

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.rounds} rounds\n"
    )
    print("| what | ms (batch 128) | images/s |\n|---|---:|---:|")
    for name, values in times.items():
        ms = statistics.median(values)
        rate = f"{128 / ms * 1e3:,.0f}" if name.startswith(("train", "eval")) else ""
        print(f"| {name} | {ms:.2f} | {rate} |")


if __name__ == "__main__":
    main()
