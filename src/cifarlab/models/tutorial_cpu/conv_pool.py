"""The tutorial's first convolution and the max-pool after it, with a backward laid out
for the CPU.

Channels-last is oneDNN's fast layout for the forward pass, but for a convolution with 3
input channels its weight gradient is 2x slower channels-last than in NCHW (about 5 against
2.2-2.4 ms at the tutorial's [128, 3, 24, 24] on our AMD EPYC). The backward here therefore
has the pool's backward (max_pool.py) write the 19 MB gradient of the convolution's output
directly in NCHW, and turns only the images into NCHW; the forward stays channels-last.
The function computed is the same: convolution (stride 1, SAME), then max-pool with
TensorFlow's SAME padding where all of it falls at the end (ceil_mode).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .max_pool import max_pool_backward


class _ConvMaxPool(torch.autograd.Function):
    """Forward channels-last as the plain operators; backward in NCHW (module docstring).
    Keeps the images, the filters and the pool's indices, not the 19 MB conv output."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int, kernel: int, stride: int):
        y = F.conv2d(x, weight, bias, padding=padding)
        pooled, indices = F.max_pool2d(y, kernel, stride, ceil_mode=True, return_indices=True)
        ctx.save_for_backward(x, weight, indices)
        ctx.conv_shape, ctx.options = y.shape, (padding, kernel, stride, bias is not None)
        return pooled

    @staticmethod
    def backward(ctx, grad_pooled):
        x, weight, indices = ctx.saved_tensors
        padding, kernel, stride, has_bias = ctx.options
        # The convolution's output gradient is written in NCHW, where its weight gradient
        # runs fastest.
        grad_conv = max_pool_backward(grad_pooled, indices, ctx.conv_shape, kernel, stride, False)
        want_x, want_w, want_b = ctx.needs_input_grad[:3]
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_conv, x.contiguous(), weight.contiguous(), [weight.shape[0]] if has_bias else None,
            [1, 1], [padding, padding], [1, 1], False, [0, 0], 1, [want_x, want_w, want_b and has_bias],
        )  # fmt: skip
        if grad_w is not None:
            grad_w = grad_w.contiguous(memory_format=torch.channels_last)
        if grad_x is not None:
            grad_x = grad_x.contiguous(memory_format=torch.channels_last)
        return grad_x, grad_w, grad_b, None, None, None


def conv_then_max_pool(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int,
    kernel: int = 3, stride: int = 2,
) -> torch.Tensor:  # fmt: skip
    """max_pool(conv2d(x, weight, bias, padding=padding)), the pool's SAME padding at the end
    of each axis (ceil_mode). The custom backward only where a gradient is wanted on the
    CPU; the plain operators otherwise (evaluation, export, other devices)."""
    wants_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if wants_grad and x.device.type == "cpu" and not torch.jit.is_tracing():
        return _ConvMaxPool.apply(x, weight, bias, padding, kernel, stride)
    return F.max_pool2d(F.conv2d(x, weight, bias, padding=padding), kernel, stride, ceil_mode=True)
