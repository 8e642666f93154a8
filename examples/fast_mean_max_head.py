"""A recipe outside the package: `fast` with a head that sees the global mean beside the
global max of the last block's features. Changes relative to `fast`: the head only.

    cifarlab train --recipe examples/fast_mean_max_head.py
    cifarlab train --recipe examples/fast_mean_max_head.py --set head_pool=max   # = fast's head
    cifarlab experiment run runs/mean-max --recipe examples/fast_mean_max_head.py --seeds 0-4

Does the mean help? One experiment against `fast` over the same seeds says, with its
interval (docs/experiments.md):

    cifarlab experiment compare runs/fast runs/mean-max

Every other part (the whitening stem, the blocks, Muon, hard-example selection, the
lookahead, the test-time views) is the library's, reused unchanged: this file is all a
variant needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cifarlab.models.fast import LOGIT_SCALE, FastNet
from cifarlab.recipes.fast import WHITENING_IMAGES, CheapestParams, Fast, Normalize
from cifarlab.settings import setting


@dataclass(frozen=True)
class Params(CheapestParams):  # fast's parameters, and one more
    head_pool: str = setting("max+mean", "what the head sees: the global max of the last "
                             "block's features, or the max and the mean side by side",
                             choices=("max", "max+mean"))  # fmt: skip


class MeanMaxNet(FastNet):
    def __init__(self, num_classes: int, widths, bn_momentum: float, head_pool: str) -> None:
        super().__init__(num_classes, widths, bn_momentum)
        self.head_pool = head_pool
        if head_pool == "max+mean":  # twice the features: [max | mean]
            self.head = nn.Linear(2 * widths[-1], num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.whiten.bias
        frozen = self.training and not self.whiten_bias_trains and bias.requires_grad
        x = nn.functional.conv2d(x, self.whiten.weight, bias.detach() if frozen else bias)
        x = self.blocks(self.activation(x))  # [N, C, 3, 3]
        features = torch.amax(x, dim=(2, 3))  # [N, C]
        if self.head_pool == "max+mean":
            features = torch.cat([features, x.mean(dim=(2, 3))], dim=1)  # [N, 2C]
        logits = self.head(features) * LOGIT_SCALE
        return logits + 0.0 * bias.sum() if frozen else logits  # see FastNet.forward


class FastMeanMaxHead(Fast):
    name = "fast-mean-max-head"
    Params = Params

    def build_model(self, num_classes: int, train_images: torch.Tensor | None) -> nn.Module:
        p = self.params
        model = MeanMaxNet(
            num_classes, (p.width // 4, p.width, p.width), p.bn_momentum, p.head_pool
        )
        if train_images is not None:
            model.init_whitening(Normalize()(train_images[:WHITENING_IMAGES]))
        return model.to(memory_format=torch.channels_last)
