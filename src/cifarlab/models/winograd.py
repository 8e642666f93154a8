"""3x3 convolutions by Winograd's F(4x4, 3x3) on a CPU, each shape where it was timed faster.

A 3x3 convolution with stride 1 and zero padding 1 can be computed tile by tile: each 4x4
block of the output comes from the 6x6 block of the input around it (Lavin and Gray, 2016),

    y = A^T [ sum over input channels c of (G w_c G^T) * (B^T d_c B) ] A

where d_c is the 6x6 input tile of channel c, w_c the 3x3 filter, * elementwise, and B^T
(6x6), G (6x3), A^T (4x6) the fixed matrices below. Gathered over tiles and channels, the
bracket is 36 independent matrix products, [tiles, C] x [C, O], one per position of the 6x6
tile: 36 multiplications a tile and channel pair where the direct convolution does
16 x 9 = 144, 4x fewer (3.1x on a 7x7 map, whose 2x2 tiles cover 8x8). The transforms
are native kernels (tutorial_cpu/kernels.cpp); the products run on the library's matrix
multiply. A batch goes through a chunk of images at a time (CHUNK_BYTES), so that the
transformed tiles stay in the cache between the transform and the product: over a whole
batch of 2,000 they were hundreds of MB (BENCHMARKS.md, "Winograd on the CPU", has what
that buys, measured by benchmarks/winograd_chunks.py).

Both gradients stay in the same algebra: the input gradient is the convolution of the
output gradient with the filters mirrored and transposed (the same forward); the filter
gradient is G^T [ sum over tiles of (B^T d B) * (A g A^T) ] G, g the output gradient's 4x4
tile, again 36 products, [C, tiles] x [tiles, O].

Winograd trades multiplications for memory traffic and for rounding (about 1e-6 of the
result's norm in float32 at these points, against about 1e-7 for the direct sum), and
whether it wins depends on the machine (its matrix-product rate against its memory) and
the shape (many channels on a small map win; 24 channels on a 31x31 map do not). So each
shape is timed both ways once on this machine, forward and backward
(cifarlab/timed_choice.py), and takes the faster; a shape where Winograd is slower never
runs it. That is `Conv2d`'s algorithm "auto"; "winograd" takes the route wherever it can
serve without timing, "direct" never (the fast recipes' `convolution` setting). Float32
only: under bfloat16 autocast the bfloat16 routes serve (bf16_conv.py).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from .. import timed_choice
from . import bf16_conv
from .tutorial_cpu import build

TIMING_BATCH = 128  # images a shape is timed on (as bf16_conv's filter-gradient routes)
# Each convolution works through the batch a chunk of images at a time, reusing two buffers
# of about this many bytes in all (transformed tiles and their products): they stay in the
# cache between the transform that writes them and the product that reads them. Over a whole
# batch they took hundreds of MB, written to memory, read back and faulted in page by page.
CHUNK_BYTES = 4 << 20
LABEL = "winograd.conv"  # profiler label (benchmarks/fast_step_profile.py), then the shapes

# Points 0, 1, -1, 2, -2 (and infinity): small integers and simple fractions, which keep
# float32's rounding error near the direct convolution's.
BT = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                   [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
                  dtype=torch.float64)  # fmt: skip
G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
                 dtype=torch.float64)  # fmt: skip
AT = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                   [0, 1, -1, 8, -8, 1]], dtype=torch.float64)  # fmt: skip

_used: dict[tuple, bool] = {}  # verdict by (C, O, H, W), in this process


# (G w G^T) for every filter at once is one matrix product with the Kronecker product of G
# with itself: [36, 9] x [9, filters]. The mirrored filters (for the input gradient) use G
# with its columns reversed.
_GG = torch.kron(G, G)  # [36, 9]
_GG_MIRRORED = torch.kron(G.flip(1), G.flip(1))


def filter_transform(weight: torch.Tensor, mirrored: bool = False) -> torch.Tensor:
    """weight [O, C, 3, 3] -> U [36, C, O], U[a * 6 + b] = (G w G^T)[a, b] of each filter;
    mirrored: [36, O, C], the transform of the filters mirrored and transposed (the input
    gradient's convolution)."""
    o, c = weight.shape[:2]
    taps = weight.permute(2, 3, 1, 0).reshape(9, c * o)  # [tap, (C, O)]
    u = ((_GG_MIRRORED if mirrored else _GG).to(weight.dtype) @ taps).view(36, c, o)
    return u.transpose(1, 2) if mirrored else u


def filter_transform_grad(grad_u: torch.Tensor) -> torch.Tensor:
    """filter_transform's adjoint: dL/dU [36, C, O] -> dL/dw [O, C, 3, 3]."""
    c, o = grad_u.shape[1:]
    taps = _GG.T.to(grad_u.dtype) @ grad_u.reshape(36, c * o)  # [9, (C, O)]
    return taps.view(3, 3, c, o).permute(3, 2, 0, 1)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """NCHW-shaped [N, C, H, W] -> [N, H, W, C] contiguous (no copy when channels-last)."""
    return x.permute(0, 2, 3, 1).contiguous()


def _tiles(height: int, width: int) -> int:
    return ((height + 3) // 4) * ((width + 3) // 4)


def _chunks(images: int, height: int, width: int, channels: int) -> list[slice]:
    """The batch's images in chunks whose transformed tiles (36 x tiles x `channels`
    floats, the transform's and the product's together) take about CHUNK_BYTES."""
    per_chunk = max(1, CHUNK_BYTES // (36 * _tiles(height, width) * channels * 4))
    return [slice(start, min(images, start + per_chunk)) for start in range(0, images, per_chunk)]


def _view(buffer: torch.Tensor, tiles: int, channels: int) -> torch.Tensor:
    return buffer[: 36 * tiles * channels].view(36, tiles, channels)


def _in_chunks(rows: torch.Tensor, channels_out: int):
    """For each chunk of the images of rows [N, H, W, C]: its slice, and two buffers viewed
    as its [36, tiles, C] and [36, tiles, channels_out], the same memory for every chunk."""
    n, h, w, c = rows.shape
    per_image = _tiles(h, w)
    chunks = _chunks(n, h, w, c + channels_out)
    largest = (chunks[0].stop - chunks[0].start) * per_image
    tiles_buffer = rows.new_empty(36 * largest * c)
    other_buffer = rows.new_empty(36 * largest * channels_out)
    for chunk in chunks:
        tiles = (chunk.stop - chunk.start) * per_image
        yield chunk, _view(tiles_buffer, tiles, c), _view(other_buffer, tiles, channels_out)


def _conv(kernels, rows: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """rows [N, H, W, C], transformed filters [36, C, O] -> [N, O, H, W] (channels-last
    memory), a chunk of images at a time through the same two buffers."""
    n, h, w, _ = rows.shape
    y = rows.new_empty(n, h, w, filters.shape[2])
    for chunk, tiles_out, products_out in _in_chunks(rows, filters.shape[2]):
        transformed = kernels.winograd_input(rows[chunk], out=tiles_out)
        products = torch.bmm(transformed, filters, out=products_out)
        kernels.winograd_output(products, chunk.stop - chunk.start, h, w, out=y[chunk])
    return y.permute(0, 3, 1, 2)


def _filter_grad(kernels, rows: torch.Tensor, grad_rows: torch.Tensor) -> torch.Tensor:
    """rows [N, H, W, C], the output gradient's grad_rows [N, H, W, O] -> dL/dU [36, C, O],
    summed over the chunks' tiles."""
    grad_u = rows.new_zeros(36, rows.shape[3], grad_rows.shape[3])
    for chunk, tiles_out, grad_out in _in_chunks(rows, grad_rows.shape[3]):
        transformed = kernels.winograd_input(rows[chunk], out=tiles_out)
        grad_tiles = kernels.winograd_output_grad(grad_rows[chunk], out=grad_out)
        grad_u.baddbmm_(transformed.transpose(1, 2), grad_tiles)
    return grad_u


class _WinogradConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        kernels = build.kernels()
        ctx.save_for_backward(x, weight)
        with torch.profiler.record_function(
            f"{LABEL} forward {list(x.shape)} {list(weight.shape)}"
        ):
            return _conv(kernels, _rows(x), filter_transform(weight))

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        kernels = build.kernels()
        grad_rows = _rows(grad_y)
        grad_x = grad_w = None
        label = f"{LABEL} backward {list(x.shape)} {list(weight.shape)}"
        with torch.profiler.record_function(label):
            if ctx.needs_input_grad[0]:  # the convolution with the filters mirrored, transposed
                grad_x = _conv(kernels, grad_rows, filter_transform(weight, mirrored=True))
            if ctx.needs_input_grad[1]:
                grad_w = filter_transform_grad(_filter_grad(kernels, _rows(x), grad_rows))
                if weight.is_contiguous(memory_format=torch.channels_last):
                    grad_w = grad_w.contiguous(memory_format=torch.channels_last)
                else:
                    grad_w = grad_w.contiguous()
        return grad_x, grad_w


def winograd_conv3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """conv2d(x, weight, padding=1) for float32 CPU tensors by F(4x4, 3x3), differentiable.
    Needs the native kernels (`available()`)."""
    return _WinogradConv.apply(x, weight)


def available() -> bool:
    """Whether this process runs Winograd's transforms where they serve (build.available)."""
    return build.available()


def serves(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """Whether the route can compute this call: float32 on the CPU without autocast, a 3x3
    convolution with stride 1, zero padding 1 and no bias, eager, the kernels built."""
    return (
        x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
        and conv.weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
        and conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
        and conv.dilation == (1, 1) and conv.groups == 1 and conv.bias is None
        and conv.padding_mode == "zeros"
        and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
        and available()
    )  # fmt: skip


def faster_here(channels_in: int, channels_out: int, height: int, width: int) -> bool:
    """Whether this shape's forward and backward were timed faster by Winograd than by the
    library's convolution on this machine (timed once, kept)."""
    shape = (channels_in, channels_out, height, width)
    if shape not in _used:
        verdict = timed_choice.remembered(
            "winograd-conv",
            # the kernels' build and the chunking change Winograd's time: timed again
            {"shape": list(shape), "batch": TIMING_BATCH, "kernels": build.cache_key(),
             "chunk_bytes": CHUNK_BYTES},
            lambda: _time_both(*shape),
        )  # fmt: skip
        _used[shape] = verdict["winograd"]
    return _used[shape]


def routes_used() -> dict[tuple, bool]:
    """{(in, out, height, width): by Winograd} for the shapes this process asked about."""
    return dict(_used)


def choices_line() -> str:
    """One line on the shapes timed so far: which go by Winograd here."""
    chosen = [f"{c}->{o} at {h}x{w}" for (c, o, h, w), fast in sorted(_used.items()) if fast]
    return (f"Winograd for {len(chosen)} of {len(_used)} convolution shapes (timed faster "
            f"here){': ' + ', '.join(chosen) if chosen else ''}")  # fmt: skip


def _time_both(channels_in: int, channels_out: int, height: int, width: int) -> dict:
    """Best of 2 forward-and-backward passes each way after a warm-up, alternating, ms."""
    g = torch.Generator().manual_seed(0)
    layout = torch.channels_last
    x = torch.randn(TIMING_BATCH, channels_in, height, width, generator=g)
    x = x.contiguous(memory_format=layout).requires_grad_()
    w = (torch.randn(channels_out, channels_in, 3, 3, generator=g) * 0.05).contiguous(
        memory_format=layout).requires_grad_()  # fmt: skip
    grad_y = torch.randn(TIMING_BATCH, channels_out, height, width, generator=g)
    grad_y = grad_y.contiguous(memory_format=layout)
    ways = {"direct": lambda: F.conv2d(x, w, padding=1), "winograd": lambda: winograd_conv3x3(x, w)}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for round_ in range(3):
        for name, forward in ways.items():
            start = time.perf_counter()
            torch.autograd.backward(forward(), grad_y)
            if round_:
                times[name].append((time.perf_counter() - start) * 1000)
            x.grad = w.grad = None
    best = {name: round(min(t), 3) for name, t in times.items()}
    return {"winograd": best["winograd"] < best["direct"], "ms": best}


ALGORITHMS = ("direct", "winograd", "auto")


class Conv2d(bf16_conv.Conv2d):
    """nn.Conv2d (same parameters and state dict). Under CPU autocast to bfloat16, the
    bfloat16 routes (bf16_conv.py); in float32 on a CPU, by `algorithm`: "direct" the
    library's convolution, "winograd" Winograd wherever it serves, "auto" Winograd where it
    was timed faster for this shape here; anywhere else nn.Conv2d's own forward."""

    def __init__(self, *args, algorithm: str = "direct", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}")
        self.algorithm = algorithm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.algorithm != "direct"
            and serves(x, self)
            and (
                self.algorithm == "winograd"
                or faster_here(self.in_channels, self.out_channels, *x.shape[-2:])
            )
        ):
            return winograd_conv3x3(x, self.weight)
        return super().forward(x)
