"""The tutorial's input distortions as batched tensor functions (its cifar10_input.py).

Every function takes a whole batch, runs on whatever device the batch is on, and draws its
randomness from an explicit torch.Generator, so the same seed gives the same batches.
Images come in as uint8 [B, 32, 32, 3] (HWC, as stored) and leave as float32 [B, 3, 24, 24]
(NCHW, contiguous, for the network).

Training (`distort_for_training`), per image, in the tutorial's order: random 24x24 crop,
random left-right flip, brightness delta in [-63, 63], contrast factor in [0.2, 1.8],
per-image standardization. Evaluation (`CentralCropStandardize`): the central crop, then
standardization, as a module that eval, predict and export share.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

CROP_SIZE = 24  # the network's input, height and width
MAX_BRIGHTNESS_DELTA = 63.0  # on the 0-255 scale
CONTRAST_RANGE = (0.2, 1.8)


@dataclass
class DistortionParams:
    """The random draws for one batch: one value per image."""

    offset_y: torch.Tensor  # int64 [B], 0..(32 - crop)
    offset_x: torch.Tensor  # int64 [B]
    flip: torch.Tensor  # bool [B]
    brightness_delta: torch.Tensor  # float32 [B], [-63, 63]
    contrast_factor: torch.Tensor  # float32 [B], [0.2, 1.8]


def sample_distortions(
    batch_size: int, generator: torch.Generator, image_size: int = 32, crop: int = CROP_SIZE
) -> DistortionParams:
    """Draw the per-image parameters on the generator's device. Order of draws is fixed."""
    device = generator.device
    span = image_size - crop + 1

    def uniform(low: float, high: float) -> torch.Tensor:
        u = torch.rand(batch_size, generator=generator, device=device)
        return low + (high - low) * u

    return DistortionParams(
        offset_y=torch.randint(0, span, (batch_size,), generator=generator, device=device),
        offset_x=torch.randint(0, span, (batch_size,), generator=generator, device=device),
        flip=torch.rand(batch_size, generator=generator, device=device) < 0.5,
        brightness_delta=uniform(-MAX_BRIGHTNESS_DELTA, MAX_BRIGHTNESS_DELTA),
        contrast_factor=uniform(*CONTRAST_RANGE),
    )


@functools.lru_cache(maxsize=16)
def _window_index(width: int, channels: int, crop: int, device: torch.device) -> torch.Tensor:
    """int32 [2, C*crop*crop]: flat HWC offsets of a crop window at (0, 0) in NCHW order,
    row 0 as is, row 1 mirrored left-right. Cached: it depends only on the shapes."""
    c = torch.arange(channels)[:, None, None]
    i = torch.arange(crop)[None, :, None]
    j = torch.arange(crop)[None, None, :]
    plain = c + i * (width * channels) + j * channels
    mirrored = c + i * (width * channels) + (crop - 1 - j) * channels
    return torch.stack([plain.reshape(-1), mirrored.reshape(-1)]).to(device, torch.int32)


def crop_and_flip(
    images: torch.Tensor,
    offset_y: torch.Tensor,
    offset_x: torch.Tensor,
    flip: torch.Tensor | None = None,
    crop: int = CROP_SIZE,
) -> torch.Tensor:
    """uint8 [B, H, W, C] -> float32 [B, C, crop, crop], window at (offset_y, offset_x) per image.

    Crop, mirror and the HWC -> CHW transpose are one gather from the flat batch: each
    output value's source offset is a cached window pattern plus a per-image start. int32
    offsets and a uint8 gather keep this the cheapest step of the pipeline (on one CPU core
    it costs less than building the offsets with broadcasting int64 arithmetic would).
    """
    b, h, w, c = images.shape
    table = _window_index(w, c, crop, images.device)
    start = (
        torch.arange(b, device=images.device) * (h * w * c) + offset_y * (w * c) + offset_x * c
    ).int()
    pattern = table[0].expand(b, -1) if flip is None else table.index_select(0, flip.int())
    index = (pattern + start[:, None]).reshape(-1)  # [B * C * crop * crop]
    return images.reshape(-1).index_select(0, index).view(b, c, crop, crop).float()


def adjust_brightness(images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """float [B, C, H, W] + delta[B] on every pixel (no clipping, as the tutorial)."""
    return images + delta.view(-1, 1, 1, 1)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per channel: (x - mean_c) * factor + mean_c, mean over each image's pixels."""
    mean = images.mean(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]
    return (images - mean) * factor.view(-1, 1, 1, 1) + mean


def per_image_standardization(images: torch.Tensor) -> torch.Tensor:
    """(x - mean) / max(std, 1/sqrt(n)), mean and (population) std over all of each image."""
    n = images[0].numel()
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    var = images.var(dim=(1, 2, 3), keepdim=True, correction=0)
    return (images - mean) / var.sqrt().clamp_min(1.0 / math.sqrt(n))


def _contrast_and_standardize(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """brightness -> contrast -> standardization as one affine map per channel.

    With m_c the channel means, M their average and v_c the channel variances:
      y = f (x - m_c) + m_c + d,  mean(y) = M + d,  var(y) = f^2 avg_c(v_c) + avg_c((m_c - M)^2)
    so the result is (x - m_c) * f/s + (m_c - M)/s with s = max(sqrt(var(y)), 1/sqrt(n)).
    The brightness delta d cancels exactly (the quirk the tutorial's maintainers noted), so
    it is not an argument; it is still drawn so the random stream is the tutorial's. Statistics come from the centred
    values, so a flat image gives exact zeros as the reference does (E[x^2] - E[x]^2 would
    not), and plain sums are used because torch.var_mean is 20x slower here on one core.
    """
    b, c, h, w = x.shape
    flat = x.view(b, c, h * w)
    mean_c = flat.sum(dim=2, keepdim=True) / (h * w)  # [B, C, 1]
    centred = flat - mean_c  # [B, C, H*W]
    var_c = (centred * centred).sum(dim=2, keepdim=True) / (h * w)  # [B, C, 1]
    grand_mean = mean_c.mean(dim=1, keepdim=True)  # [B, 1, 1]
    f = factor.view(b, 1, 1).to(x.dtype)
    var_y = f**2 * var_c.mean(dim=1, keepdim=True) + ((mean_c - grand_mean) ** 2).mean(
        dim=1, keepdim=True
    )
    std_y = var_y.sqrt().clamp_min(1.0 / math.sqrt(c * h * w))  # [B, 1, 1]
    return torch.addcmul((mean_c - grand_mean) / std_y, centred, f / std_y).view(b, c, h, w)


def distort_for_training(
    images: torch.Tensor,
    generator: torch.Generator,
    crop: int = CROP_SIZE,
    part: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Training transform: uint8 [B, 32, 32, 3] -> float32 [B, 3, 24, 24].

    `part=(offset, total)` says these B images are positions offset..offset+B of a batch of
    `total` split across processes: the parameters are drawn for the whole batch and this
    part's slice is used, so N ranks see exactly the distortions one process would.
    """
    b = images.shape[0]
    offset, total = part if part is not None else (0, b)
    p = sample_distortions(total, generator, images.shape[1], crop)
    take = slice(offset, offset + b)
    x = crop_and_flip(images, p.offset_y[take], p.offset_x[take], p.flip[take], crop)
    return _contrast_and_standardize(x, p.contrast_factor[take])


def central_crop(images: torch.Tensor, crop: int = CROP_SIZE) -> torch.Tensor:
    """uint8 [B, H, W, C] -> float32 [B, C, crop, crop]: the central window. Slicing, not
    the training gather, so it exports to ONNX; the values and layout are the same."""
    start = (images.shape[1] - crop) // 2
    window = images[:, start : start + crop, start : start + crop, :]
    return window.permute(0, 3, 1, 2).contiguous().float()


class CentralCropStandardize(nn.Module):
    """The tutorial's evaluation preprocessing: uint8 [B, 32, 32, 3] -> float32 [B, 3, 24, 24]."""

    def __init__(self, crop: int = CROP_SIZE) -> None:
        super().__init__()
        self.crop = crop

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return per_image_standardization(central_crop(images, self.crop))
