"""--budget with a measured frontier: the size is chosen with the steps (train/budget.py,
cifarlab/frontier.py)."""

import json
import math

import pytest

from cifarlab.cli import main
from cifarlab.frontier import Frontier, Measured
from cifarlab.recipes import load_recipe

# Two widths measured at two lengths each: width 16 from 1 epoch, width 32 only from 2.
TOY = Frontier(
    "width",
    (
        Measured(16, 1, 50.0, 3),
        Measured(16, 4, 60.0, 3),
        Measured(32, 2, 55.0, 3),
        Measured(32, 8, 70.0, 3),
    ),  # fmt: skip
    source="tests",
)
SMALL = ["--recipe", "fast-sgd", "--synthetic", "--set", "synthetic_train_per_class=40",
         "--set", "synthetic_test_per_class=10", "--batch-size", "64", "--threads", "2",
         "--no-progress"]  # fmt: skip


def test_the_frontier_is_read_at_measured_points_between_them_and_past_them():
    assert TOY.values() == [16, 32]
    assert TOY.predicted(16, 1) == 50.0 and TOY.predicted(32, 8) == 70.0
    # between: linear in log(epochs), so 2 epochs is halfway from 1 to 4
    assert TOY.predicted(16, 2) == pytest.approx(55.0)
    assert TOY.predicted(32, 3) == pytest.approx(55.0 + 15.0 * math.log(1.5) / math.log(4))
    assert TOY.predicted(32, 50) == 70.0  # past the longest: no more than was measured
    assert TOY.predicted(32, 1.9) is None  # shorter than anything measured: not offered
    assert TOY.predicted(64, 10) is None  # never measured
    # what each can afford decides: width 16 at 4 epochs (60%) beats width 32 at 2 (55%)
    ranked = TOY.ranked({16: 4.0, 32: 2.0, 64: 3.0})
    assert [(value, accuracy) for accuracy, value, _ in ranked] == [(16, 60.0), (32, 55.0)]
    # equal predictions: the smaller value first
    same = Frontier("width", (Measured(8, 1, 50.0, 1), Measured(4, 1, 50.0, 1)), "tests")
    assert [value for _, value, _ in same.ranked({8: 2.0, 4: 2.0})] == [4, 8]


def _train_with_budget(tmp_path, monkeypatch, minutes: str, *extra: str):
    """`cifarlab train --budget` on a clock the test controls: every timed call takes 2.0 s
    and the timing itself none, whatever the width (so the frontier alone decides); the
    real steps still run. Returns (the printed lines, the saved config)."""
    from cifarlab.train import budget

    monkeypatch.setattr(load_recipe("fast-sgd")[0], "budget_frontier", TOY)
    monkeypatch.setattr(budget, "_clock", lambda: 0.0)
    monkeypatch.setattr(budget, "_timed", lambda fn, repeats: (fn(), 2.0)[1])
    monkeypatch.setattr(budget, "STEP_MARGIN", 1.03)  # the arithmetic below, whatever it's tuned to
    run = tmp_path / f"run-{minutes}"
    code = main(["train", *SMALL, *extra, "--budget", minutes, "--run-dir", str(run)])
    return code, run


@pytest.mark.slow
def test_a_budget_picks_the_width_the_frontier_expects_to_end_best(tmp_path, monkeypatch, capsys):
    # Every width: 2.0 s x 1.03 (the margin) = 2.06 s a step (batch 64 is under the
    # size-timing batch, so not scaled), evaluation 2.0 s x 100 test images / 128 sampled =
    # 1.5625 s, 6 steps an epoch. 1 min: (60 - 15 - 1.5625 - 8 x 2.06) / (2.06 x 6) = 2.18
    # epochs for each width, where width 32 is expected at 55.9% and width 16 at 55.6%.
    code, run = _train_with_budget(tmp_path, monkeypatch, "1")
    assert code == 0
    out = capsys.readouterr().out
    assert "timing width 16 at batch 64" in out and "timing width 32 at batch 64" in out
    assert ("budget 1 min: width 32, about 2.2 epochs here, which the measured frontier puts "
            "at 55.9% (against width 16: 2.2 epochs, 55.6%)") in out  # fmt: skip
    saved = json.loads((run / "config.json").read_text())
    # then width 32's own steps, timed in full: (60 - 15 - 1.5625) / 2.06 = 21 steps
    assert saved["params"]["width"] == 32 and saved["run"]["max_steps"] == 21
    # 0.8 min: 1.21 epochs, shorter than any run width 32 was measured at
    code, run = _train_with_budget(tmp_path, monkeypatch, "0.8")
    assert code == 0
    assert "width 16, about 1.2 epochs here, which the measured frontier puts at 51.4%\n" in (
        capsys.readouterr().out
    )
    assert json.loads((run / "config.json").read_text())["params"]["width"] == 16
    # 0.75 min: 0.97 epochs, shorter than anything measured: the smallest width
    code, run = _train_with_budget(tmp_path, monkeypatch, "0.75")
    assert code == 0
    assert "no width was measured as short a run as fits here; the smallest, 16, is used" in (
        capsys.readouterr().out
    )


@pytest.mark.slow
@pytest.mark.parametrize("width_32_at_full_batch, chosen", [(1.0, 32), (3.0, 16)])
def test_the_contenders_are_timed_again_at_the_runs_own_batch(
    tmp_path, monkeypatch, capsys, width_32_at_full_batch, chosen
):
    """Sizes compared on a batch of 16, scaled to the run's 64: both widths then cost the
    same, 2.06 s a step, and evaluating (timed on 32 images) 6.25 s, so 1.2 min buys
    (72 - 15 - 6.25 - 8 x 2.06) / (2.06 x 6) = 2.77 epochs: width 32 is expected at 58.5%,
    width 16 at 57.4%, within CONTENDER_POINTS, so each is timed again at batch 64 (timing
    them is 3 steps each, 17% of the budget: the share allowed is raised to 20% for the
    test). Where width 32's full step costs what the small batch promised, it stays the
    choice; where it costs 3x, it affords no run as short as was ever measured of it, and
    width 16 is chosen."""
    from cifarlab.train import budget

    monkeypatch.setattr(budget, "SIZE_TIMING_BATCH", 16)
    monkeypatch.setattr(budget, "CONTENDER_SHARE", 0.2)
    timed_batches = []
    step_seconds = budget._TimingRun.step_seconds

    def priced(self, at_step, repeats=3):
        seconds = step_seconds(self, at_step, repeats)  # real steps, the test's clock
        timed_batches.append((self.recipe.params.width, self.batch))
        if self.batch == 16:
            return seconds / 4  # x 64 / 16 when scaled: 2.06 s, as the test above
        return seconds * (width_32_at_full_batch if self.recipe.params.width == 32 else 1.0)

    monkeypatch.setattr(budget._TimingRun, "step_seconds", priced)
    code, run = _train_with_budget(tmp_path, monkeypatch, "1.2")
    assert code == 0
    out = capsys.readouterr().out
    assert "timing width 16 at batch 16" in out and "timing width 32 at batch 16" in out
    assert "budget 1.2 min: timing width 32, 16 at batch 64, the run's own" in out
    assert (32, 64) in timed_batches and (16, 64) in timed_batches
    expected = {32: "58.5%", 16: "57.4%"}[chosen]
    assert (
        f"width {chosen}, about 2.8 epochs here, which the measured frontier puts at {expected}"
        in out
    )
    saved = json.loads((run / "config.json").read_text())
    # then the chosen width's steps timed in full at 2.06 s: (72 - 15 - 1.5625) / 2.06 = 26
    assert saved["params"]["width"] == chosen and saved["run"]["max_steps"] == 26


@pytest.mark.slow
def test_a_width_the_user_set_is_kept_and_only_the_steps_are_chosen(tmp_path, monkeypatch, capsys):
    code, run = _train_with_budget(tmp_path, monkeypatch, "1", "--set", "width=16")
    assert code == 0
    out = capsys.readouterr().out
    assert "width set, so only the steps are chosen" in out and "timing width" not in out
    saved = json.loads((run / "config.json").read_text())
    assert saved["params"]["width"] == 16 and saved["run"]["max_steps"] == 21


@pytest.mark.slow
def test_an_experiment_times_once_and_every_seed_keeps_the_chosen_width(
    tmp_path, monkeypatch, capsys
):
    from cifarlab.train import budget

    monkeypatch.setattr(load_recipe("fast-sgd")[0], "budget_frontier", TOY)
    monkeypatch.setattr(budget, "_clock", lambda: 0.0)
    monkeypatch.setattr(budget, "_timed", lambda fn, repeats: (fn(), 2.0)[1])
    monkeypatch.setattr(budget, "STEP_MARGIN", 1.03)  # the arithmetic below, whatever it's tuned to
    exp = tmp_path / "exp"
    args = ["experiment", "run", str(exp), *SMALL, "--max-steps", "3"]
    assert main(["experiment", "run", str(exp), *SMALL, "--budget", "0.8", "--seeds", "0"]) == 0
    first = json.loads((exp / "experiment.json").read_text())
    assert first["fields"]["width"] == 16 and first["fields"]["max_steps"] == 15
    capsys.readouterr()
    # a second seed, later: no new timing, the saved width and length
    assert main(["experiment", "run", str(exp), *SMALL, "--budget", "0.8", "--seeds", "1"]) == 0
    assert "timing" not in capsys.readouterr().out
    assert json.loads((exp / "seed-1" / "config.json").read_text())["params"]["width"] == 16
    # the same flags with an explicit length are another experiment
    assert main([*args, "--seeds", "2"]) == 1


def test_the_fast_recipes_frontier_is_what_its_saved_experiments_show():
    """Every point of `fast`'s frontier is the mean of a saved experiment of the recipe at
    that width and length (`experiment show` of a folder in benchmarks/results/experiments):
    the figures in the code have one source."""
    from pathlib import Path

    from cifarlab.experiment.results import show

    frontier = load_recipe("fast")[0].budget_frontier
    saved = Path(__file__).parents[1] / frontier.source
    assert len(frontier.points) >= 12 and len(frontier.values()) >= 4
    for point in frontier.points:
        exp = saved / point.experiment
        fields = json.loads((exp / "experiment.json").read_text())["fields"]
        steps = fields["max_steps"]
        assert (fields["recipe"], fields["width"]) == ("fast", point.value), exp
        assert point.epochs == steps * fields["batch_size"] / 50_000, exp
        shown = show(exp)
        assert (shown["n"], round(100 * shown["mean"], 2)) == (point.seeds, point.accuracy), exp


def test_a_network_shape_the_frontier_was_not_measured_at_leaves_only_the_steps_to_choose():
    from cifarlab.config import build_config
    from cifarlab.train.budget import chosen_fields

    fast = build_config("fast", {})
    frontier = fast.recipe.budget_frontier
    assert frontier.pinned and all(hasattr(fast.params, name) for name in frontier.pinned)
    assert chosen_fields(fast, {}) == ["width", "max_steps"]
    assert chosen_fields(fast, {"muon_lr": "0.1"}) == ["width", "max_steps"]  # no shape
    for name in ("width", *frontier.pinned):
        asked = {name: "512"}
        assert chosen_fields(build_config("fast", asked), asked) == ["max_steps"], name
