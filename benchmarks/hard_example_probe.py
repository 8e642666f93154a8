"""Probe, not a feature: does drawing the later epochs from the hardest examples pay, at
the same number of steps (so the same training FLOPs)? Measured before building it in.

    python benchmarks/hard_example_probe.py DROP FROM_EPOCH -- TIME_TO_ACCURACY_ARGS...
    e.g. python benchmarks/hard_example_probe.py 0.3 2 -- --recipe fast-muon --seeds 1 \\
             --max-steps 240 --set width=192

Each training example's loss is recorded when the training forward pass sees it (free:
the pass computes it anyway; stale by up to an epoch). From epoch FROM_EPOCH on, each
epoch's 50,000 draws come only from the (1 - DROP) x 50,000 examples with the highest
recorded loss, reshuffled (so the hard ones are seen more often, the easy ones not at
all). It patches the fast recipe and the loader in this process only, for one process
on the 50,000-image CIFAR-10 training set; resume and several ranks are not handled.
Then it runs benchmarks/time_to_accuracy.py with the remaining arguments.
"""

from __future__ import annotations

import math
import runpy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from cifarlab.data import loader
from cifarlab.recipes import fast

TRAIN_EXAMPLES = 50_000


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[3] != "--":
        raise SystemExit(__doc__.split("\n\n")[1])
    drop, from_epoch = float(sys.argv[1]), int(sys.argv[2])
    losses = torch.full((TRAIN_EXAMPLES,), float("inf"))  # last seen loss of each example
    plain_order = loader.TrainBatches._epoch_order

    def epoch_order(self):
        if self._order is None and self.epoch >= from_epoch and len(self.images) == TRAIN_EXAMPLES:
            g = torch.Generator().manual_seed(loader.derive_seed(self.seed, "order", self.epoch))
            keep = int((1 - drop) * TRAIN_EXAMPLES)
            hard = losses.argsort(descending=True)[:keep]
            repeats = math.ceil(TRAIN_EXAMPLES / keep)
            self._order = torch.cat(
                [hard[torch.randperm(keep, generator=g)] for _ in range(repeats)]
            )
            self._order = self._order[:TRAIN_EXAMPLES]
            print(f"epoch {self.epoch}: drawing from the {keep} hardest; mean stale loss kept "
                  f"{losses[hard].mean():.3f}, all {losses[losses.isfinite()].mean():.3f}", flush=True)  # fmt: skip
        return plain_order(self)

    plain_transform, plain_loss = fast.Fast.train_transform, fast.Fast.loss

    def train_transform(self, images, generator, position):
        self._probe_indices = position.indices
        return plain_transform(self, images, generator, position)

    def loss(self, model, logits, labels):
        indices = getattr(self, "_probe_indices", None)
        if model.training and indices is not None and len(indices) == len(labels):
            per_example = F.cross_entropy(logits.detach(), labels, reduction="none")
            losses[indices.cpu()] = per_example.cpu()
        return plain_loss(self, model, logits, labels)

    loader.TrainBatches._epoch_order = epoch_order
    fast.Fast.train_transform, fast.Fast.loss = train_transform, loss
    sys.argv = ["time_to_accuracy.py", *sys.argv[4:]]
    runpy.run_path(str(Path(__file__).with_name("time_to_accuracy.py")), run_name="__main__")


if __name__ == "__main__":
    main()
