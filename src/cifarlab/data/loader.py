"""Batches sliced from a whole split held in memory on the compute device.

No worker processes, no queue: the split lives on the device as uint8 [N, 32, 32, 3]
(150 MB for CIFAR-10's training set), each batch is one index_select, and the transform
runs on the whole batch there. This is what keeps the input pipeline from starving a GPU
(the original's queue runners did) and costs ~1 ms a batch on one CPU core.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BatchPosition:
    """Where a rank's batch sits in the stream, for transforms that depend on it."""

    epoch: int  # epochs completed before this batch
    offset: int  # this rank's first position within the global batch
    global_batch_size: int  # draw per-image randomness for this many, use [offset, offset + B)
    indices: torch.Tensor  # int64 [B]: the examples' indices in the split


# (uint8 [B, 32, 32, 3], generator seeded for this global batch, position) -> model input
Transform = Callable[[torch.Tensor, torch.Generator, BatchPosition], torch.Tensor]


@dataclass(frozen=True)
class HardExamples:
    """From epoch `from_epoch` on, each epoch draws only from the `keep` fraction of the
    examples with the highest loss when last seen (docs/fast.md): as many draws as a full
    epoch, so the hard ones come more often and the easy ones not at all."""

    keep: float  # in (0, 1]
    from_epoch: int


def hardest_order(losses: torch.Tensor, keep: float, generator: torch.Generator) -> torch.Tensor:
    """A permutation-like order of len(losses) draws from the `keep` fraction of indices
    with the highest losses, each reshuffled pass after pass. Ties (e.g. never-seen
    examples, +inf) are broken by index, so every rank computes the same order."""
    n = losses.numel()
    count = max(1, round(keep * n))
    hardest = losses.argsort(descending=True, stable=True)[:count]
    passes = [
        hardest[torch.randperm(count, generator=generator)] for _ in range(math.ceil(n / count))
    ]
    return torch.cat(passes)[:n]


def derive_seed(seed: int, *tags: object) -> int:
    """A 63-bit seed for a named stream (e.g. ("order", epoch)): independent streams from one seed."""
    text = ":".join(str(t) for t in (seed, *tags)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


class TrainBatches:
    """Endless training batches: reshuffled every epoch, last partial batch dropped.

    With `world_size` ranks, every step has one global batch of `batch_size * world_size`
    examples taken from the epoch's permutation; rank r takes the r-th slice of it. So the
    ranks' shards are disjoint, together cover the epoch (less the dropped remainder), and
    2 ranks x 64 see exactly the examples 1 rank x 128 sees.

    Randomness is a pure function of the position, so nothing random needs saving: the
    permutation of epoch e comes from (seed, e), drawn on the CPU so every device sees the
    same order; the distortions of global batch k come from (seed, k), drawn for the whole
    global batch on every rank, each rank using its slice. So N ranks reproduce one process
    exactly, and `state_dict()` (the position) is all that resume needs.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        transform: Transform,
        seed: int = 0,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        hard_examples: HardExamples | None = None,
        gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.device = torch.device(device)
        self.images = images.to(self.device)  # uint8 [N, 32, 32, 3]
        self.labels = labels.to(self.device)  # int64 [N]
        self.batch_size = batch_size  # per rank
        self.global_batch_size = batch_size * world_size
        self.steps_per_epoch = images.shape[0] // self.global_batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{images.shape[0]} training examples cannot fill one global batch of {self.global_batch_size}"
            )
        self.transform = transform
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.generator = torch.Generator(self.device)  # re-seeded for every batch
        self.epoch = 0
        self.step_in_epoch = 0
        self._order: torch.Tensor | None = None  # the current epoch's permutation, on device
        # Hard-example selection: each example's loss when last seen (+inf: not yet), on
        # the CPU; `gather` turns a rank's [B] losses into the global batch's, in rank order.
        self.hard_examples, self.gather = hard_examples, gather
        self.example_losses = (
            torch.full((images.shape[0],), float("inf")) if hard_examples else None
        )
        self._last_global_indices: torch.Tensor | None = None

    def _epoch_order(self) -> torch.Tensor:
        if self._order is None:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "order", self.epoch))
            hard = self.hard_examples
            if hard is not None and self.epoch >= hard.from_epoch:
                order = hardest_order(self.example_losses, hard.keep, g)
            else:
                order = torch.randperm(self.images.shape[0], generator=g)
            self._order = order.to(self.device)
        return self._order

    def record_losses(self, losses: torch.Tensor) -> None:
        """This rank's per-example losses [B] of the batch just drawn; with several ranks
        every rank must call it (a collective), and every rank then holds the same table."""
        everyone = self.gather(losses.detach().float().contiguous())
        self.example_losses[self._last_global_indices.cpu()] = everyone.cpu()

    def next_indices(self) -> torch.Tensor:
        """This rank's example indices for the next step; advances the position."""
        global_start = self.step_in_epoch * self.global_batch_size
        order = self._epoch_order()
        self._last_global_indices = order[global_start : global_start + self.global_batch_size]
        start = global_start + self.rank * self.batch_size
        indices = order[start : start + self.batch_size]
        self.step_in_epoch += 1
        if self.step_in_epoch == self.steps_per_epoch:
            self.epoch += 1
            self.step_in_epoch = 0
            self._order = None
        return indices

    @property
    def batches_drawn(self) -> int:
        """Global batches drawn so far: the position in the stream."""
        return self.epoch * self.steps_per_epoch + self.step_in_epoch

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (transformed images, labels int64 [batch_size]), both on the device."""
        self.generator.manual_seed(derive_seed(self.seed, "augment", self.batches_drawn))
        position_epoch = self.epoch
        indices = self.next_indices()
        raw = self.images.index_select(0, indices)  # index_select: 10x faster than x[idx] on CPU
        position = BatchPosition(
            position_epoch, self.rank * self.batch_size, self.global_batch_size, indices
        )
        return self.transform(raw, self.generator, position), self.labels.index_select(0, indices)

    def raw_batch(self, count: int) -> torch.Tensor:
        """The first `count` images of the current epoch's order, untransformed (for summaries)."""
        return self.images.index_select(0, self._epoch_order()[:count])

    def state_dict(self) -> dict:
        state = {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
        }
        if self.hard_examples is not None:
            # The table, and the epoch's order drawn from it at the epoch's start (the table
            # has changed since): a resumed run draws what the uninterrupted one drew.
            state["example_losses"] = self.example_losses.clone()
            state["order"] = None if self._order is None else self._order.cpu().clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        if state["global_batch_size"] != self.global_batch_size or state["seed"] != self.seed:
            raise ValueError(
                "data position was saved with global batch "
                f"{state['global_batch_size']} and seed {state['seed']}, not "
                f"{self.global_batch_size} and {self.seed}"
            )
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self._order = None
        if self.hard_examples is not None:
            losses, order = state.get("example_losses"), state.get("order")
            if not isinstance(losses, torch.Tensor):
                raise SelectionStateError("it was saved without hard-example selection")
            if losses.shape != self.example_losses.shape:
                raise SelectionStateError(f"its {tuple(losses.shape)} per-example losses are "
                                          f"not this training set's {self.example_losses.numel()}")  # fmt: skip
            if bool(torch.isnan(losses).any()) or bool((losses == float("-inf")).any()):
                raise SelectionStateError("its per-example losses hold NaN or -inf")
            n = self.example_losses.numel()
            if order is not None and (not isinstance(order, torch.Tensor) or order.dim() != 1
                                      or (order.numel() and not 0 <= int(order.min()) <= int(order.max()) < n)):  # fmt: skip
                raise SelectionStateError(
                    "its epoch order is not a list of this training set's examples"
                )
            self.example_losses = losses.clone().float()  # +inf: not seen yet
            if order is not None:
                self._order = order.to(self.device)


class SelectionStateError(ValueError):
    """A checkpoint's hard-example selection state that cannot be this run's."""


def eval_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    *,
    transform: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every example of the split exactly once, in order; the last batch may be partial.

    With several ranks, rank r takes the r-th contiguous shard (shard sizes differ by at
    most one), so the ranks together count each example once.
    """
    n = images.shape[0]
    begin, end = rank * n // world_size, (rank + 1) * n // world_size
    for start in range(begin, end, batch_size):
        stop = min(start + batch_size, end)
        raw = images[start:stop].to(device, non_blocking=True)
        yield transform(raw), labels[start:stop].to(device, non_blocking=True)
