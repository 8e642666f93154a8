"""The fast network's `GELU(BatchNorm(max_pool(y)))` and `GELU(BatchNorm(y))`, fused.

After each convolution the fast network pools (the first of a block), normalizes with the
batch's statistics and applies GELU. On the CPU these are memory-bound: in bfloat16 they
took 15% of a `fast` step on EPYC Zen 5 against the convolutions' 79%, PyTorch making
about seven passes over memory forward and nine backward (int64 pooling indices, a
zero-filled input gradient, every intermediate written and read back). The native kernel
(tutorial_cpu/kernels.cpp, part 5) makes two each way, in float32 or bfloat16, and keeps
the pooled values and an int16 per value naming the window's winner instead of PyTorch's
intermediates.

In evaluation a third kernel pools, normalizes with the running statistics and activates
in one pass. `pool_norm_gelu` and `norm_gelu` take the modules the network already has
(the BatchNorm2d, its running statistics updated the same way) and fall back to them, the
same function, wherever the kernels do not serve: CUDA, tracing and export, evaluation
with a gradient to compute, other dtypes, or the native kernels off (`CIFARLAB_NATIVE=0`)
or not built. The GELU is the exact one (erf), computed to within 2e-7 of it.

Which of the two runs is timed, not assumed: the first time a shape is asked (channels,
height, width, dtype, pooled or not, training or evaluation), both are timed on a batch of
TIMING_BATCH images and the verdict kept with the build (cifarlab/timed_choice.py); the
kernel runs only for the shapes where it was faster on this machine. `route="fused"` skips
the timing (the tests and the benchmarks, which compare the two).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .. import timed_choice
from .tutorial_cpu import build

DTYPES = (torch.float32, torch.bfloat16)
ROUTES = ("auto", "fused")  # auto: the kernel where it was timed faster; fused: wherever it serves
# Images a timing runs on: a training batch's regime, where block 1's maps outgrow the caches
# (94 MB in bfloat16 at 1,024 images). At 256 (24 MB) one of `fast`'s 12 shapes chose
# PyTorch's operators by 4% on EPYC Zen 5, where at 1,024 and 2,000 the kernel is 1.2x-4x
# faster for all 12; timing them at 1,024 takes a few seconds there, once.
TIMING_BATCH = 1024
WHAT_IT_FUSES = "pool, batch norm and GELU fused"

Choice = tuple[int, int, int, str, bool, bool]  # channels, height, width, dtype, pool, training
_chosen: dict[Choice, bool] = {}  # this process's verdicts: the kernel faster here?
_recorders: list[dict[Choice, bool]] = []


def serves(y: torch.Tensor, norm: nn.BatchNorm2d) -> bool:
    """Whether a kernel takes this: a float32 or bfloat16 CPU tensor in eager mode, batch
    norm with running statistics and an affine map, and the native kernels on and built. In
    training, the batch's statistics (forward and backward); in evaluation, the running ones
    (forward only: without a gradient to compute)."""
    # Tracing first: under a trace, the tests on y below would be recorded as operations
    # of the graph, and TensorBoard's check that two traces agree failed on them.
    return (
        not torch.jit.is_tracing() and not torch.compiler.is_compiling()
        and norm.track_running_stats and norm.affine
        and (norm.training or not (torch.is_grad_enabled() and y.requires_grad))
        and y.device.type == "cpu" and y.dtype in DTYPES and y.dim() == 4 and y.numel() > 0
        and available()
    )  # fmt: skip


def available() -> bool:
    """Whether this process runs the fused kernel where it serves (build.available)."""
    return build.available()


class _NormGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, weight, bias, eps: float, pool: bool):
        y = y.contiguous(memory_format=torch.channels_last)
        out, p, winners, mean, var = build.kernels().norm_gelu_forward(
            y, weight.detach().float().contiguous(), bias.detach().float().contiguous(), eps,
            pool,
        )  # fmt: skip
        ctx.save_for_backward(p, winners, mean, var, weight, bias)
        ctx.options = eps, y.shape[2], y.shape[3]
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, _mean_grad, _var_grad):
        p, winners, mean, var, weight, bias = ctx.saved_tensors
        eps, height, width = ctx.options
        grad = grad.to(p.dtype).contiguous(memory_format=torch.channels_last)
        dy, d_weight, d_bias = build.kernels().norm_gelu_backward(
            grad, p, winners, mean, var, weight.detach().float().contiguous(),
            bias.detach().float().contiguous(), eps, height, width,
        )  # fmt: skip
        return (
            dy,
            d_weight.to(weight.dtype) if ctx.needs_input_grad[1] else None,
            d_bias.to(bias.dtype) if ctx.needs_input_grad[2] else None,
            None,
            None,
        )


def _fused(y: torch.Tensor, norm: nn.BatchNorm2d, pool: bool) -> torch.Tensor:
    if not norm.training:
        return build.kernels().norm_gelu_inference(
            y.contiguous(memory_format=torch.channels_last),
            *(t.detach().float().contiguous() for t in
              (norm.running_mean, norm.running_var, norm.weight, norm.bias)),
            norm.eps, pool,
        )  # fmt: skip
    out, mean, var = _NormGelu.apply(y, norm.weight, norm.bias, norm.eps, pool)
    with torch.no_grad():  # as BatchNorm2d in training: the unbiased variance kept
        count = out.numel() // out.shape[1]
        momentum = norm.momentum
        if norm.num_batches_tracked is not None:
            norm.num_batches_tracked.add_(1)
            if momentum is None:  # a cumulative average, as BatchNorm2d keeps then
                momentum = 1.0 / float(norm.num_batches_tracked)
        unbiased = var * (count / max(count - 1, 1))
        norm.running_mean.lerp_(mean.to(norm.running_mean.dtype), momentum)
        norm.running_var.lerp_(unbiased.to(norm.running_var.dtype), momentum)
    return out


def pool_norm_gelu(y: torch.Tensor, pool: nn.MaxPool2d, norm: nn.BatchNorm2d,
                   activation: nn.GELU, route: str = "auto") -> torch.Tensor:  # fmt: skip
    """activation(norm(pool(y))) for a 2x2 max-pool of stride 2 and the exact GELU."""
    if _is_plain_pool(pool) and _takes(y, norm, activation, True, route):
        return _fused(y, norm, True)
    return activation(norm(pool(y)))


def norm_gelu(y: torch.Tensor, norm: nn.BatchNorm2d, activation: nn.GELU,
              route: str = "auto") -> torch.Tensor:  # fmt: skip
    """activation(norm(y)) for the exact GELU."""
    if _takes(y, norm, activation, False, route):
        return _fused(y, norm, False)
    return activation(norm(y))


def _takes(y: torch.Tensor, norm: nn.BatchNorm2d, activation: nn.GELU, pool: bool,
           route: str) -> bool:  # fmt: skip
    if route not in ROUTES:
        raise ValueError(f"route must be one of {', '.join(ROUTES)}, not {route!r}")
    return (
        activation.approximate == "none" and serves(y, norm)
        and (route == "fused" or fused_here(y, pool, norm.training))
    )  # fmt: skip


def fused_here(y: torch.Tensor, pool: bool, training: bool) -> bool:
    """Whether the kernel was timed faster than PyTorch's operators here for y's shape and
    dtype (timed the first time it is asked on this machine, then kept)."""
    choice = (*y.shape[1:], str(y.dtype).removeprefix("torch."), pool, training)
    if choice not in _chosen:
        channels, height, width, dtype, _, _ = choice
        verdict = timed_choice.remembered(
            "norm-gelu",
            {"shape": [channels, height, width], "dtype": dtype, "pool": pool,
             "training": training, "batch": TIMING_BATCH, "kernels": build.cache_key()},
            lambda: _time_both(*choice),
        )  # fmt: skip
        _chosen[choice] = verdict["fused"]
    for asked in _recorders:
        asked[choice] = _chosen[choice]
    return _chosen[choice]


@contextlib.contextmanager
def recording() -> Iterator[dict[Choice, bool]]:
    """{choice: fused} for every shape asked within: what a recipe's network chose here."""
    asked: dict[Choice, bool] = {}
    _recorders.append(asked)
    try:
        yield asked
    finally:
        _recorders.remove(asked)


def describe(choices: dict[Choice, bool]) -> str:
    """The choices in words for a result's arithmetic: "" where none took the kernel."""
    taken = sum(choices.values())
    if not taken:
        return ""
    if taken == len(choices):
        return WHAT_IT_FUSES
    return f"{WHAT_IT_FUSES} for {taken} of {len(choices)} shapes (timed faster here)"


def _time_both(channels: int, height: int, width: int, dtype: str, pool: bool,
               training: bool) -> dict:  # fmt: skip
    """Best of 3 of each way after a warm-up, alternating, in milliseconds: a forward and
    backward in training, a forward without gradients in evaluation. Autocast on in
    bfloat16, as the network runs."""
    g = torch.Generator().manual_seed(0)
    compute = getattr(torch, dtype)
    y = torch.randn(TIMING_BATCH, channels, height, width, generator=g).to(compute)
    y = y.contiguous(memory_format=torch.channels_last).requires_grad_(training)
    norm = nn.BatchNorm2d(channels, eps=1e-12).train(training)
    norm.weight.requires_grad_(False)  # as the fast network's
    out_shape = (TIMING_BATCH, channels, *((height // 2, width // 2) if pool else (height, width)))
    grad = torch.randn(out_shape, generator=g).to(compute).contiguous(
        memory_format=torch.channels_last)  # fmt: skip
    pooling, gelu = nn.MaxPool2d(2), nn.GELU()
    ways: dict[str, Callable[[], torch.Tensor]] = {
        "modules": lambda: gelu(norm(pooling(y) if pool else y)),
        "fused": lambda: _fused(y, norm, pool),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=compute == torch.bfloat16)
    for round_ in range(4):
        for name, forward in ways.items():
            start = time.perf_counter()
            with autocast, torch.set_grad_enabled(training):
                out = forward()
            if training:
                torch.autograd.backward(out, grad)
            if round_:
                times[name].append((time.perf_counter() - start) * 1000)
            y.grad = norm.bias.grad = None
    best = {name: round(min(t), 3) for name, t in times.items()}
    return {"fused": best["fused"] < best["modules"], "ms": best}


def _is_plain_pool(pool: nn.MaxPool2d) -> bool:
    def two(v) -> bool:
        return v in (2, (2, 2))

    return (
        two(pool.kernel_size) and two(pool.stride or pool.kernel_size)
        and pool.padding in (0, (0, 0)) and pool.dilation in (1, (1, 1))
        and not pool.ceil_mode and not pool.return_indices
    )  # fmt: skip
