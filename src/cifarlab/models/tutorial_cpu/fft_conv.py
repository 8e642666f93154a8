"""A stride-1 convolution by Fourier transform on the CPU: the tutorial's conv2 (5x5,
64 -> 64 channels on 12x12 images) in about 60% of oneDNN's time each way.

oneDNN's direct convolution already runs near the CPU's peak, so only fewer arithmetic
operations make it faster. In the Fourier domain a convolution is one complex product per
frequency and channel pair: a 16x16 transform of each padded 12x12 image and each filter,
144 complex products instead of 144 x 25 multiply-adds per channel pair, then one inverse
transform per output (kernels.cpp, part 3: NNPACK's ft16x16, run on each thread for its
share of the batch). The function is the same convolution; the rounding differs, and at
the tutorial's shapes it was smaller than the direct convolution's (against float64: 2.4e-6
against 1.7e-5 for the input gradient; tests/test_fft_conv.py holds it to float64).

The backward passes are convolutions of the same kind:
  - the input gradient is the output gradient convolved with the filters transposed
    ([in, out]) and turned by 180 degrees, padded by kernel - 1 - padding;
  - the filters' gradient is the input convolved with the output gradient, each with its
    batch and channel axes swapped: x^T [in, N, H, W] with "filters" g^T [out, N, H', W'],
    padded as the forward, gives [in, out, K, K].
NNPACK reads and writes NCHW. The tutorial's LRNs on either side read and write NCHW too
(lrn.py), so the fast path has no layout copies around the convolution except for the
filters' gradient, whose batch and channel axes are swapped anyway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import build, conv2_choice

_LARGEST_TRANSFORMED = 16  # NNPACK's ft16x16: filters (and the gradient's "filters") up to 16x16


def fft_conv_serves(x: torch.Tensor, weight: torch.Tensor, padding: int) -> bool:
    """Whether conv2d(x, weight, padding=padding) (stride 1, no groups) goes this way: the
    native kernels serve x, every pass fits NNPACK (square filters, so one padding serves the
    input gradient; they and the output, the kernel of the filters' gradient, at most 16x16;
    the padding smaller than both; at least one image, since the filters' gradient convolves
    over the batch as its channels), and conv2_choice.py found the route right and faster
    here."""
    if x.dim() != 4 or weight.dim() != 4 or x.shape[0] == 0:
        return False
    k_h, k_w = weight.shape[-2:]
    out_h, out_w = x.shape[-2] + 2 * padding - k_h + 1, x.shape[-1] + 2 * padding - k_w + 1
    return (
        build.serves(x) and weight.dtype == torch.float32 and weight.shape[1] == x.shape[1]
        and k_h == k_w and 0 <= padding < min(k_h, out_h, out_w)
        and max(k_h, out_h, out_w) <= _LARGEST_TRANSFORMED
        and conv2_choice.by_fourier()
    )  # fmt: skip


class _FftConv(torch.autograd.Function):
    """conv2d(x, weight, bias, padding), stride 1, every pass by Fourier transform
    (module docstring). NCHW out, and the input gradient NCHW: the LRNs on either side
    read and write that layout, so no copy turns it into channels-last and back."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int):
        x_nchw, w_nchw = x.contiguous(), weight.contiguous()
        y = build.kernels().fft_conv(x_nchw, w_nchw, bias, padding)
        ctx.save_for_backward(x_nchw, w_nchw)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        conv = build.kernels().fft_conv
        grad_y = grad_y.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            turned = weight.transpose(0, 1).flip(2, 3).contiguous()
            grad_x = conv(grad_y, turned, None, weight.shape[-1] - 1 - ctx.padding)
        if ctx.needs_input_grad[1]:
            swapped = conv(x.transpose(0, 1).contiguous(), grad_y.transpose(0, 1).contiguous(),
                           None, ctx.padding)  # fmt: skip
            grad_w = swapped.transpose(0, 1).contiguous(memory_format=torch.channels_last)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_y.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None


def fourier_conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int
) -> torch.Tensor:
    """conv2d by Fourier transform, for a caller that has asked fft_conv_serves already."""
    return _FftConv.apply(x, weight, bias, padding)


def conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int
) -> torch.Tensor:
    """conv2d(x, weight, bias, padding=padding), stride 1: by Fourier transform where
    fft_conv_serves says it can, oneDNN's (PyTorch's) convolution otherwise."""
    if fft_conv_serves(x, weight, padding):
        return fourier_conv2d(x, weight, bias, padding)
    return F.conv2d(x, weight, bias, padding=padding)
