"""Local response normalization across channels, as the tutorial's tf.nn.lrn.

out_c = x_c / (bias + alpha * sum_{k=c-r..c+r} x_k^2) ** beta, the window clipped at the ends.
"""

from __future__ import annotations

import torch
from torch import nn


def _band(channels: int, radius: int, device, dtype) -> torch.Tensor:
    """[C, C] matrix with ones where |i - j| <= radius: the channel-window sum as one matmul."""
    idx = torch.arange(channels, device=device)
    return ((idx[:, None] - idx[None, :]).abs() <= radius).to(dtype)


def local_response_norm(
    x: torch.Tensor,
    radius: int = 4,
    bias: float = 1.0,
    alpha: float = 0.001 / 9,
    beta: float = 0.75,
) -> torch.Tensor:
    """x: [N, C, H, W]. The windowed sum of squares is a banded [C, C] matmul, which runs on
    the BLAS and autograd differentiates for free; alpha is per term (TensorFlow's convention,
    PyTorch's F.local_response_norm divides its alpha by the window size instead)."""
    n, c, h, w = x.shape
    band = _band(c, radius, x.device, x.dtype)
    sq_sum = torch.matmul(band, (x * x).reshape(n, c, h * w)).view(n, c, h, w)  # [N, C, H, W]
    return x * (bias + alpha * sq_sum).pow(-beta)


class LocalResponseNorm(nn.Module):
    """`fast`: tutorial_cpu/lrn.py's implementations (channels-last, native kernel); else
    the reference."""

    def __init__(
        self, radius: int = 4, bias: float = 1.0, alpha: float = 0.001 / 9, beta: float = 0.75,
        fast: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.radius, self.bias, self.alpha, self.beta = radius, bias, alpha, beta
        self.fast = fast

    def forward(self, x: torch.Tensor, channels_last_out: bool = True) -> torch.Tensor:
        """`channels_last_out=False` asks the fast path for NCHW where it can give it."""
        if self.fast:  # the CPU accelerator's versions of the same function
            from .tutorial_cpu.lrn import local_response_norm_channels_last

            return local_response_norm_channels_last(
                x, self.radius, self.bias, self.alpha, self.beta, channels_last_out
            )
        return local_response_norm(x, self.radius, self.bias, self.alpha, self.beta)

    def extra_repr(self) -> str:
        return f"depth_radius={self.radius}, bias={self.bias}, alpha={self.alpha:.3g}, beta={self.beta}"
