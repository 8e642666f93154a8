"""Recipes: what differs between ways of training, one module each; the trainer, eval,
predict, export and report serve every recipe unchanged.

A recipe module defines a frozen `Params` dataclass (each field declared with `setting`:
default, unit, why) and a `Recipe` subclass registered by name. It provides:

  build_model(num_classes, train_images)     the network (train_images: uint8 [N, 32, 32, 3]
                                             for a data-dependent initialisation, else None)
  train_transform(images, generator, position)   uint8 NHWC batch -> model input
  eval_preprocess()                          nn.Module, uint8 NHWC -> model input; shared by
                                             eval, predict and export (so it must export)
  tta_logits(model, x)                       logits averaged over the recipe's views
  loss(model, logits, labels)                -> (total, {term name: value}) for the summaries
  build_optimizer(model), learning_rates(step, plan)   one rate per parameter group, pure
  prepare_step(model, step, plan)            per-step switches of the model (a function of
                                             the step, so resume is exact); returns a key
                                             naming the kind of step, for FLOP counting
  weight_average(model, plan)                see cifarlab.averaging, or None (plan: None
                                             when a trained run is only being read)
  compute_dtype(device)                      autocast dtype, or None for float32
  prepare_device(device)                     one-off work before the model first runs on
                                             device (building kernels, timing routes)
  arithmetic(device)                         in words: the dtype and the routes chosen
  activation_points(model)                   {summary tag: module whose output is that
                                             layer's activation}, for TensorBoard

and data: `run_defaults` (run fields this recipe wants by default, such as its batch size),
`run_length_resumable` (may a continued run change max_steps?), `final_eval_tta`,
`budget_frontier` (its measured accuracy at several sizes and lengths, from which --budget
picks the size too; cifarlab/frontier.py), or None.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..data.loader import HardExamples
from ..frontier import Frontier


@dataclass(frozen=True)
class TrainingPlan:
    """Facts about the run that schedules are functions of, besides the step."""

    max_steps: int
    steps_per_epoch: int  # of the examples drawn (candidates, where the recipe selects)
    global_batch_size: int  # the examples the network trains on in a step, over all ranks
    train_examples: int

    @classmethod
    def for_run(cls, config, train_examples: int, world_size: int = 1) -> TrainingPlan:
        """The plan the trainer makes for `config` (a TrainConfig) on this many examples:
        each epoch's last partial draw dropped, as data/loader.py drops it."""
        batch = config.global_batch_size(world_size)
        drawn = config.recipe.candidate_batch(batch)  # an epoch counts the examples drawn
        return cls(config.run.max_steps, train_examples // drawn, batch, train_examples)


class Recipe:
    name: ClassVar[str]
    Params: ClassVar[type]
    run_defaults: ClassVar[dict[str, Any]] = {}
    run_length_resumable: ClassVar[bool] = True  # False when schedules span the whole run
    final_eval_tta: ClassVar[bool] = False  # the end-of-run evaluation uses tta_logits
    budget_frontier: ClassVar[Frontier | None] = None  # None: --budget picks the steps only

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()

    def build_model(self, num_classes: int, train_images: torch.Tensor | None) -> nn.Module:
        raise NotImplementedError

    def train_transform(self, images, generator, position) -> torch.Tensor:
        raise NotImplementedError

    def eval_preprocess(self) -> nn.Module:
        raise NotImplementedError

    def tta_logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x)

    def loss(self, model, logits, labels) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        raise NotImplementedError

    def learning_rates(self, step: int, plan: TrainingPlan) -> list[float]:
        raise NotImplementedError

    def prepare_step(self, model: nn.Module, step: int, plan: TrainingPlan) -> Hashable:
        """Called before each training step's forward pass, with the unwrapped model: set any
        switches that depend on the step (never on history, so a resumed run sets the same).
        Returns a key for the kind of step: steps of one kind, on images of one shape, cost
        the same FLOPs (cifarlab/flops.py counts one of each)."""
        return None

    def weight_average(self, model: nn.Module, plan: TrainingPlan | None):
        return None

    def hard_examples(self) -> HardExamples | None:
        """Hard-example selection for the later epochs (data/loader.py), or None: every
        epoch a permutation of the whole training set."""
        return None

    def candidate_batch(self, global_batch: int) -> int:
        """Examples drawn for each step whose global batch is `global_batch`: more than that
        when the recipe's example_selector chooses the batch from them, else the same."""
        return global_batch

    def example_selector(self, num_classes: int, train_images: torch.Tensor | None,
                         global_batch: int, device: torch.device):  # fmt: skip
        """What chooses each step's `global_batch` examples from candidate_batch() candidates
        (the interface: recipes/proxy.py's ProxySelector), or None: the batch is the draw."""
        return None

    def example_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-example losses [B] that hard-example selection ranks examples by."""
        return F.cross_entropy(logits, labels, reduction="none")

    def compute_dtype(self, device: torch.device) -> torch.dtype | None:
        return None

    def arithmetic(self, device: torch.device) -> str:
        """How the network is computed on `device`, in words, once prepare_device has chosen
        the routes: "float32", "bfloat16", and any faster route taken for the same function.
        Each result records it (result.json, history)."""
        dtype = self.compute_dtype(device)
        return "float32" if dtype is None else str(dtype).removeprefix("torch.")

    def prepare_device(self, device: torch.device) -> None:
        """One-off work this process needs done before the model runs on `device` (compiling
        native kernels, timing which route is faster here). Commands call it before any
        clock starts, so no step and no measured figure includes it."""

    def activation_points(self, model: nn.Module) -> dict[str, nn.Module]:
        """Modules whose outputs are the network's layer activations, by summary tag: the
        trainer records their histograms and sparsity on summary steps. By default the
        model's own `activation_points()`, if it has one."""
        points = getattr(model, "activation_points", None)
        return points() if callable(points) else {}

    def for_flop_count(self) -> Recipe:
        """The recipe whose operations torch's FLOP counter sees (cifarlab/flops.py): this
        one, unless a fast path computes the same function with kernels the counter cannot
        see (a Fourier-transform convolution, native code); then its plain reference."""
        return self

    def autocast(self, device: torch.device):
        """The context the forward pass runs in: autocast to compute_dtype, or nothing."""
        dtype = self.compute_dtype(device)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)


_REGISTRY: dict[str, type[Recipe]] = {}


def register(cls: type[Recipe]) -> type[Recipe]:
    """Class decorator: make a recipe available by its `name` (--recipe NAME) in this
    process. Recipes in files or other packages need not register: see recipes/loading.py."""
    _REGISTRY[cls.name] = cls
    return cls


def recipe_names() -> list[str]:
    """The registered names: built in, and any an installed package adds (entry points)."""
    from importlib.metadata import entry_points

    from .loading import ENTRY_POINT_GROUP

    _load_builtin()
    return sorted({*_REGISTRY, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})


def load_recipe(spec: str):
    """(recipe class, RecipeSource) for a --recipe value: a name, a file or module:NAME."""
    from .loading import resolve

    _load_builtin()
    return resolve(spec, _REGISTRY, _BUILTIN)


def get_recipe(spec: str, params: Any = None) -> Recipe:
    """The recipe `spec` names, with `params` (None: its defaults)."""
    cls, _ = load_recipe(spec)
    return cls(params)


_BUILTIN: set[str] = set()


def _load_builtin() -> None:
    if not _BUILTIN:
        from . import fast, tutorial  # noqa: F401  (each registers itself)

        _BUILTIN.update(n for n, c in _REGISTRY.items() if c.__module__.startswith(__name__ + "."))
