"""train(config): the step loop. It knows the recipe's parts by name (model, transform,
loss, schedule), never a particular network.

One step: learning rate for this step -> batch -> forward -> loss (+ weight decay) ->
backward (gradients averaged over ranks by DDP) -> SGD update -> moving average of the
weights. Around it: a console line every `log_every` steps, summaries every
`summary_every`, a checkpoint every `checkpoint_every` and at the end, a stop request
honoured at a step boundary, divergence caught. Only rank 0 logs and saves.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ..config import TrainConfig, save_config
from ..data.augment import distorted_inputs, inputs
from ..data.datasets import data_root_for, load_run_split
from ..data.layout import dataset_info
from ..data.loader import TrainBatches
from ..errors import CifarlabError, ConfigError
from ..evaluate import evaluate_model
from ..models import build_model
from ..tracking import RunLog, SilentLog
from . import distributed
from .checkpoint import (
    remove_stale_temporaries,
    save_checkpoint,
)
from .ema import ScalarAverage, WeightAverage
from .losses import tutorial_loss
from .optim import make_optimizer, staircase_decay_steps, staircase_learning_rate
from .resume import agree_on_run
from .runtime import Placement, StopRequests
from .status import write_status

TRANSFORMS = {"tutorial": distorted_inputs}


class Diverged(CifarlabError):
    pass


class Interrupted(CifarlabError):
    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


@dataclass
class TrainResult:
    step: int
    run_dir: Path
    eval: dict | None
    resumed_from: int | None


def _activation_hooks(model: torch.nn.Module, store: dict):
    points = getattr(model, "activation_points", lambda: {})()
    return [
        module.register_forward_hook(lambda m, i, o, tag=tag: store.__setitem__(tag, o.detach()))
        for tag, module in points.items()
    ]


def _write_summaries(
    log: RunLog, step: int, model: torch.nn.Module, activations: dict, images: torch.Tensor
) -> None:
    """The tutorial's histograms: per layer activations and sparsity, weights, gradients, inputs."""
    for tag, value in activations.items():
        log.histogram(f"{tag}/activations", value, step)
        log.scalars(step, {f"{tag}/sparsity": (value == 0).float().mean().item()}, kind="sparsity")
    for name, param in model.named_parameters():
        log.histogram(f"weights/{name}", param, step)
        if param.grad is not None:
            log.histogram(f"gradients/{name}", param.grad, step)
    log.images("distorted_inputs", images[:3], step)


def train(
    config: TrainConfig,
    asked: dict | None = None,
    placement: Placement | None = None,
    progress: bool | None = None,
) -> TrainResult:
    """Run (or continue) training as configured. `asked`: the fields the user set explicitly."""
    placement = placement or distributed.setup(config.device)
    try:
        return _train(config, asked if asked is not None else config.to_dict(), placement, progress)
    finally:
        distributed.teardown()


def _train(
    config: TrainConfig, asked: dict, placement: Placement, progress: bool | None
) -> TrainResult:
    config, state, checkpoint_name = agree_on_run(config, asked, placement)
    device, is_main = placement.device, placement.is_main
    if config.threads:
        torch.set_num_threads(config.threads)
    run_dir = config.resolved_run_dir
    info = dataset_info(config.dataset)
    per_rank_batch = distributed.per_rank_batch_size(config, placement.world_size)

    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)
        save_config(config, run_dir / "config.json")
    # One process per node fetches (downloads, or makes the synthetic set); the rest wait.
    if placement.local_rank == 0:
        data_root_for(config, run_dir, fetch=True)
    distributed.barrier(placement)
    train_images, train_labels = load_run_split(config, run_dir, "train")

    torch.manual_seed(config.seed)  # the initial weights, the same on every rank
    model = build_model(config.model, info.num_classes).to(device)
    optimizer = make_optimizer(model.parameters(), config.learning_rate, config.momentum)
    batches = TrainBatches(
        train_images, train_labels, per_rank_batch, transform=TRANSFORMS[config.augment],
        seed=config.seed, device=device, rank=placement.rank, world_size=placement.world_size,
    )  # fmt: skip
    ema = WeightAverage(model, config.ema_decay) if is_main else None
    loss_average = ScalarAverage(config.loss_average_decay)
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        try:
            batches.load_state_dict(state["data"])
        except ValueError as e:
            raise ConfigError(f"cannot continue {run_dir} with {placement.world_size} process(es): {e}; "
                              "use the same number of processes, or a fixed --global-batch-size") from None  # fmt: skip
        loss_average.load_state_dict(state["loss_average"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
    # DDP averages gradients over ranks during backward; on one process it is not needed.
    net = (
        model
        if placement.world_size == 1
        else DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    )
    decay_steps = staircase_decay_steps(
        train_images.shape[0], batches.global_batch_size, config.epochs_per_decay
    )

    def snapshot() -> dict:
        return {
            "step": step, "model": model.state_dict(), "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(), "data": batches.state_dict(),
            "loss_average": loss_average.state_dict(), "world_size": placement.world_size,
            "torch_rng": torch.get_rng_state(),  # unused by the tutorial recipe; kept for recipes that draw from it
            "config": config.to_dict(),
        }  # fmt: skip

    log = (
        RunLog(run_dir, total_steps=config.max_steps, start_step=step, progress=progress)
        if is_main
        else SilentLog()
    )
    if checkpoint_name is not None:
        log.console(f"resuming {run_dir} from {checkpoint_name} (step {step})")
    else:
        log.text("config", "\n".join(f"    {k} = {v!r}" for k, v in config.to_dict().items()))
        log.graph(model, inputs(batches.raw_batch(2)))
    log.console(f"training {config.model} on {info.title}{' (synthetic)' if config.synthetic else ''}: "
                f"{train_images.shape[0]:,} images, batch {batches.global_batch_size} "
                f"({placement.world_size} x {per_rank_batch}), {config.max_steps:,} steps, device {device}, "
                f"{torch.get_num_threads()} CPU threads, run dir {run_dir}")  # fmt: skip
    if is_main:
        write_status(run_dir, "running", step, config.max_steps)

    resumed_from = step if state is not None else None
    del state
    activations: dict[str, torch.Tensor] = {}
    interval_start, interval_steps = time.perf_counter(), 0
    examples_per_sec = float("nan")  # until the first console interval ends
    started = time.perf_counter()
    outcome = "failed"
    net.train()
    try:
        with StopRequests() as stop:
            while step < config.max_steps:
                summary_step = (step + 1) % config.summary_every == 0
                hooks = _activation_hooks(model, activations) if summary_step and is_main else []
                lr = staircase_learning_rate(
                    step, config.learning_rate, config.lr_decay_factor, decay_steps
                )
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images, labels = batches.next_batch()  # [B, 3, 24, 24], [B]
                loss, terms = tutorial_loss(model, net(images), labels)
                for hook in hooks:
                    hook.remove()
                if (step + 1) % config.check_finite_every == 0:
                    nonfinite, signum = distributed.any_rank(
                        [~torch.isfinite(loss.detach()), stop.signal or 0], placement
                    )
                    if nonfinite:
                        value = loss.item()
                        shown = (
                            "NaN"
                            if value != value or abs(value) != float("inf")
                            else ("Inf" if value > 0 else "-Inf")
                        )
                        outcome = "diverged"
                        raise Diverged(f"Model diverged with loss = {shown} at step {step + 1}")
                    stop.signal = stop.signal or signum or None
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                if ema is not None:
                    ema.update(model, step)
                averages = loss_average.update(
                    {"total_loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}
                )
                log.advance()
                interval_steps += 1

                if is_main and (step % config.log_every == 0 or step == config.max_steps):
                    elapsed = time.perf_counter() - interval_start
                    examples_per_sec = interval_steps * batches.global_batch_size / elapsed
                    log.console(f"{time.strftime('%Y-%m-%d %H:%M:%S')}: step {step}, loss = {loss.item():.2f} "
                                f"({examples_per_sec:.1f} examples/sec; {elapsed / interval_steps:.3f} sec/batch)")  # fmt: skip
                    interval_start, interval_steps = time.perf_counter(), 0
                if is_main and (summary_step or step == config.max_steps):
                    scalars = {
                        "learning_rate": lr,
                        "examples_per_sec": examples_per_sec,
                        "epoch": step / batches.steps_per_epoch,
                    }
                    scalars.update(
                        {
                            f"loss/{k} (raw)": float(v.detach())
                            for k, v in {"total_loss": loss, **terms}.items()
                        }
                    )
                    scalars.update({f"loss/{k}": float(v) for k, v in averages.items()})
                    log.scalars(step, scalars)
                    if summary_step:
                        _write_summaries(log, step, model, activations, images)
                    activations.clear()
                if is_main and (
                    step % config.checkpoint_every == 0 or step == config.max_steps or stop.signal
                ):
                    save_checkpoint(run_dir, step, snapshot(), keep=config.keep_checkpoints)
                if stop.signal:
                    outcome = "interrupted"
                    log.console(
                        f"stopped by signal {stop.signal} at step {step}; checkpoint written, resume by running the same command"
                    )
                    raise Interrupted(f"interrupted at step {step}", stop.signal)
        outcome = "trained"
    finally:
        if is_main and outcome != "trained":
            write_status(run_dir, outcome, step, config.max_steps)
            log.close()

    result = None
    if is_main:
        train_seconds = time.perf_counter() - started
        test_images, test_labels = load_run_split(config, run_dir, "test")
        averaged = build_model(config.model, info.num_classes).to(device)
        averaged.load_state_dict(ema.state_dict())
        result = evaluate_model(
            averaged,
            test_images,
            test_labels,
            num_classes=info.num_classes,
            batch_size=config.eval_batch_size,
            device=device,
        )
        log.scalars(
            step,
            {"eval/precision_at_1": result["precision_at_1"], "eval/loss": result["loss"]},
            kind="eval",
        )
        log.console(f"{time.strftime('%Y-%m-%d %H:%M:%S')}: precision @ 1 = {result['precision_at_1']:.4f} "
                    f"({result['correct']:,} / {result['examples']:,} test images, averaged weights, step {step}); "
                    f"trained {train_seconds:.0f} s on {platform.node() or 'this machine'}")  # fmt: skip
        log.close()
        write_status(run_dir, "finished", step, config.max_steps)
    return TrainResult(step=step, run_dir=run_dir, eval=result, resumed_from=resumed_from)
