"""The fast recipe's network: a whitening stem and three conv-pool-BatchNorm blocks.

  input         [N, 3, 32, 32], normalized per channel
  whiten        2x2 conv, 3 -> 24, no padding, frozen to the whitening transform of 2x2
                patches (12 eigen-filters and their negatives); only its bias trains  [N, 24, 31, 31]
  GELU
  block 1       conv 3x3 24 -> 64, max-pool 2, BN, GELU, conv 3x3 64 -> 64, BN, GELU  [N, 64, 15, 15]
  block 2       the same, 64 -> 256                                                 [N, 256, 7, 7]
  block 3       the same, 256 -> 256                                                [N, 256, 3, 3]
  global max pool, linear 256 -> classes (no bias), logits scaled by 1/9

With `residual=True` (for longer runs of a wider network) each block has a third
convolution: after its first half (conv, pool, BN, GELU) -> x0, a branch of two more
(conv, BN, GELU, twice) is added back, x0 + s * branch(x0), with s a trained scalar per
block starting at `residual_init` (0: each block starts as its first half alone, the branch
joining as s grows; 1: the plain sum).

Convolutions start as the identity on their first input channels (so a block passes its
input through at first); BatchNorm weights are frozen at 1 and only their biases train;
logits are scaled down so the initial predictions are near uniform. `convolution` says how
the 3x3 convolutions are computed in float32 on a CPU (direct, winograd or auto:
models/winograd.py); under bfloat16 autocast they take models/bf16_conv.py's routes. On a
CPU the pool, batch norm and GELU after each convolution run as one native kernel, in
training and in evaluation, for the shapes where it was timed faster than PyTorch's operators
on this machine (models/norm_gelu.py): the same function either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import winograd
from .norm_gelu import norm_gelu, pool_norm_gelu

LOGIT_SCALE = 1 / 9  # keeps initial logits small: softmax near uniform at the start


def whitening_filters(patches: torch.Tensor, eps: float = 5e-4) -> torch.Tensor:
    """patches [P, C, k, k] -> filters [2 * C*k*k, C, k, k]: eigenvectors of the patches'
    covariance scaled by 1/sqrt(eigenvalue + eps), then their negatives (so a ReLU-like
    activation keeps both signs). Applied to patches, the first half gives features with
    (nearly) identity covariance."""
    p, c, k, _ = patches.shape
    flat = patches.reshape(p, -1).double()
    flat = flat - flat.mean(dim=0)
    covariance = flat.T @ flat / p  # [C*k*k, C*k*k]
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    order = eigenvalues.flip(0), eigenvectors.flip(1)  # largest first
    filters = (order[1] / (order[0] + eps).sqrt()).T.reshape(-1, c, k, k)
    return torch.cat([filters, -filters]).float()


def _patches(images: torch.Tensor, size: int) -> torch.Tensor:
    """images [N, C, H, W] -> every size x size patch [N * (H-size+1) * (W-size+1), C, size, size]."""
    n, c = images.shape[:2]
    windows = images.unfold(2, size, 1).unfold(3, size, 1)  # [N, C, H', W', s, s]
    return windows.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, size, size)


def _conv3x3(channels_in: int, channels_out: int, algorithm: str) -> winograd.Conv2d:
    return winograd.Conv2d(channels_in, channels_out, 3, padding=1, bias=False,
                           algorithm=algorithm)  # fmt: skip


class ConvBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, bn_momentum: float,
                 convolution: str = "direct") -> None:  # fmt: skip
        super().__init__()
        self.conv1 = _conv3x3(channels_in, channels_out, convolution)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _batch_norm(channels_out, bn_momentum)
        self.conv2 = _conv3x3(channels_out, channels_out, convolution)
        self.norm2 = _batch_norm(channels_out, bn_momentum)
        self.activation = nn.GELU()
        for conv in (self.conv1, self.conv2):
            _identity_init(conv)

    def first_half(self, x: torch.Tensor) -> torch.Tensor:
        return pool_norm_gelu(self.conv1(x), self.pool, self.norm1, self.activation)

    def second_half(self, x: torch.Tensor) -> torch.Tensor:
        return norm_gelu(self.conv2(x), self.norm2, self.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second_half(self.first_half(x))


class ResidualBlock(ConvBlock):
    """ConvBlock's first half, then x0 + scale * (conv, BN, GELU, conv, BN, GELU)(x0)."""

    def __init__(self, channels_in: int, channels_out: int, bn_momentum: float,
                 residual_init: float, convolution: str = "direct") -> None:  # fmt: skip
        super().__init__(channels_in, channels_out, bn_momentum, convolution)
        self.conv3 = _conv3x3(channels_out, channels_out, convolution)
        self.norm3 = _batch_norm(channels_out, bn_momentum)
        _identity_init(self.conv3)
        # One trained scalar: at 0 the block starts as its first half alone, and the
        # branch's filters learn from the first step on, when the scale has moved.
        self.branch_scale = nn.Parameter(torch.tensor(float(residual_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.first_half(x)
        branch = norm_gelu(self.conv3(self.second_half(x0)), self.norm3, self.activation)
        return x0 + self.branch_scale * branch


def _batch_norm(channels: int, momentum: float) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels, momentum=momentum, eps=1e-12)
    norm.weight.requires_grad_(False)  # frozen at 1: only the bias (shift) trains
    return norm


@torch.no_grad()
def _identity_init(conv: nn.Conv2d) -> None:
    """Default init, then the first in_channels filters pass their input channel through."""
    n = min(conv.in_channels, conv.out_channels)
    nn.init.dirac_(conv.weight[:n])


class FastNet(nn.Module):
    def __init__(
        self, num_classes: int = 10, widths=(64, 256, 256), bn_momentum: float = 0.6,
        residual: bool = False, residual_init: float = 0.0, convolution: str = "direct",
    ) -> None:  # fmt: skip
        super().__init__()
        self.whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.activation = nn.GELU()
        channels = [24, *widths]
        self.blocks = nn.Sequential(*[
            ResidualBlock(channels[i], channels[i + 1], bn_momentum, residual_init, convolution)
            if residual else ConvBlock(channels[i], channels[i + 1], bn_momentum, convolution)
            for i in range(len(widths))
        ])  # fmt: skip
        self.head = nn.Linear(widths[-1], num_classes, bias=False)
        # The recipe switches this off once the whitening bias stops training: then no
        # gradient flows back into the whitening output, and block 1's first convolution
        # skips its input gradient (4-7% of a training step's FLOPs).
        self.whiten_bias_trains = True

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor) -> None:
        """images: normalized float [N, 3, 32, 32] (a few thousand are plenty)."""
        self.whiten.weight.copy_(whitening_filters(_patches(images, 2)))
        self.whiten.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.whiten.bias
        frozen = self.training and not self.whiten_bias_trains and bias.requires_grad
        x = F.conv2d(x, self.whiten.weight, bias.detach() if frozen else bias)
        x = self.blocks(self.activation(x))  # [N, 256, 3, 3]
        x = torch.amax(x, dim=(2, 3))  # [N, 256]
        logits = self.head(x) * LOGIT_SCALE
        if frozen:
            # DistributedDataParallel waits for a gradient of every parameter that requires
            # one: give the frozen bias an exact zero, without the backward pass through
            # block 1 that its real gradient would cost.
            logits = logits + 0.0 * bias.sum()
        return logits

    def activation_points(self) -> dict[str, nn.Module]:
        return {f"block{i + 1}": block for i, block in enumerate(self.blocks)}
