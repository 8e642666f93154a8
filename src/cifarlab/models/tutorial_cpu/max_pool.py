"""Max-pooling without padding, the last window clipped at the border (ceil_mode), which
is TensorFlow's SAME pooling wherever its padding falls at the end (the tutorial's 24 -> 12
and 12 -> 6). The forward is PyTorch's; on float32 CPU tensors the backward is the native
kernel's (kernels.cpp): one pass over the input gradient, written in whichever layout
the next layer wants, where PyTorch copies the pooled gradient and the indices into the
input's layout, zero-fills the input gradient, then scatters into it. Elsewhere PyTorch's
backward, the same function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import build


def max_pool_backward(
    grad: torch.Tensor, indices: torch.Tensor, input_shape, kernel: int, stride: int,
    channels_last: bool,
) -> torch.Tensor:  # fmt: skip
    """The input gradient, laid out channels-last or NCHW as asked."""
    indices = indices.contiguous(
        memory_format=torch.channels_last
    )  # as a channels-last pool made them
    if build.serves(grad):
        return build.kernels().max_pool_backward(grad, indices, *input_shape[2:], channels_last)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    shape_only = torch.empty(input_shape, dtype=grad.dtype, device=grad.device)
    return torch.ops.aten.max_pool2d_with_indices_backward(
        grad.contiguous(memory_format=layout), shape_only.contiguous(memory_format=layout),
        [kernel, kernel], [stride, stride], [0, 0], [1, 1], True,
        indices.contiguous(memory_format=layout),
    )  # fmt: skip


class _MaxPool(torch.autograd.Function):
    """Keeps the indices (and the input's shape), not the input."""

    @staticmethod
    def forward(ctx, x, kernel: int, stride: int):
        pooled, indices = F.max_pool2d(x, kernel, stride, ceil_mode=True, return_indices=True)
        ctx.save_for_backward(indices)
        ctx.options = x.shape, kernel, stride
        return pooled

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        shape, kernel, stride = ctx.options
        return max_pool_backward(grad, indices, shape, kernel, stride, True), None, None


def max_pool_clipped(x: torch.Tensor, kernel: int = 3, stride: int = 2) -> torch.Tensor:
    """F.max_pool2d(x, kernel, stride, ceil_mode=True), its backward on the native kernel
    where that applies (float32 on the CPU), the input gradient channels-last."""
    if torch.is_grad_enabled() and x.requires_grad and build.serves(x):
        return _MaxPool.apply(x, kernel, stride)
    return F.max_pool2d(x, kernel, stride, ceil_mode=True)
