"""`cifarlab report RUN_DIR`: plots of a run's metrics.jsonl and a short Markdown summary."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import torch

from .errors import CifarlabError, ConfigError
from .run.config_file import load_config
from .run.trained import warn_if_recipe_changed


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise CifarlabError(
            f"{run_dir}: no metrics.jsonl: not a cifarlab run, or not yet summarised"
        )
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash: the rest is still worth plotting
    return records


def _series(records: list[dict], kind: str, key: str) -> tuple[list[int], list[float]]:
    points = sorted(
        {
            r["step"]: r[key]
            for r in records
            if r.get("kind") == kind and isinstance(r.get(key), (int, float))
        }.items()
    )
    return [p[0] for p in points], [p[1] for p in points]


def _saved_fields(run_dir: Path) -> dict:
    """The run's configuration for the report's table. The report reads only what the run
    wrote, so a recipe file changed or gone since is said on stderr, not fatal."""
    try:
        config = load_config(run_dir)
    except ConfigError as e:
        try:
            saved = json.loads((Path(run_dir) / "config.json").read_text())
            fields = {"recipe": saved["recipe"], **saved["run"], **saved["params"]}
        except (OSError, ValueError, KeyError, TypeError):
            return {}
        print(f"warning: {e}", file=sys.stderr)
        return fields
    warn_if_recipe_changed(config, run_dir)
    return config.flat()


def _plain_y_axis(ax) -> None:
    """Values as they are (no offset such as "+1e-1" above the axis), and a constant series
    drawn against a range from zero rather than zoomed until rounding noise fills the plot."""
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    low, high = ax.get_ylim()
    values = [v for line in ax.get_lines() for v in line.get_ydata()]
    if values and max(values) - min(values) <= 1e-9 * max(abs(v) for v in values):
        top = max(values)
        ax.set_ylim(0, top * 1.2) if top > 0 else ax.set_ylim(low, high)


def _shown(field: str, value) -> str:
    if field == "data_dir" and value is None:  # the default root, resolved when the run ran
        return "default: $CIFARLAB_DATA, else ~/.cache/cifarlab"
    return repr(value)


def write_report(run_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    out_dir = run_dir / "report"
    out_dir.mkdir(exist_ok=True)
    # Every averaged loss term the recipe reported (total first), whatever their names.
    loss_keys = sorted({k for r in records if r.get("kind") == "train" for k in r
                        if k.startswith("loss/") and not k.endswith("(raw)")},
                       key=lambda k: (k != "loss/total_loss", k))[:6]  # fmt: skip
    panels = [  # title, y-axis label, file, series
        ("training loss", "loss", "loss.png",
         [("train", k, f"{k[5:]} (moving average)") for k in loss_keys]),
        ("learning rate", "learning rate", "learning_rate.png",
         [("train", "learning_rate", "learning rate")]),
        ("training speed", "examples / s", "examples_per_sec.png",
         [("train", "examples_per_sec", "examples/s")]),
        ("eval precision @ 1", "precision @ 1", "eval_precision.png",
         [("eval", "eval/precision_at_1", "test, averaged weights")]),
    ]  # fmt: skip
    written = []
    for title, ylabel, filename, lines in panels:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        drawn = False
        for kind, key, label in lines:
            steps, values = _series(records, kind, key)
            if steps:
                ax.plot(steps, values, marker="o" if len(steps) < 30 else None, label=label)
                drawn = True
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        _plain_y_axis(ax)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / filename
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    config = _saved_fields(run_dir)
    steps, precision = _series(records, "eval", "eval/precision_at_1")
    times = [r["time"] for r in records if r.get("kind") == "train" and "time" in r]
    _, speed = _series(records, "train", "examples_per_sec")
    lines = [f"# Run report: {run_dir}", ""]
    if precision:
        lines.append(
            f"**Final precision @ 1: {precision[-1]:.4f}** at step {steps[-1]:,} (test set, averaged weights)."
        )
    else:
        lines.append("No evaluation recorded yet.")
    if len(times) > 1:
        lines.append(
            f"Training time between the first and last summary: {(times[-1] - times[0]) / 60:.1f} min."
        )
    if speed:
        finite = sorted(v for v in speed if v == v)
        if finite:
            lines.append(f"Median speed: {finite[len(finite) // 2]:,.0f} examples/s.")
    lines += ["", f"Report written on {platform.node()}: {platform.platform()}, {platform.processor() or platform.machine()}, "
              f"torch {torch.__version__}.", ""]  # fmt: skip
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in written] + [""]
    if steps:
        lines += ["## Evaluations", "", "| step | precision @ 1 |", "|---:|---:|"]
        lines += [f"| {s:,} | {v:.4f} |" for s, v in zip(steps, precision, strict=True)] + [""]
    lines += ["## Configuration", "", "| field | value |", "|---|---|"] + [
        f"| {k} | {_shown(k, v)} |" for k, v in config.items()
    ]
    summary = out_dir / "report.md"
    summary.write_text("\n".join(lines) + "\n")
    return summary
