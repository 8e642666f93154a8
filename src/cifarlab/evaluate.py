"""Evaluation: precision @ k, loss, per-class accuracy and confusion matrix of a model on a
split, each example counted exactly once (the original counted 112 test images twice)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data.augment import inputs
from .data.loader import eval_batches


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
    tta: bool = False,
) -> torch.Tensor:
    """uint8 [N, 32, 32, 3] -> float32 logits [N, classes] on the CPU, in order.

    With `tta`, the logits of each image and its mirror are averaged."""
    was_training = model.training
    model.eval()
    out = []
    dummy = torch.zeros(images.shape[0], dtype=torch.long)
    for x, _ in eval_batches(images, dummy, batch_size, transform=inputs, device=device):
        logits = model(x)
        if tta:
            logits = (logits + model(x.flip(3))) / 2
        out.append(logits.float().cpu())
    model.train(was_training)
    return torch.cat(out)


def metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """Every figure the evaluation reports, from logits [N, K] and labels [N]."""
    n = labels.numel()
    loss = F.cross_entropy(logits, labels, reduction="sum").item() / n
    top = logits.topk(min(5, num_classes), dim=1).indices  # [N, k]
    hit1 = top[:, 0] == labels
    hit5 = (top == labels[:, None]).any(dim=1)
    confusion = torch.bincount(labels * num_classes + top[:, 0], minlength=num_classes**2).view(
        num_classes, num_classes
    )
    per_class_total = confusion.sum(dim=1)
    per_class = (confusion.diagonal().double() / per_class_total.clamp_min(1)).tolist()
    return {
        "precision_at_1": hit1.double().mean().item(),
        "precision_at_5": hit5.double().mean().item(),
        "loss": loss,
        "examples": n,
        "correct": int(hit1.sum()),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),  # rows: true class, columns: predicted
    }


def evaluate_model(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    batch_size: int = 1000,
    device: torch.device | str = "cpu",
    tta: bool = False,
) -> dict:
    logits = predict_logits(
        model, images, batch_size=batch_size, device=torch.device(device), tta=tta
    )
    return metrics_from_logits(logits, labels.cpu(), num_classes)


def load_averaged_model(
    run_dir: Path,
    checkpoint: Path | None = None,
    *,
    weights: str = "ema",
    device: str | torch.device = "cpu",
):
    """-> (model with the checkpoint's averaged (or raw) weights, config, checkpoint state)."""
    from .config import load_config
    from .data.layout import dataset_info
    from .errors import CifarlabError
    from .models import build_model
    from .train.checkpoint import latest_checkpoint, load_checkpoint

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise CifarlabError(f"{run_dir}: not a cifarlab run directory (no config.json)")
    config = load_config(config_path)
    checkpoint = checkpoint or latest_checkpoint(run_dir)
    if checkpoint is None:
        raise CifarlabError(f"{run_dir}: no checkpoint yet")
    state = load_checkpoint(checkpoint)
    model = build_model(config.model, dataset_info(config.dataset).num_classes)
    model.load_state_dict(state["ema" if weights == "ema" else "model"])
    return model.to(device), config, state
