"""The tutorial's network (cifar10.py `inference`), layer for layer.

  input        [N, 3, 24, 24]
  conv1        5x5, 3->64, SAME, ReLU       [N, 64, 24, 24]
  pool1        3x3 max, stride 2, SAME      [N, 64, 12, 12]
  norm1        LRN
  conv2        5x5, 64->64, SAME, ReLU      [N, 64, 12, 12]
  norm2        LRN (before the pool here, as in the original)
  pool2        3x3 max, stride 2, SAME      [N, 64, 6, 6] -> [N, 2304]
  local3       2304->384, ReLU              (weight decay: the recipe's loss)
  local4       384->192, ReLU
  softmax_linear 192->num_classes (logits; the softmax is in the loss)
1,068,298 parameters for 10 classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import fft_conv
from .conv_pool import conv_then_max_pool
from .lrn import LocalResponseNorm
from .max_pool import max_pool_clipped
from .onednn_linear import linear


def _same_padding(x: torch.Tensor, kernel: int, stride: int) -> tuple[int, int]:
    """Total (height, width) padding of TensorFlow's SAME: output ceil(in / stride)."""
    h, w = x.shape[-2:]
    return tuple(max((math.ceil(n / stride) - 1) * stride + kernel - n, 0) for n in (h, w))


def same_max_pool(x: torch.Tensor, kernel: int = 3, stride: int = 2) -> torch.Tensor:
    """Max pooling with TensorFlow's SAME padding: output ceil(in / stride), and an odd
    padding total puts the extra row/column at the end (bottom/right), which PyTorch's
    symmetric `padding=` cannot express. Padding is -inf, so it never wins the max."""
    pad_h, pad_w = _same_padding(x, kernel, stride)
    x = F.pad(
        x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=float("-inf")
    )
    return F.max_pool2d(x, kernel, stride)


def _pads_at_end(x: torch.Tensor, kernel: int, stride: int) -> bool:
    """SAME pooling of x pads only after the last row and column (ceil_mode does that)."""
    pad_h, pad_w = _same_padding(x, kernel, stride)
    return not (pad_h // 2 or pad_w // 2)


def same_max_pool_unpadded(x: torch.Tensor, kernel: int = 3, stride: int = 2) -> torch.Tensor:
    """same_max_pool without the padded copy where the padding is all at the end (the
    tutorial's 24 -> 12 and 12 -> 6): ceil_mode's last window is clipped at the border,
    which is what a -inf pad does. Falls back to same_max_pool otherwise."""
    if not _pads_at_end(x, kernel, stride):
        return same_max_pool(x, kernel, stride)
    return max_pool_clipped(x, kernel, stride)


def _call(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """layer(x): the straightforward path's fully connected layers."""
    return layer(x)


def _init(layer: nn.Module, std: float, bias: float) -> None:
    """Normal truncated at two standard deviations, as tf.truncated_normal_initializer."""
    nn.init.trunc_normal_(layer.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
    nn.init.constant_(layer.bias, bias)


class TutorialNet(nn.Module):
    """`fast=True`: the same function computed faster on CPUs: channels_last activations
    (oneDNN's native layout), the LRN as a native kernel each way (lrn.py, native.py),
    SAME pooling without a padded copy and with a native backward (max_pool.py), ReLUs in
    place, conv1's ReLU after its pool and its backward in NCHW (conv_pool.py), the fully
    connected layers on oneDNN (onednn_linear.py), conv2 by Fourier transform (fft_conv.py).
    `fast=False`: the straightforward reference, which tests compare against."""

    conv2_by_fft = True  # part of the fast path; benchmarks switch it off to see what it buys

    def __init__(self, num_classes: int = 10, fast: bool = True) -> None:
        super().__init__()
        self.fast = fast
        self.conv1 = nn.Conv2d(3, 64, 5, padding=2)
        self.norm1 = LocalResponseNorm(fast=fast)
        self.conv2 = nn.Conv2d(64, 64, 5, padding=2)
        self.norm2 = LocalResponseNorm(fast=fast)
        self.local3 = nn.Linear(6 * 6 * 64, 384)
        self.local4 = nn.Linear(384, 192)
        self.softmax_linear = nn.Linear(192, num_classes)
        # ReLUs as modules (no parameters) so summaries can hook each layer's activations.
        # In place on the fast path: a convolution's backward needs its input, not its output.
        self.conv1_relu, self.conv2_relu = nn.ReLU(inplace=fast), nn.ReLU(inplace=fast)
        self.local3_relu, self.local4_relu = nn.ReLU(), nn.ReLU()
        _init(self.conv1, 5e-2, 0.0)
        _init(self.conv2, 5e-2, 0.1)
        _init(self.local3, 0.04, 0.1)
        _init(self.local4, 0.04, 0.1)
        _init(self.softmax_linear, 1 / 192.0, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = same_max_pool
        if self.fast:
            x, pool = x.contiguous(memory_format=torch.channels_last), same_max_pool_unpadded
        x = self._conv1_pooled(x, pool)  # [N, 64, 12, 12]
        by_fft = self._conv2_by_fft(x)
        x = self.norm1(x, channels_last_out=not by_fft)  # NCHW for the Fourier transform
        x = pool(self.norm2(self.conv2_relu(self._conv2(x, by_fft))))  # [N, 64, 6, 6]
        dense = linear if self.fast else _call
        x = self.local3_relu(dense(x.flatten(1), self.local3))  # [N, 384]
        x = self.local4_relu(dense(x, self.local4))  # [N, 192]
        return dense(x, self.softmax_linear)  # [N, num_classes]

    def _conv1_pooled(self, x: torch.Tensor, pool) -> torch.Tensor:
        """pool(relu(conv1(x))). The fast path pools first: ReLU commutes with max-pooling
        (it is monotone) and on the pooled map touches a quarter of the values; the pair's
        backward runs in NCHW (conv_pool.py). Summary steps (a hook watching conv1's
        activation) keep the tutorial's order, so the summary sees the layer's whole output."""
        if self.fast and not self.conv1_relu._forward_hooks and _pads_at_end(x, 3, 2):
            conv = self.conv1
            return self.conv1_relu(conv_then_max_pool(x, conv.weight, conv.bias, conv.padding[0]))
        return pool(self.conv1_relu(self.conv1(x)))  # [N, 64, 24, 24] before the pool

    def _conv2_by_fft(self, x: torch.Tensor) -> bool:
        """Whether conv2 goes by Fourier transform (fft_conv.py), in NCHW: then norm1 writes
        NCHW for it. 5x5 filters on 12x12 maps are where that pays most."""
        conv = self.conv2
        return (
            self.fast
            and self.conv2_by_fft
            and fft_conv.fft_conv_serves(x, conv.weight, conv.padding[0])
        )

    def _conv2(self, x: torch.Tensor, by_fft: bool) -> torch.Tensor:
        conv = self.conv2
        if by_fft:
            return fft_conv.fourier_conv2d(x, conv.weight, conv.bias, conv.padding[0])
        return conv(x)

    def activation_points(self) -> dict[str, nn.Module]:
        """Modules whose outputs are the layers' activations, by summary tag (as the tutorial's)."""
        return {
            "conv1": self.conv1_relu, "conv2": self.conv2_relu, "local3": self.local3_relu,
            "local4": self.local4_relu, "softmax_linear": self.softmax_linear,
        }  # fmt: skip
