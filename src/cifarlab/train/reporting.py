"""What the trainer reports, and when: the tutorial's console line every `log_every`
steps, scalars every `summary_every` steps and at the end, and on summary steps the
per-layer histograms. Rank 0 writes; other ranks get a silent log."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch

from ..tracking import RunLog, SilentLog

HISTOGRAM_IMAGES = 256  # images of a batch whose activations a histogram shows


class Reporter:
    def __init__(
        self, run, run_dir: Path, state, *, is_main: bool, progress: bool | None,
        activation_points: dict | None = None,
    ) -> None:  # fmt: skip
        self.run = run  # RunConfig: the intervals
        self.batches = state.batches
        self.model = state.model
        self.activation_points = activation_points or {}  # the recipe's: {tag: module}
        self.log = (
            RunLog(run_dir, total_steps=run.max_steps, start_step=state.step, progress=progress)
            if is_main
            else SilentLog()
        )
        self.is_main = is_main
        self.activations: dict[str, torch.Tensor] = {}
        self.interval_start, self.interval_steps = time.perf_counter(), 0
        self.examples_per_sec = float("nan")  # until the first console interval ends

    def console(self, line: str) -> None:
        self.log.console(line)

    def scalars(self, step: int, values: dict[str, float], *, kind: str = "train") -> None:
        self.log.scalars(step, values, kind=kind)

    def close(self) -> None:
        self.log.close()

    def describe_new_run(self, config, preprocess: torch.nn.Module) -> None:
        """The configuration as text and the network's graph, once, at the start of a run."""
        self.log.text("config", "\n".join(f"    {k} = {v!r}" for k, v in config.flat().items()))
        if self.is_main:
            with torch.no_grad():
                example = preprocess(self.batches.raw_batch(2))
            self.log.graph(self.model, example)

    def _summary_step(self, step: int) -> bool:
        return step % self.run.summary_every == 0

    @contextlib.contextmanager
    def watching_activations(self, step: int):
        """On summary steps, keep each layer's output (the recipe's `activation_points`)."""
        points = self.activation_points
        hooks = []
        if self.is_main and self._summary_step(step):
            hooks = [module.register_forward_hook(
                         lambda m, i, o, tag=tag: self.activations.__setitem__(tag, o.detach()))
                     for tag, module in points.items()]  # fmt: skip
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    def after_step(self, state, result, averages: dict[str, float]) -> None:
        step, last = state.step, state.step == self.run.max_steps
        self.log.advance()
        self.interval_steps += 1
        if not self.is_main:
            return
        if step % self.run.log_every == 0 or last:
            elapsed = time.perf_counter() - self.interval_start
            trained = self.interval_steps * state.plan.global_batch_size  # not the candidates
            self.examples_per_sec = trained / elapsed
            self.log.console(f"{time.strftime('%Y-%m-%d %H:%M:%S')}: step {step}, loss = {result.loss.item():.2f} "
                             f"({self.examples_per_sec:.1f} examples/sec; {elapsed / self.interval_steps:.3f} sec/batch)")  # fmt: skip
            self.interval_start, self.interval_steps = time.perf_counter(), 0
        if self._summary_step(step) or last:
            scalars = {"learning_rate": result.learning_rates[0],
                       "examples_per_sec": self.examples_per_sec,
                       "epoch": step / self.batches.steps_per_epoch}  # fmt: skip
            raw = {"total_loss": result.loss, **result.terms}
            scalars.update({f"loss/{k} (raw)": float(v.detach()) for k, v in raw.items()})
            scalars.update({f"loss/{k}": float(v) for k, v in averages.items()})
            self.log.scalars(step, scalars)
            if self._summary_step(step):
                self._histograms(step, result.images)
            self.activations.clear()

    def _histograms(self, step: int, images: torch.Tensor) -> None:
        """The tutorial's histograms: activations and sparsity per layer, weights, gradients."""
        for tag, value in self.activations.items():
            # A distribution needs no more than a sample: the histogram of the batch's first
            # HISTOGRAM_IMAGES images (TensorBoard bins on one core: the whole of a batch of
            # 2,000 took 0.4 s a summary step, 5 s of a 6-minute run); the sparsity, cheap,
            # of all of it.
            self.log.histogram(f"{tag}/activations", value[:HISTOGRAM_IMAGES], step)
            zeros = 1 - torch.count_nonzero(value).item() / max(value.numel(), 1)
            self.log.scalars(step, {f"{tag}/sparsity": zeros}, kind="sparsity")
        for name, param in self.model.named_parameters():
            self.log.histogram(f"weights/{name}", param, step)
            if param.grad is not None:
                self.log.histogram(f"gradients/{name}", param.grad, step)
        self.log.images("distorted_inputs", images[:3], step)
