"""Selection by a small proxy network: each step draws more candidates than it trains on,
and the main network trains on the ones a much smaller network, trained alongside, finds
hardest right now (airbench96_faster's idea; docs/fast.md "Selection by a proxy network").

Against the stale-loss selection (data/loader.py, `hard_keep`), the losses are fresh: every
candidate is scored in the step it is used, by a network cheap enough (blocks 32/64/64 at
the default `proxy_width`: about 3% of the main network's FLOPs per image at width 384)
that scoring twice the batch costs a few percent of a step. The proxy is `fast-sgd`'s
network and optimizer at a small width: Nesterov SGD with fast-sgd's rates and schedule over
the same steps, its whitening bias frozen from the start. Every `proxy_train_every` steps it
takes one training step on the examples it selected; in between it only scores.

The selection is made from the whole global batch of candidates on every rank (each rank
scores all of them: the proxy is small), so every rank holds the same chosen batch and
trains on its slice of it: N ranks choose exactly what one process chooses.
"""

from __future__ import annotations

import torch

from . import TrainingPlan


def hardest_in_order(losses: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` highest losses, in ascending index order (the candidates' own
    order, so the chosen batch keeps the loader's order). Ties go to the lower index."""
    ranked = losses.argsort(descending=True, stable=True)[:count]
    return ranked.sort().values


class ProxySelector:
    """The proxy network, its optimizer, and the choice of each step's batch."""

    def __init__(self, recipe, num_classes: int, train_images: torch.Tensor | None,
                 batch: int, train_every: int, device: torch.device) -> None:  # fmt: skip
        """`recipe`: a fast-sgd recipe at the proxy's width (recipes/fast.py builds it);
        `batch`: the global batch the main network trains on, chosen from the candidates."""
        self.recipe, self.batch, self.train_every = recipe, batch, train_every
        self.model = recipe.build_model(num_classes, train_images).to(device)
        self.model.train()  # always: it scores with batch statistics, as it trains
        self.optimizer = recipe.build_optimizer(self.model)

    def trains_at(self, step: int) -> bool:
        return step % self.train_every == 0

    @torch.no_grad()
    def losses(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-example losses [C] of the candidates under the proxy as it is now."""
        return self.recipe.example_losses(self.model(images).float(), labels)

    def train_on(self, images: torch.Tensor, labels: torch.Tensor, step: int,
                 plan: TrainingPlan) -> None:  # fmt: skip
        """One step of the proxy's own training on these examples, at its rate for `step`."""
        for group, rate in zip(self.optimizer.param_groups,
                               self.recipe.learning_rates(step, plan), strict=True):  # fmt: skip
            group["lr"] = rate
        self.recipe.prepare_step(self.model, step, plan)
        loss, _ = self.recipe.loss(self.model, self.model(images).float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def select(self, step: int, images: torch.Tensor, labels: torch.Tensor,
               plan: TrainingPlan) -> torch.Tensor:  # fmt: skip
        """Indices [batch] into the global batch of candidates, in their order: the hardest
        for the proxy before this step; on its training steps it then learns from them."""
        chosen = hardest_in_order(self.losses(images, labels), self.batch)
        if self.trains_at(step):
            self.train_on(images[chosen], labels[chosen], step, plan)
        return chosen

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


def proxy_params(params_class, width: int):
    """fast-sgd's settings (`params_class`'s declared defaults: its optimizer, rates and
    schedule) at the proxy's width, its whitening bias never trained. It runs inside the
    main network's arithmetic (the trainer's autocast), so its own precision is not used."""
    return params_class(width=width, block1_width=max(1, width // 2), whiten_bias_epochs=0.0)


def shard(chosen: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's slice of the chosen global batch (equal slices: the batch divides)."""
    return chosen.tensor_split(world_size)[rank]
