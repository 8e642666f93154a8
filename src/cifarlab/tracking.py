"""What a run reports: console lines (and a progress bar on a terminal), TensorBoard event
files, and metrics.jsonl. Only rank 0 creates a real one; other ranks get a silent one."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch


def summary_writer(log_dir: Path):
    """torch's TensorBoard SummaryWriter, kept from importing TensorFlow. TensorBoard uses
    TensorFlow when it is installed (e.g. by the tf-bench extra): seconds of start-up, a GB
    of memory and log lines on stderr, for event files its own stub writes identically.
    TensorBoard's documented switch is the presence of `tensorboard.compat.notf`."""
    import types

    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir))


class RunLog:
    def __init__(
        self, run_dir: Path, *, total_steps: int, start_step: int, progress: bool | None = None
    ) -> None:
        self.run_dir = Path(run_dir)
        self.writer = summary_writer(self.run_dir)
        self.metrics = open(self.run_dir / "metrics.jsonl", "a", buffering=1)  # line-buffered
        show_bar = sys.stderr.isatty() if progress is None else progress
        self.bar = None
        if show_bar:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_steps,
                initial=start_step,
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
            )

    def console(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def scalars(self, step: int, values: dict[str, float], *, kind: str = "train") -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        record = {"step": step, "kind": kind, "time": time.time()}
        record.update({k: (v if math.isfinite(v) else str(v)) for k, v in values.items()})
        self.metrics.write(json.dumps(record) + "\n")

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        values = values.detach().float().cpu()
        if values.numel() and torch.isfinite(values).all():
            self.writer.add_histogram(tag, values, step)

    def images(self, tag: str, images: torch.Tensor, step: int) -> None:
        """float [N, C, H, W] of any range -> each image min-max scaled to [0, 1]."""
        x = images.detach().float().cpu()
        low = x.amin(dim=(1, 2, 3), keepdim=True)
        high = x.amax(dim=(1, 2, 3), keepdim=True)
        self.writer.add_images(tag, (x - low) / (high - low).clamp_min(1e-12), step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self.writer.add_text(tag, text, step)

    def graph(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        """The network's graph (TensorBoard's Graphs tab), traced once on an example batch."""
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracing warnings about Python-side shape maths
            try:
                self.writer.add_graph(model, example)
            except Exception as e:  # a graph is a nicety: never let it stop training
                self.console(f"(no graph summary: {type(e).__name__}: {e})")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.writer.close()
        self.metrics.close()


class SilentLog(RunLog):
    """For ranks other than 0: accepts every call, writes nothing."""

    def __init__(self) -> None:  # deliberately opens no files
        self.bar = None

    def console(self, line: str) -> None: ...
    def advance(self, steps: int = 1) -> None: ...
    def scalars(self, step, values, *, kind="train") -> None: ...
    def histogram(self, tag, values, step) -> None: ...
    def images(self, tag, images, step) -> None: ...
    def text(self, tag, text, step=0) -> None: ...
    def graph(self, model, example) -> None: ...
    def close(self) -> None: ...
