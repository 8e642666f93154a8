"""Evaluation: precision @ k, loss, per-class accuracy and confusion matrix of a model on a
split, each example counted exactly once (the original counted 112 test images twice)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data.loader import eval_batches
from .recipes import Recipe


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    recipe: Recipe,
    images: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
    tta: bool = False,
    in_float32: bool = False,
) -> torch.Tensor:
    """uint8 [N, 32, 32, 3] -> float32 logits [N, classes] on the CPU, in order: the
    recipe's evaluation preprocessing, then the model (or the recipe's TTA views of it), in
    the recipe's arithmetic (bfloat16 autocast, say) unless `in_float32`."""
    was_training = model.training
    model.eval()
    preprocess = recipe.eval_preprocess().to(device)
    out = []
    dummy = torch.zeros(images.shape[0], dtype=torch.long)
    for x, _ in eval_batches(images, dummy, batch_size, transform=preprocess, device=device):
        with contextlib.nullcontext() if in_float32 else recipe.autocast(device):
            logits = recipe.tta_logits(model, x) if tta else model(x)
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
    per_class = (confusion.diagonal().double() / per_class_total.clamp_min(1)).tolist()  # [K]
    return {
        "precision_at_1": hit1.double().mean().item(),
        "precision_at_5": hit5.double().mean().item(),
        "loss": loss,
        "examples": n,
        "correct": int(hit1.sum()),
        "per_class": per_class,
        "per_class_examples": per_class_total.tolist(),
        "confusion_matrix": confusion.tolist(),  # rows: true class, columns: predicted
    }


def evaluate_model(
    model: nn.Module,
    recipe: Recipe,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    tta: bool = False,
) -> dict:
    logits = predict_logits(
        model, recipe, images, batch_size=batch_size, device=torch.device(device), tta=tta
    )
    return metrics_from_logits(logits, labels.cpu(), num_classes)


# ---------------------------------------------------------------------------------------------
# Reporting and saving results


def results_name(step: int, split: str, weights: str, tta: bool) -> str:
    """File stem for one evaluation: step-00001000, plus what differs from the default."""
    extras = [
        x
        for x, on in ((split, split != "test"), (weights, weights != "averaged"), ("tta", tta))
        if on
    ]
    return "-".join([f"step-{step:08d}", *extras])


def format_results(result: dict, class_names: tuple[str, ...]) -> str:
    """A readable table: per-class accuracy, then the confusion matrix (10 classes or fewer;
    for CIFAR-100 the matrix is saved, not printed)."""
    lines = [
        f"precision @ 1 = {result['precision_at_1']:.4f} ({result['correct']:,} / {result['examples']:,}), "
        f"precision @ 5 = {result['precision_at_5']:.4f}, loss = {result['loss']:.4f}",
        "",
        "per-class accuracy:",
    ]
    for name, acc, total in zip(
        class_names, result["per_class"], result["per_class_examples"], strict=True
    ):
        lines.append(f"  {name:<16} {acc:7.2%}  ({total:,} images)")
    if len(class_names) <= 10:
        short = [n[:5] for n in class_names]
        lines += [
            "",
            "confusion matrix (rows: true class, columns: predicted):",
            " " * 12 + "".join(f"{n:>7}" for n in short),
        ]
        for name, row in zip(class_names, result["confusion_matrix"], strict=True):
            lines.append(f"  {name[:10]:<10}" + "".join(f"{v:7d}" for v in row))
    return "\n".join(lines)


def save_confusion_png(
    confusion: list[list[int]], class_names: tuple[str, ...], path: Path, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = torch.tensor(confusion, dtype=torch.float64)
    rates = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)  # each row sums to 1
    k = len(class_names)
    size = 6 if k <= 10 else 16
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(
        range(k),
        class_names,
        rotation=90 if k > 10 else 45,
        ha="right" if k <= 10 else "center",
        fontsize=8 if k <= 10 else 5,
    )
    ax.set_yticks(range(k), class_names, fontsize=8 if k <= 10 else 5)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if k <= 10:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    int(counts[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black",
                )
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_results(
    run_dir: Path,
    result: dict,
    class_names: tuple[str, ...],
    *,
    split: str,
    weights: str,
    tta: bool,
) -> Path:
    """Write the results JSON and the confusion PNG under run_dir/eval/, the scalars to
    TensorBoard (run_dir/eval, at the checkpoint's step) and to metrics.jsonl."""
    import json

    from .files import atomic_write
    from .tracking import summary_writer

    out_dir = Path(run_dir) / "eval"
    out_dir.mkdir(exist_ok=True)
    stem = results_name(result["step"], split, weights, tta)
    json_path = out_dir / f"{stem}.json"
    record = {
        **result,
        "split": split,
        "weights": weights,
        "tta": tta,
        "class_names": list(class_names),
    }
    atomic_write(json_path, json.dumps(record, indent=1))
    save_confusion_png(result["confusion_matrix"], class_names, out_dir / f"{stem}-confusion.png",
                       f"step {result['step']}: precision @ 1 = {result['precision_at_1']:.4f}")  # fmt: skip
    group = "eval" + "".join(f"_{x}" for x in stem.split("-")[2:])
    scalars = {
        f"{group}/precision_at_1": result["precision_at_1"],
        f"{group}/precision_at_5": result["precision_at_5"],
        f"{group}/loss": result["loss"],
    }
    with summary_writer(out_dir) as writer:
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, result["step"])
    with open(
        Path(run_dir) / "metrics.jsonl", "a"
    ) as f:  # one short append: atomic beside the trainer's
        f.write(json.dumps({"step": result["step"], "kind": "eval", **scalars}) + "\n")
    return json_path


def evaluate_run(run_dir: Path, checkpoint: Path | None = None, *, weights: str = "averaged", split: str = "test",
                 tta: bool = False, batch_size: int = 128, device: torch.device | str = "cpu",
                 data_dir: str | None = None) -> tuple[dict, tuple[str, ...]]:  # fmt: skip
    """Evaluate one checkpoint of a run on its data set as saved in its configuration."""
    from .data.datasets import load_run_split
    from .run.trained import open_run

    trained = open_run(run_dir, checkpoint, weights=weights, device=device)
    images, labels = load_run_split(trained.config.run, Path(run_dir), split, data_dir=data_dir)
    started = time.perf_counter()
    result = evaluate_model(trained.model, trained.recipe, images, labels,
                            num_classes=trained.dataset.num_classes, batch_size=batch_size,
                            device=device, tta=tta)  # fmt: skip
    result["seconds"] = time.perf_counter() - started  # the forward passes and metrics only
    result["step"] = trained.step
    return result, trained.dataset.class_names
