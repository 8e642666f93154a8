"""train(config): the step loop, for any recipe. The recipe supplies the model, transform,
loss, optimizer, schedule and weight average; the loop knows none of them by name.

One step: the recipe's learning rates for this step -> batch -> forward -> loss ->
(every `check_finite_every` steps: ranks agree on divergence and on stopping) -> backward
(gradients averaged over ranks by DDP) -> optimizer step -> weight average. Around it
(reporting.py): a console line every `log_every` steps, summaries every `summary_every`;
a checkpoint every `checkpoint_every` and at the end. Only rank 0 logs and saves.
"""

from __future__ import annotations

import functools
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import pause_points
from ..averaging import ScalarAverage
from ..config import TrainConfig
from ..data.datasets import data_root_for, load_run_split
from ..data.layout import dataset_info
from ..data.loader import SelectionStateError, TrainBatches
from ..errors import CifarlabError, ConfigError
from ..evaluate import evaluate_model
from ..machine import ran_on
from ..recipes import Recipe, TrainingPlan
from ..recipes.proxy import shard
from ..run.checkpoint import (
    CheckpointError,
    remove_stale_temporaries,
    save_checkpoint,
    saved_average,
)
from ..run.config_file import save_config
from ..run.result import write_result
from ..run.status import write_status
from . import distributed
from .distributed import Placement
from .reporting import Reporter
from .resume import StartingPoint, agree_on_run
from .signals import StopRequests


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


@dataclass
class TrainingState:
    """Everything a step changes; a checkpoint is this, plus the configuration."""

    step: int
    model: nn.Module  # the network itself (saved, averaged, evaluated)
    net: nn.Module  # what the forward pass runs: the model, or DDP around it
    optimizer: torch.optim.Optimizer
    batches: TrainBatches
    average: Any  # the recipe's weight average, or None
    loss_average: ScalarAverage
    plan: TrainingPlan  # what schedules are functions of, besides the step
    # The recipe's example selector (recipes/proxy.py), or None; with one, `batches` draws
    # the whole global batch of candidates on every rank and this rank trains on `shard`
    # (rank, world size) of the chosen batch.
    selector: Any = None
    shard: tuple[int, int] = (0, 1)
    seconds_before: float = 0.0  # wall time of earlier commands, up to the checkpoint resumed
    clock_start: float = 0.0  # perf_counter() when this command began
    # One entry per command that trained this run: {from_step, ran_on, arithmetic}, so a
    # result says where and how it was computed, and whether it was resumed.
    history: list[dict] = field(default_factory=list)

    def seconds(self) -> float:
        """Wall time the run has cost so far: earlier commands (up to the checkpoint this one
        resumed from) and this one since it began."""
        return self.seconds_before + time.perf_counter() - self.clock_start

    def snapshot(self, config: TrainConfig, world_size: int) -> dict:
        return {
            "step": self.step, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "data": self.batches.state_dict(),
            "average": self.average.state_dict() if self.average is not None else None,
            "loss_average": self.loss_average.state_dict(), "world_size": world_size,
            "config": config.to_dict(), "seconds": self.seconds(), "history": self.history,
            "selector": self.selector.state_dict() if self.selector is not None else None,
        }  # fmt: skip

    def restore(self, state: dict, world_size: int, run_dir: Path) -> None:
        """Continue from a checkpoint's state; a part that does not fit this run (another
        network or data set, an optimizer state of other shapes) is a one-line refusal."""
        from ..run.trained import load_weights

        load_weights(self.model, state["model"], run_dir)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{run_dir}: its checkpoint's optimizer state does not fit "
                                  f"this run ({e})") from None  # fmt: skip
        check_optimizer_shapes(self.optimizer, run_dir)
        try:
            self.batches.load_state_dict(state["data"])
        except SelectionStateError as e:
            raise CheckpointError(f"{run_dir}: its checkpoint's hard-example state is unusable: "
                                  f"{e}") from None  # fmt: skip
        except ValueError as e:
            raise ConfigError(f"cannot continue {run_dir} with {world_size} process(es): {e}; "
                              "use the same number of processes, or a fixed --global-batch-size") from None  # fmt: skip
        self.loss_average.load_state_dict(state["loss_average"])
        if self.selector is not None:
            if not state.get("selector"):
                raise CheckpointError(f"{run_dir}: its checkpoint has no state of the example "
                                      "selector this run uses")  # fmt: skip
            self.selector.load_state_dict(state["selector"])
        if self.average is not None:
            self.average.load_state_dict(saved_average(state, run_dir))
        self.step = int(state["step"])
        self.seconds_before = float(state.get("seconds", 0.0))  # absent before it was saved
        # absent before it was saved: the commands up to this checkpoint are not known
        self.history = list(state.get("history") or [{"from_step": 0, "ran_on": "not recorded",
                                                      "arithmetic": "not recorded"}])  # fmt: skip

    def continue_here(self, ran_on: str, arithmetic: str) -> str | None:
        """Record this command in the history; a sentence for the user when it trains on
        another kind of machine or in other arithmetic than the command before."""
        entry = {"from_step": self.step, "ran_on": ran_on, "arithmetic": arithmetic}
        before = self.history[-1] if self.history else None
        self.history.append(entry)
        if before is None or (before["ran_on"], before["arithmetic"]) == (ran_on, arithmetic):
            return None
        return (f"steps {before['from_step']}-{self.step} ran on {before['ran_on']} in "
                f"{before['arithmetic']}; from step {self.step} on: {ran_on} in {arithmetic}. "
                "The result records both (result.json, history)")  # fmt: skip


def check_optimizer_shapes(optimizer: torch.optim.Optimizer, run_dir: Path) -> None:
    """Each per-parameter buffer (momentum and the like) has its parameter's shape: the
    optimizer's load_state_dict checks the groups' sizes, not this."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != p.shape:
                    raise CheckpointError(
                        f"{run_dir}: its checkpoint's optimizer state does not fit this run "
                        f"({key} of shape {tuple(value.shape)} for a parameter of "
                        f"{tuple(p.shape)})")  # fmt: skip


@dataclass
class StepResult:
    loss: torch.Tensor  # 0-d, still attached to the graph until apply_step
    terms: dict[str, torch.Tensor]  # the recipe's loss terms, for the summaries
    images: torch.Tensor  # the model inputs of this step
    learning_rates: list[float]


def build_state(
    config: TrainConfig, recipe: Recipe, placement: Placement, images: torch.Tensor,
    labels: torch.Tensor, num_classes: int,
) -> TrainingState:  # fmt: skip
    torch.manual_seed(config.run.seed)  # the initial weights, the same on every rank
    device = placement.device
    recipe.prepare_device(device)  # kernels built, routes chosen: before the first step
    model = recipe.build_model(num_classes, images).to(device)
    optimizer = recipe.build_optimizer(model)
    global_batch = config.global_batch_size(placement.world_size)
    selector = recipe.example_selector(num_classes, images, global_batch, device)
    try:
        if selector is None:
            batches = TrainBatches(
                images, labels, distributed.per_rank_batch_size(config.run, placement.world_size),
                transform=recipe.train_transform, seed=config.run.seed, device=device,
                rank=placement.rank, world_size=placement.world_size,
                hard_examples=recipe.hard_examples(),
                gather=functools.partial(distributed.gather_batch, placement=placement),
            )  # fmt: skip
        else:  # every rank draws every candidate, as one process would
            distributed.per_rank_batch_size(config.run, placement.world_size)  # it divides
            batches = TrainBatches(images, labels, recipe.candidate_batch(global_batch),
                                   transform=recipe.train_transform, seed=config.run.seed,
                                   device=device)  # fmt: skip
    except ValueError as e:  # a batch larger than the data set
        raise ConfigError(f"{e}: use a smaller --batch-size") from None
    # DDP averages gradients over ranks during backward; on one process it is not needed.
    net = model
    if placement.world_size > 1:
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    plan = TrainingPlan(config.run.max_steps, batches.steps_per_epoch, global_batch,
                        images.shape[0])  # fmt: skip
    average = recipe.weight_average(model, plan)  # on every rank: an average may write back
    return TrainingState(0, model, net, optimizer, batches, average,
                         ScalarAverage(config.run.loss_average_decay), plan, selector=selector,
                         shard=(placement.rank, placement.world_size))  # fmt: skip


def drawn_from(state: TrainingState) -> str:
    """For the console: where a selector chooses each batch, from how many candidates."""
    if state.selector is None:
        return ""
    return f", chosen from {state.batches.global_batch_size} candidates"


def forward_step(state: TrainingState, recipe: Recipe, plan: TrainingPlan) -> StepResult:
    """Set this step's learning rates and the model's switches, draw the batch, run forward
    and the loss."""
    rates = recipe.learning_rates(state.step, plan)
    for group, rate in zip(state.optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
    recipe.prepare_step(state.model, state.step, plan)
    images, labels = state.batches.next_batch()
    with recipe.autocast(images.device):
        if state.selector is not None:
            chosen = shard(state.selector.select(state.step, images, labels, plan), *state.shard)
            images, labels = images[chosen], labels[chosen]  # indexing keeps the layout
        logits = state.net(images)
    loss, terms = recipe.loss(state.model, logits.float(), labels)
    if state.batches.hard_examples is not None:  # the table hard-example selection draws from
        state.batches.record_losses(recipe.example_losses(logits.detach().float(), labels))
    return StepResult(loss, terms, images, rates)


def apply_step(state: TrainingState, result: StepResult) -> dict[str, float]:
    """Backward, optimizer step, weight average; returns the loss terms' moving averages."""
    state.optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    state.optimizer.step()
    state.step += 1
    if state.average is not None:
        state.average.update(state.model, state.step)
    return state.loss_average.update(
        {"total_loss": result.loss.detach(), **{k: v.detach() for k, v in result.terms.items()}}
    )


def agree_to_stop(
    loss: torch.Tensor, local_signal: int | None, placement: Placement, step: int
) -> int:
    """One all-reduce: if any rank saw a non-finite loss, every rank raises Diverged; else the
    largest signal number any rank received (0: none). Ranks act on this agreed value only,
    never on their own flag, so none stops while another enters the next collective."""
    nonfinite, signum = distributed.any_rank(
        [~torch.isfinite(loss.detach()), local_signal or 0], placement
    )
    if nonfinite:
        value = loss.item()
        shown = (
            "NaN"
            if value != value or abs(value) != float("inf")
            else ("Inf" if value > 0 else "-Inf")
        )
        raise Diverged(f"Model diverged with loss = {shown} at step {step}")
    return signum


def train(
    config: TrainConfig,
    asked: dict | None = None,
    placement: Placement | None = None,
    progress: bool | None = None,
    clock_start: float | None = None,
    stop_on_signals: bool = False,
) -> TrainResult:
    """Run (or continue) training as configured. `asked`: the fields the user set explicitly.
    `clock_start`: perf_counter() when the command began (default: now), for result.json's
    wall time from command to accuracy. `stop_on_signals`: SIGINT and SIGTERM checkpoint and
    stop at the next step (train/signals.py); for the command, not for library callers."""
    clock_start = time.perf_counter() if clock_start is None else clock_start
    placement = placement or distributed.setup(config.run.device)
    lock = None
    try:
        start, lock = agree_on_run(config, asked if asked is not None else config.flat(), placement)
        return _train(start, placement, progress, clock_start, stop_on_signals)
    finally:
        if lock is not None:
            lock.release()
        distributed.teardown()


def _train(
    start: StartingPoint, placement: Placement, progress: bool | None, clock_start: float,
    stop_on_signals: bool,
) -> TrainResult:  # fmt: skip
    config = start.config
    run, run_dir, is_main = config.run, config.run_dir, placement.is_main
    recipe = config.recipe
    if run.threads:
        torch.set_num_threads(run.threads)
    info = dataset_info(run.dataset)
    if is_main:
        remove_stale_temporaries(run_dir)
        save_config(config, run_dir)
    pause_points.reached("start")
    # One process per node fetches (downloads, or makes the synthetic set); the rest wait.
    if placement.local_rank == 0:
        data_root_for(run, run_dir, fetch=True)
    distributed.barrier(placement)
    train_images, train_labels = load_run_split(run, run_dir, "train")

    state = build_state(config, recipe, placement, train_images, train_labels, info.num_classes)
    state.clock_start = clock_start
    if start.state is not None:
        state.restore(start.state, placement.world_size, run_dir)
    arithmetic = recipe.arithmetic(placement.device)
    changed = state.continue_here(ran_on(placement.device, placement.world_size), arithmetic)
    plan = state.plan
    report = Reporter(run, run_dir, state, is_main=is_main, progress=progress,
                      activation_points=recipe.activation_points(state.model))  # fmt: skip
    for note in start.notes + ([changed] if changed else []):
        report.console(note)
    if start.checkpoint_name is not None:
        report.console(f"resuming {run_dir} from {start.checkpoint_name} (step {state.step})")
    else:
        report.describe_new_run(config, recipe.eval_preprocess().to(placement.device))
    report.console(f"training {config.recipe_spec} on {info.title}{' (synthetic)' if run.synthetic else ''}: "
                   f"{train_images.shape[0]:,} images, batch {plan.global_batch_size} "
                   f"({placement.world_size} x {plan.global_batch_size // placement.world_size}"
                   f"{drawn_from(state)}), {run.max_steps:,} steps, "
                   f"device {placement.device} in {arithmetic}, {torch.get_num_threads()} CPU threads, "
                   f"run dir {run_dir}")  # fmt: skip
    del start
    if is_main:
        write_status(run_dir, "running", state.step, run.max_steps)

    started = time.perf_counter()
    outcome = "failed"
    state.net.train()
    try:
        with StopRequests(install=stop_on_signals) as stop:
            while state.step < run.max_steps:
                with report.watching_activations(state.step + 1):
                    result = forward_step(state, recipe, plan)
                agreed_signal = 0
                if (state.step + 1) % run.check_finite_every == 0:
                    try:
                        agreed_signal = agree_to_stop(
                            result.loss, stop.signal, placement, state.step + 1
                        )
                    except Diverged:
                        outcome = "diverged"
                        raise
                pause_points.reached("step", state.step + 1)
                averages = apply_step(state, result)
                report.after_step(state, result, averages)
                last = state.step == run.max_steps
                if is_main and (state.step % run.checkpoint_every == 0 or last or agreed_signal):
                    save_checkpoint(run_dir, state.step, state.snapshot(config, placement.world_size),
                                    keep=run.keep_checkpoints)  # fmt: skip
                if agreed_signal:
                    # Every rank waits for rank 0's checkpoint: a rank leaving early would
                    # make torchrun stop rank 0 in the middle of writing it.
                    distributed.barrier(placement)
                    outcome = "interrupted"
                    report.console(f"stopped by signal {agreed_signal} at step {state.step}; "
                                   "checkpoint written, resume by running the same command")  # fmt: skip
                    raise Interrupted(f"interrupted at step {state.step}", agreed_signal)
        outcome = "trained"
    finally:
        if is_main and outcome != "trained":
            write_status(run_dir, outcome, state.step, run.max_steps)
            report.close()

    result = None
    if is_main:
        result = final_evaluation(state, recipe, config, placement.device, report)
        report.console(f"{time.strftime('%Y-%m-%d %H:%M:%S')}: precision @ 1 = {result['precision_at_1']:.4f} "
                       f"({result['correct']:,} / {result['examples']:,} test images, averaged weights, "
                       f"step {state.step}); trained {time.perf_counter() - started:.0f} s on "
                       f"{platform.node() or 'this machine'}")  # fmt: skip
        report.close()
        write_result(run_dir, result_record(config, state, result, placement.world_size))
        write_status(run_dir, "finished", state.step, run.max_steps)
    distributed.barrier(placement)  # leave together: see the barrier before Interrupted
    return TrainResult(step=state.step, run_dir=run_dir, eval=result)


def result_record(
    config: TrainConfig, state: TrainingState, evaluation: dict, world_size: int
) -> dict:
    """What result.json holds (run/result.py): the final evaluation, the wall time from the
    command to it, the training FLOPs (cifarlab/flops.py), where and in what arithmetic it
    ran (`history`: one entry per command, more than one when resumed)."""
    from ..flops import training_flops
    from ..machine import code_version, cpu_name

    seconds = state.seconds()  # to the accuracy: not the counting below
    flops = training_flops(config, state.plan.train_examples, world_size)
    return {
        "precision_at_1": evaluation["precision_at_1"], "loss": evaluation["loss"],
        "correct": evaluation["correct"], "examples": evaluation["examples"],
        "tta": config.recipe.final_eval_tta, "step": state.step, "seed": config.run.seed,
        "seconds": round(seconds, 3), "training_flops": flops["run_flops"],
        "step_flops": flops["step_flops"], "world_size": world_size, "recipe": config.recipe_spec,
        "recipe_sha256": config.source.sha256, "torch": torch.__version__,
        "machine": platform.node(), "cpu": cpu_name(), "threads": torch.get_num_threads(),
        "code": code_version(), "history": state.history,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }  # fmt: skip


def final_evaluation(
    state: TrainingState,
    recipe: Recipe,
    config: TrainConfig,
    device: torch.device,
    report: Reporter,
) -> dict:
    """The averaged weights on the whole test split, with the recipe's TTA if it asks."""
    info = dataset_info(config.run.dataset)
    test_images, test_labels = load_run_split(config.run, config.run_dir, "test")
    evaluated = state.model
    if state.average is not None:
        evaluated = recipe.build_model(info.num_classes, None).to(device)
        evaluated.load_state_dict(state.average.evaluated_state())
    result = evaluate_model(evaluated, recipe, test_images, test_labels, num_classes=info.num_classes,
                            batch_size=config.run.eval_batch_size, device=device,
                            tta=recipe.final_eval_tta)  # fmt: skip
    report.scalars(state.step, {"eval/precision_at_1": result["precision_at_1"],
                                "eval/loss": result["loss"]}, kind="eval")  # fmt: skip
    return result
