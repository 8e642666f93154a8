"""Convolutions in bfloat16 on a CPU, each pass by the route timed fastest here.

On CPUs that multiply bfloat16 natively (Intel's AMX), oneDNN's bfloat16 convolution runs the
forward pass and the input gradient 3-7x faster than float32 at the fast network's shapes,
and a bfloat16 matrix product reaches 3-5x float32's rate. oneDNN's bfloat16 *filter
gradient* is another matter: with as many input channels as output channels or more
(192 -> 192 at 7x7 and 3x3), it was little faster than float32 or slower (at batch 2,000
on Xeon AMX: 265 against 340 ms at 7x7, 139 against 70 ms at 3x3; BENCHMARKS.md,
"bfloat16 on the CPU", from benchmarks/bf16_weight_grad_routes.py). So the filter gradient
of each shape goes whichever of three ways was timed fastest on this machine
(cifarlab/timed_choice.py):

  onednn-float32     oneDNN's float32 filter gradient of the bfloat16 inputs cast up;
  onednn-bfloat16    oneDNN's bfloat16 filter gradient;
  unfolded-bfloat16  bfloat16 matrix products over the unfolded input, a few images at a
                     time (`_unfolded_weight_grad`): 187 and 32 ms at those two shapes.

Every route computes the gradient autocast would (the bfloat16 inputs, a float32 sum); they
differ in rounding only. `Conv2d` is nn.Conv2d (same parameters, same state dict) whose
forward takes this route under CPU autocast to bfloat16, in eager mode; anywhere else it is
nn.Conv2d's own forward. `bf16_faster` times a whole network both ways, for a recipe's
`precision=auto`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import timed_choice

BF16 = torch.bfloat16
TIMING_BATCH = 128  # images a filter-gradient timing runs on: near a real batch's regime
FILTER_GRADIENT_LABEL = "bf16_conv.filter_gradient"  # then the route and both shapes
UNFOLDED_CHUNK_BYTES = 8 << 20  # the unfolded route's rows a chunk (sizes compared: BENCHMARKS.md)
_said: set[str] = set()
_used: dict[tuple, str] = {}  # filter-gradient route by shape, in this process


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        print(f"cifarlab: {message}", file=sys.stderr, flush=True)


def _convolution_backward(grad_y, x, weight, padding: int, input_grad: bool, weight_grad: bool):
    return torch.ops.aten.convolution_backward(
        grad_y, x, weight, None, [1, 1], [padding, padding], [1, 1], False, [0, 0], 1,
        [input_grad, weight_grad, False],
    )  # fmt: skip


def _onednn_bf16(grad_y, x, weight_bf16, padding: int) -> torch.Tensor:
    return _convolution_backward(grad_y, x, weight_bf16, padding, False, True)[1].float()


def _onednn_fp32(grad_y, x, weight_bf16, padding: int) -> torch.Tensor:
    weight = weight_bf16.float().contiguous(memory_format=torch.channels_last)
    return _convolution_backward(grad_y.float(), x.float(), weight, padding, False, True)[1]


def _unfolded_weight_grad(grad_y, x, weight_bf16, padding: int,
                          chunk_bytes: int | None = None) -> torch.Tensor:  # fmt: skip
    """dW = sum over images and output positions of grad_y[position] times the k x k window
    of x under it, as bfloat16 matrix products over the unfolded input, a few images at a
    time: x is zero-padded once, channels-last; each chunk's windows are unfolded into
    [positions, k * k * C] rows (tap-major), multiplied by the chunk's output gradient laid
    out [O, positions], and the chunks' products summed in float32. A chunk's rows take
    about `chunk_bytes` (default UNFOLDED_CHUNK_BYTES), so the product reads them back from
    cache rather than memory (`benchmarks/bf16_weight_grad_routes.py --chunks-mb` times
    other sizes)."""
    n, c, h, w = x.shape
    o, _, k, _ = weight_bf16.shape
    hp, wp = h + 2 * padding, w + 2 * padding
    out_h, out_w = grad_y.shape[-2:]
    row = k * k * c  # one output position's window, unfolded
    chunk_bytes = chunk_bytes or UNFOLDED_CHUNK_BYTES
    images = max(1, chunk_bytes // (out_h * out_w * row * x.element_size()))
    sides = (0, 0, padding, padding, padding, padding)
    padded = F.pad(x.permute(0, 2, 3, 1), sides).contiguous()  # [N, hp, wp, C]
    grad_rows = grad_y.permute(0, 2, 3, 1)  # [N, out_h, out_w, O]
    total = torch.zeros(o, row)
    for first in range(0, n, images):
        m = min(images, n - first)
        windows = padded[first : first + m].as_strided(
            (m, out_h, out_w, k, k, c), (hp * wp * c, wp * c, c, wp * c, c, 1)
        )  # the slice's own storage offset: its first image
        unfolded = windows.reshape(m * out_h * out_w, row)  # the copy: [positions, k*k*C]
        grad = grad_rows[first : first + m].reshape(m * out_h * out_w, o).t().contiguous()
        total += grad @ unfolded
    return total.view(o, k, k, c).permute(0, 3, 1, 2)


WEIGHT_GRAD_ROUTES = {
    "onednn-float32": _onednn_fp32,
    "onednn-bfloat16": _onednn_bf16,
    "unfolded-bfloat16": _unfolded_weight_grad,
}


def weight_grad_route(channels_in: int, channels_out: int, height: int, width: int,
                      kernel: int, padding: int) -> str:  # fmt: skip
    """The fastest filter-gradient route for this shape on this machine (timed once, kept).
    Asked in every backward pass: after the first, the answer comes from `_used`, without
    hashing the machine's description for the cache file again."""
    shape = [channels_in, channels_out, height, width, kernel, padding]
    if tuple(shape) in _used:
        return _used[tuple(shape)]
    verdict = timed_choice.remembered(
        "bf16-conv-weight-grad",
        {"shape": shape, "batch": TIMING_BATCH, "routes": sorted(WEIGHT_GRAD_ROUTES)},
        lambda: _time_routes(*shape),
    )  # fmt: skip
    _used[tuple(shape)] = verdict["route"]
    return verdict["route"]


def _time_routes(channels_in, channels_out, height, width, kernel, padding) -> dict:
    """Best of 2 of each route after a warm-up, alternating, in milliseconds."""
    g = torch.Generator().manual_seed(0)
    layout = torch.channels_last
    x = torch.randn(TIMING_BATCH, channels_in, height, width, generator=g)
    x = x.to(BF16).contiguous(memory_format=layout)
    w = torch.randn(channels_out, channels_in, kernel, kernel, generator=g) * 0.05
    w = w.to(BF16).contiguous(memory_format=layout)
    out_h, out_w = height + 2 * padding - kernel + 1, width + 2 * padding - kernel + 1
    grad_y = torch.randn(TIMING_BATCH, channels_out, out_h, out_w, generator=g)
    grad_y = grad_y.to(BF16).contiguous(memory_format=layout)
    times: dict[str, list[float]] = {name: [] for name in WEIGHT_GRAD_ROUTES}
    for round_ in range(3):
        for name, route in WEIGHT_GRAD_ROUTES.items():
            start = time.perf_counter()
            route(grad_y, x, w, padding)
            if round_:
                times[name].append((time.perf_counter() - start) * 1000)
    best = {name: min(t) for name, t in times.items()}
    return {"route": min(best, key=best.get), "ms": {k: round(v, 3) for k, v in best.items()}}


class _Bf16Conv(torch.autograd.Function):
    """conv2d(x, weight, padding=padding), stride 1, in bfloat16: x and the output bfloat16,
    the weight float32 (the parameter) cast for the passes, its gradient float32."""

    @staticmethod
    def forward(ctx, x, weight, padding: int):
        x = x.to(BF16)
        weight_bf16 = weight.to(BF16)
        ctx.save_for_backward(x, weight_bf16)
        ctx.padding = padding
        return F.conv2d(x, weight_bf16, padding=padding)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight_bf16 = ctx.saved_tensors
        grad_y = grad_y.to(BF16)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _convolution_backward(grad_y, x, weight_bf16, ctx.padding, True, False)[0]
        if ctx.needs_input_grad[1]:
            _, c_in, h, w = x.shape
            route = weight_grad_route(c_in, weight_bf16.shape[0], h, w, weight_bf16.shape[-1],
                                      ctx.padding)  # fmt: skip
            # Named for profilers (benchmarks/fast_step_profile.py): a route's work is then
            # its layer's, whatever operators it runs. Free when nothing profiles.
            label = f"{FILTER_GRADIENT_LABEL} {route} {list(x.shape)} {list(weight_bf16.shape)}"
            with torch.profiler.record_function(label):
                grad_w = WEIGHT_GRAD_ROUTES[route](grad_y, x, weight_bf16, ctx.padding)
        return grad_x, grad_w, None


def serves(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """Whether this call takes the bfloat16 routes: CPU autocast to bfloat16 is on, the
    convolution is a square one with stride 1, zero padding and no bias, nothing traces."""
    return (
        x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == BF16
        and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
        and conv.bias is None and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple) and conv.padding[0] == conv.padding[1]
        and conv.kernel_size[0] == conv.kernel_size[1]
        and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
    )  # fmt: skip


class Conv2d(nn.Conv2d):
    """nn.Conv2d; under CPU autocast to bfloat16, by the routes above (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if serves(x, self):
            return _Bf16Conv.apply(x, self.weight, self.padding[0])
        return super().forward(x)


def native_bf16() -> bool:
    """Whether oneDNN has bfloat16 kernels for this CPU at all (AVX-512 BF16 or AMX)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def bf16_faster(name: str, key: dict, build: Callable[[], nn.Module], batch: int = 256) -> bool:
    """Whether a training step's forward and backward of `build()` (a network on
    [batch, 3, 32, 32] channels-last images) is faster under CPU autocast to bfloat16 than
    in float32 on this machine: timed once (best of 3, alternating, after a warm-up that
    also settles every filter-gradient route), kept by cifarlab/timed_choice.py. False
    without timing where oneDNN has no bfloat16 kernels for this CPU. The batch is a
    training batch's regime: at 64 images the gain on Xeon AMX was 1.2x, at 1,024 2.0x."""
    if not native_bf16():
        _say_once("float32: this CPU has no native bfloat16 arithmetic")
        return False
    verdict = timed_choice.remembered(name, {**key, "batch": batch},
                                      lambda: _time_network(build, batch))  # fmt: skip
    route = "bfloat16" if verdict["bfloat16"] else "float32"
    _say_once(f"{route} on this CPU (timed: float32 {verdict['float32_ms']:.0f} ms, bfloat16 "
              f"{verdict['bfloat16_ms']:.0f} ms a forward and backward at batch {batch})")  # fmt: skip
    return verdict["bfloat16"]


def _time_network(build: Callable[[], nn.Module], batch: int) -> dict:
    g = torch.Generator().manual_seed(0)
    model = build().train()
    x = torch.randn(batch, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,), generator=g)

    def step(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=BF16, enabled=bf16):
            logits = model(x)
        F.cross_entropy(logits.float(), labels).backward()
        model.zero_grad(set_to_none=True)
        return (time.perf_counter() - start) * 1000

    times: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(4):
        for bf16 in (False, True):
            elapsed = step(bf16)
            if round_:
                times[bf16].append(elapsed)
    fp32_ms, bf16_ms = min(times[False]), min(times[True])
    return {"bfloat16": bf16_ms < fp32_ms, "float32_ms": round(fp32_ms, 3),
            "bfloat16_ms": round(bf16_ms, 3)}  # fmt: skip
