"""The tutorial's loss: mean cross-entropy plus L2 weight decay on the layers that ask for it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def weight_decay_terms(model: nn.Module) -> dict[str, torch.Tensor]:
    """{parameter name: wd * sum(W^2) / 2} for every entry of the model's `weight_decay`."""
    decay = getattr(model, "weight_decay", {})
    params = dict(model.named_parameters())
    return {name: coeff * params[name].pow(2).sum() / 2 for name, coeff in decay.items()}


def tutorial_loss(
    model: nn.Module, logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """-> (total, terms): terms are 'cross_entropy' and one 'weight_loss/<param>' per decayed
    parameter, each a 0-d tensor, reported separately in the summaries."""
    terms = {"cross_entropy": F.cross_entropy(logits, labels)}
    for name, value in weight_decay_terms(model).items():
        terms[f"weight_loss/{name}"] = value
    total = torch.stack(list(terms.values())).sum()
    return total, terms
