"""The LRN fast: the same function as models/lrn.py's reference, laid out for the CPU.

Two versions: the native kernel each way (kernels.cpp) where it builds, else PyTorch
operators on channels-last tensors with a written-out backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..lrn import _band
from . import build


def _inverse_power(s: torch.Tensor, beta: float) -> torch.Tensor:
    """s ** -beta; for the tutorial's 0.75 as two square roots, cheaper than a general pow."""
    if beta == 0.75:  # s^-(1 + 1/2) / 2 = s^-0.75, in place on one new tensor
        return torch.sqrt(s).mul_(s).rsqrt_()
    return s.pow(-beta)


def _window_sum(
    x: torch.Tensor, band: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum over each channel's window, channels_last in and out: the [N*H*W, C] x [C, C]
    band product as a 1x1 convolution, which oneDNN runs 2-2.5x faster than torch.mm on
    our AMD CPUs (measured at the tutorial's shapes; MKL's GEMM does not use AVX-512 on AMD)."""
    c = band.shape[0]
    return F.conv2d(x, band.view(c, c, 1, 1), bias)


class _LRNChannelsLast(torch.autograd.Function):
    """The same function as local_response_norm, laid out for speed: the channels are the
    innermost dimension (channels_last), so the window sum over channels is one large
    1x1 convolution, and the backward is written out instead of recorded:

        s = bias + alpha * window(x^2),  p = s^-beta,  y = x * p
        dL/dx = g * p - 2 * alpha * beta * x * window(g * x * p / s)

    (the band is symmetric, so the window's transpose is the window itself). It keeps
    x, s and p; autograd through the reference keeps about twice as much."""

    @staticmethod
    def forward(ctx, x, radius: int, bias: float, alpha: float, beta: float):
        y, x, s, p, band = _lrn_forward(x, radius, bias, alpha, beta)
        ctx.save_for_backward(x, s, p, band)  # x channels_last; band includes alpha
        ctx.beta = beta
        return y

    @staticmethod
    def backward(ctx, g):
        # Four passes over the activations besides the window sum, two of them in place.
        x, s, p, band = ctx.saved_tensors
        gp = g.contiguous(memory_format=torch.channels_last) * p
        window = _window_sum(torch.mul(gp, x).div_(s), band)
        return gp.addcmul_(x, window, value=-2 * ctx.beta), None, None, None, None


def _lrn_forward(x, radius, bias, alpha, beta):
    """-> y, and what the backward needs: x channels_last, s, p and the band (times alpha)."""
    x = x.contiguous(memory_format=torch.channels_last)
    c = x.shape[1]
    band = _band(c, radius, x.device, x.dtype) * alpha
    s = _window_sum(x * x, band, torch.full((c,), bias, dtype=x.dtype, device=x.device))
    p = _inverse_power(s, beta)
    return x * p, x, s, p, band


class _NativeLRN(torch.autograd.Function):
    """The same function again, as one native kernel each way (kernels.cpp): one read
    and one write of the activations forward, two reads and a write backward. Keeps only x:
    the backward recomputes s from it. Reads channels-last or NCHW; writes y as asked and
    the input gradient in x's layout (both where the neighbouring layers want them)."""

    @staticmethod
    def forward(ctx, x, radius: int, bias: float, alpha: float, channels_last_out: bool):
        x = _dense(x)
        ctx.save_for_backward(x)
        ctx.window = radius, bias, alpha
        return build.kernels().lrn_forward(x, radius, bias, alpha, channels_last_out)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        x_channels_last = x.is_contiguous(memory_format=torch.channels_last)
        grad = build.kernels().lrn_backward(_dense(g), x, *ctx.window, x_channels_last)
        return grad, None, None, None, None


def _dense(x: torch.Tensor) -> torch.Tensor:
    """x as it is where the native kernels read it (channels-last or NCHW), else channels-last."""
    if x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous():
        return x
    return x.contiguous(memory_format=torch.channels_last)


def _native_applies(x: torch.Tensor, radius: int, beta: float) -> bool:
    """The native kernel covers the tutorial's beta and radii up to 5 (and what
    build.serves covers)."""
    return beta == 0.75 and 1 <= radius <= 5 and x.dim() == 4 and build.serves(x)


def local_response_norm_channels_last(
    x: torch.Tensor, radius: int = 4, bias: float = 1.0, alpha: float = 0.001 / 9,
    beta: float = 0.75, channels_last_out: bool = True,
) -> torch.Tensor:  # fmt: skip
    """local_response_norm, fast on channels_last tensors (any layout is accepted); the
    output is channels_last (NCHW with `channels_last_out=False` where the native kernel
    applies, for a next layer that reads NCHW). The native kernel where it applies; else
    PyTorch ops with a written-out backward, or plain tensor ops when no gradient is needed
    or when traced (TorchScript cannot save a Python autograd.Function)."""
    if _native_applies(x, radius, beta):
        if torch.is_grad_enabled() and x.requires_grad:
            return _NativeLRN.apply(x, radius, bias, alpha, channels_last_out)
        return build.kernels().lrn_forward(_dense(x), radius, bias, alpha, channels_last_out)
    if torch.is_grad_enabled() and x.requires_grad and not torch.jit.is_tracing():
        return _LRNChannelsLast.apply(x, radius, bias, alpha, beta)
    return _lrn_forward(x, radius, bias, alpha, beta)[0]
