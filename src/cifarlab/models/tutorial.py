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

from .lrn import LocalResponseNorm


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


def _init(layer: nn.Module, std: float, bias: float) -> None:
    """Normal truncated at two standard deviations, as tf.truncated_normal_initializer."""
    nn.init.trunc_normal_(layer.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
    nn.init.constant_(layer.bias, bias)


class TutorialNet(nn.Module):
    """The tutorial's network. `fast=True` computes the same function faster on CPUs
    (tutorial_cpu/: channels-last activations, native kernels, conv2 by Fourier transform);
    `fast=False` is the straightforward reference below, which tests hold it to."""

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
        if self.fast:
            from .tutorial_cpu import fast_forward

            return fast_forward(self, x)
        x = same_max_pool(self.conv1_relu(self.conv1(x)))  # [N, 64, 12, 12]
        x = same_max_pool(self.norm2(self.conv2_relu(self.conv2(self.norm1(x)))))  # [N, 64, 6, 6]
        x = self.local3_relu(self.local3(x.flatten(1)))  # [N, 384]
        x = self.local4_relu(self.local4(x))  # [N, 192]
        return self.softmax_linear(x)  # [N, num_classes]

    def activation_points(self) -> dict[str, nn.Module]:
        """Modules whose outputs are the layers' activations, by summary tag (as the tutorial's)."""
        return {
            "conv1": self.conv1_relu, "conv2": self.conv2_relu, "local3": self.local3_relu,
            "local4": self.local4_relu, "softmax_linear": self.softmax_linear,
        }  # fmt: skip
