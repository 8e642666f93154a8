"""An optional accelerator for the tutorial's network on CPUs: the same function as
models/tutorial.py's reference forward, computed with fewer passes over memory and, for
conv2, fewer multiplications (docs/tutorial_cpu.md).

  build.py          the native kernels (kernels.cpp): built once per machine and toolchain,
                    before training starts, under a lock that a killed build cannot hold
  conv2_choice.py   conv2 by Fourier transform or by oneDNN, whichever is faster here (timed)
  fft_conv.py       conv2 by 16x16 Fourier transforms (NNPACK, called per thread)
  lrn.py            the LRN as one native kernel each way, or channels-last PyTorch ops
  max_pool.py       SAME max-pooling without a padded copy, with a native backward
  conv_pool.py      conv1 and its pool, the pair's backward in NCHW
  onednn_linear.py  the fully connected layers' products on oneDNN

Every part falls back to PyTorch's operators where it cannot serve (no compiler, another
device or dtype, tracing, export): slower, never different.
"""

from __future__ import annotations

import torch
from torch import nn

from ..tutorial import _same_padding, same_max_pool
from . import fft_conv
from .conv_pool import conv_then_max_pool
from .max_pool import max_pool_clipped
from .onednn_linear import linear


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


def fast_forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """TutorialNet's forward, fast: channels-last activations (oneDNN's layout), conv1's ReLU
    after its pool, conv2 by Fourier transform where that is faster here, the LRNs and the
    pools' backward as native kernels, the fully connected layers on oneDNN."""
    x = x.contiguous(memory_format=torch.channels_last)
    x = _conv1_pooled(net, x)  # [N, 64, 12, 12]
    conv = net.conv2
    by_fft = net.conv2_by_fft and fft_conv.fft_conv_serves(x, conv.weight, conv.padding[0])
    x = net.norm1(x, channels_last_out=not by_fft)  # NCHW for the Fourier transform
    if by_fft:
        x = fft_conv.fourier_conv2d(x, conv.weight, conv.bias, conv.padding[0])
    else:
        x = conv(x)
    x = same_max_pool_unpadded(net.norm2(net.conv2_relu(x)))  # [N, 64, 6, 6]
    x = net.local3_relu(linear(x.flatten(1), net.local3))  # [N, 384]
    x = net.local4_relu(linear(x, net.local4))  # [N, 192]
    return linear(x, net.softmax_linear)  # [N, num_classes]


def _conv1_pooled(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """pool(relu(conv1(x))), pooling first: ReLU commutes with max-pooling (it is monotone)
    and on the pooled map touches a quarter of the values; the pair's backward runs in
    NCHW (conv_pool.py). Summary steps (a hook watching conv1's activation) keep the
    tutorial's order, so the summary sees the layer's whole output."""
    conv = net.conv1
    if not net.conv1_relu._forward_hooks and _pads_at_end(x, 3, 2):
        return net.conv1_relu(conv_then_max_pool(x, conv.weight, conv.bias, conv.padding[0]))
    return same_max_pool_unpadded(net.conv1_relu(conv(x)))  # [N, 64, 24, 24] before the pool
