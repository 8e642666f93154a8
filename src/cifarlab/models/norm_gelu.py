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
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .tutorial_cpu import build

DTYPES = (torch.float32, torch.bfloat16)


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
    """Whether this process runs the fused kernel where it serves."""
    return build.enabled() and build.kernels() is not None


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
                   activation: nn.GELU) -> torch.Tensor:  # fmt: skip
    """activation(norm(pool(y))) for a 2x2 max-pool of stride 2 and the exact GELU."""
    if serves(y, norm) and _is_plain_pool(pool) and activation.approximate == "none":
        return _fused(y, norm, True)
    return activation(norm(pool(y)))


def norm_gelu(y: torch.Tensor, norm: nn.BatchNorm2d, activation: nn.GELU) -> torch.Tensor:
    """activation(norm(y)) for the exact GELU."""
    if serves(y, norm) and activation.approximate == "none":
        return _fused(y, norm, False)
    return activation(norm(y))


def _is_plain_pool(pool: nn.MaxPool2d) -> bool:
    def two(v) -> bool:
        return v in (2, (2, 2))

    return (
        two(pool.kernel_size) and two(pool.stride or pool.kernel_size)
        and pool.padding in (0, (0, 0)) and pool.dilation in (1, (1, 1))
        and not pool.ceil_mode and not pool.return_indices
    )  # fmt: skip
