"""TensorFlow's classic CIFAR-10 tutorial, faithfully (docs/tutorial.md has its facts).

Network: conv-pool-LRN x2, fully connected 384 and 192, logits (models/tutorial.py).
Training: random 24x24 crop, mirror, brightness and contrast, per-image standardization;
cross-entropy plus L2 weight decay on the two fully connected layers; plain SGD at 0.1
with a staircase decay; a 0.9999 moving average of the weights, which is what is evaluated.
Evaluation: the central 24x24 crop, standardized. TTA: the image and its mirror.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..averaging import ExponentialWeightAverage
from ..data.augment import CentralCropStandardize, distort_for_training
from ..models.tutorial import TutorialNet
from ..schedules import staircase_decay_steps, staircase_learning_rate
from ..settings import setting
from . import Recipe, TrainingPlan, register

# The layers the tutorial decays (its _variable_with_weight_decay with wd > 0).
DECAYED_WEIGHTS = ("local3.weight", "local4.weight")


@dataclass(frozen=True)
class Params:
    learning_rate: float = setting(
        0.1, "initial learning rate, per step of 128 images per tower", above=0
    )
    momentum: float = setting(
        0.0, "SGD momentum; 0: plain gradient descent, as the tutorial", at_least=0, below=1
    )
    lr_decay_factor: float = setting(0.1, "multiply the rate by this ...", above=0, at_most=1)
    epochs_per_decay: float = setting(350.0, "... every this many epochs (staircase)", above=0)
    weight_decay: float = setting(
        0.004, "L2 coefficient on local3 and local4 weights: wd * sum(W^2) / 2", at_least=0
    )
    ema_decay: float = setting(0.9999, "moving average of the weights (evaluated), with update-count warm-up",
                               at_least=0, below=1)  # fmt: skip
    fast_path: bool = setting(True, "the network's CPU-fast implementation (channels_last, LRN with its own "
                              "backward); false: the straightforward reference, same function", resumable=True)  # fmt: skip


@register
class Tutorial(Recipe):
    name = "tutorial"
    Params = Params
    # The documented run: 100K steps of 128 (the original's default was 1M).
    run_defaults = {"max_steps": 100_000, "batch_size": 128}
    run_length_resumable = True  # a staircase does not depend on the run's length

    def for_flop_count(self) -> Tutorial:
        # The fast path's conv2 runs as a Fourier transform and the LRN and pools in native
        # code, which the counter does not see; the reference computes the same function.
        return Tutorial(dataclasses.replace(self.params, fast_path=False))

    def prepare_device(self, device: torch.device) -> None:
        if self.params.fast_path and device.type == "cpu":
            from ..models.tutorial_cpu import conv2_choice

            conv2_choice.prepare()  # the native kernels built, conv2's route timed

    def arithmetic(self, device: torch.device) -> str:
        if self.params.fast_path and device.type == "cpu":
            from ..models.tutorial_cpu import conv2_choice

            if conv2_choice.by_fourier():
                return "float32, conv2 by Fourier transform (timed faster here)"
        return "float32"

    def build_model(self, num_classes: int, train_images: torch.Tensor | None) -> nn.Module:
        model = TutorialNet(num_classes, fast=self.params.fast_path)
        return model.to(memory_format=torch.channels_last) if self.params.fast_path else model

    def train_transform(self, images, generator, position) -> torch.Tensor:
        # [B, 32, 32, 3] uint8 -> [B, 3, 24, 24]; drawn for the whole global batch
        return distort_for_training(
            images, generator, part=(position.offset, position.global_batch_size)
        )

    def eval_preprocess(self) -> nn.Module:
        return CentralCropStandardize()

    def tta_logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return (model(x) + model(x.flip(3))) / 2  # the image and its mirror

    def loss(self, model, logits, labels):
        """-> (total, terms): 'cross_entropy' and one 'weight_loss/<param>' per decayed layer."""
        terms = {"cross_entropy": F.cross_entropy(logits, labels)}
        params = dict(model.named_parameters())
        for name in DECAYED_WEIGHTS:
            terms[f"weight_loss/{name}"] = self.params.weight_decay * params[name].pow(2).sum() / 2
        return torch.stack(list(terms.values())).sum(), terms

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        # Weight decay is in the loss (per layer, as the tutorial), not in the optimizer.
        return torch.optim.SGD(
            model.parameters(), lr=self.params.learning_rate, momentum=self.params.momentum
        )

    def learning_rates(self, step: int, plan: TrainingPlan) -> list[float]:
        p = self.params
        decay_steps = staircase_decay_steps(
            plan.train_examples, plan.global_batch_size, p.epochs_per_decay
        )
        return [staircase_learning_rate(step, p.learning_rate, p.lr_decay_factor, decay_steps)]

    def weight_average(
        self, model: nn.Module, plan: TrainingPlan | None
    ) -> ExponentialWeightAverage:
        return ExponentialWeightAverage(model, self.params.ema_decay)
