"""Selection by a proxy network (recipes/proxy.py): which candidates it chooses, when it
learns, what it costs in the FLOP count, and the settings it refuses."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cifarlab.cli import main
from cifarlab.config import build_config
from cifarlab.data.loader import BatchPosition
from cifarlab.errors import ConfigError
from cifarlab.flops import selection_flops, training_flops
from cifarlab.recipes import TrainingPlan, get_recipe
from cifarlab.recipes.fast import Params
from cifarlab.recipes.proxy import hardest_in_order, shard
from cifarlab.run.checkpoint import DIGEST_KEY, load_checkpoint, save_checkpoint


def test_the_hardest_candidates_are_chosen_in_their_own_order_ties_to_the_first():
    losses = torch.tensor([0.5, 3.0, 0.1, 2.0, 2.0, 9.0])
    assert hardest_in_order(losses, 3).tolist() == [1, 3, 5]  # 9, 3, then the first 2.0
    assert hardest_in_order(losses, 6).tolist() == list(range(6))
    chosen = torch.tensor([1, 3, 5, 8])
    assert [shard(chosen, r, 2).tolist() for r in (0, 1)] == [[1, 3], [5, 8]]


def _selector(every=4, keep=0.5, batch=8):
    recipe = get_recipe("fast", Params(width=32, proxy_keep=keep, proxy_width=16,
                                       proxy_train_every=every))  # fmt: skip
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (64,), generator=g)
    torch.manual_seed(0)
    selector = recipe.example_selector(10, images, batch, torch.device("cpu"))
    drawn = recipe.candidate_batch(batch)
    x = recipe.train_transform(images[:drawn], torch.Generator().manual_seed(1),
                               BatchPosition(0, 0, drawn, torch.arange(drawn)))  # fmt: skip
    plan = TrainingPlan(max_steps=20, steps_per_epoch=4, global_batch_size=batch,
                        train_examples=64)  # fmt: skip
    return recipe, selector, x, labels[:drawn], plan


def test_the_proxy_chooses_what_it_finds_hardest_and_learns_only_on_its_training_steps():
    recipe, selector, x, y, plan = _selector(every=4)
    assert recipe.candidate_batch(8) == 16 and x.shape[0] == 16
    weights = {k: v.clone() for k, v in selector.model.state_dict().items()}
    expected = hardest_in_order(selector.losses(x, y), 8)
    chosen = selector.select(1, x, y, plan)  # not a training step: scoring only
    assert chosen.tolist() == expected.tolist() and len(set(chosen.tolist())) == 8
    state = selector.model.state_dict()
    for name in ("head.weight", "blocks.0.conv1.weight", "blocks.2.norm2.bias"):
        assert torch.equal(state[name], weights[name]), name
    assert torch.equal(selector.select(4, x, y, plan), expected)  # chosen before it learns
    state = selector.model.state_dict()
    for name in ("head.weight", "blocks.0.conv1.weight", "blocks.2.norm2.bias"):
        assert not torch.equal(state[name], weights[name]), name  # step 4 trained it
    # Its whitening bias never trains: the proxy's first step of its own starts frozen.
    assert torch.equal(state["whiten.bias"], weights["whiten.bias"])


def test_the_proxys_own_training_lowers_its_loss_on_what_it_learns_from():
    _, selector, x, y, plan = _selector(every=100)
    chosen = selector.select(1, x, y, plan)
    before = selector.losses(x[chosen], y[chosen]).mean()
    long = TrainingPlan(max_steps=100, steps_per_epoch=4, global_batch_size=8, train_examples=64)
    for step in range(30, 50):  # past the warm-up, at the rate's top
        selector.train_on(x[chosen], y[chosen], step, long)
    assert selector.losses(x[chosen], y[chosen]).mean() < 0.85 * before  # 2.38 -> 1.82 here


def test_the_flop_count_adds_the_proxys_scoring_and_training_as_counted_directly():
    asked = {"width": 32, "hard_keep": 1, "batch_size": 8, "max_steps": 9}
    plain = build_config("fast", asked)
    chosen = build_config("fast", {**asked, "proxy_keep": 0.5, "proxy_width": 16})
    plan = TrainingPlan.for_run(chosen, 64)
    assert plan.steps_per_epoch == 4 and plan.global_batch_size == 8  # 16 drawn a step
    run, first = selection_flops(chosen, plan)
    assert first > 0 and selection_flops(plain, TrainingPlan.for_run(plain, 64)) == (0, 0)
    # The plain network's steps are the same; the proxy's cost comes on top.
    assert training_flops(chosen, 64)["run_flops"] == training_flops(plain, 64)["run_flops"] + run
    # Its first step (scoring 16, training on 8) against torch's counter on the real call,
    # and the run: 9 scorings, training at steps 0, 4 and 8.
    _, selector, x, y, _ = _selector(every=4)
    with FlopCounterMode(display=False) as counted:
        selector.select(0, x, y, plan)
    assert first == counted.get_total_flops()
    with FlopCounterMode(display=False) as scoring:
        selector.losses(x, y)
    assert run == 9 * scoring.get_total_flops() + 3 * (first - scoring.get_total_flops())


def test_two_selections_at_once_are_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="hard_keep and proxy_keep both select"):
        get_recipe("fast", Params(hard_keep=0.7, proxy_keep=0.5))
    code = main(["train", "--recipe", "fast95", "--set", "proxy_keep=0.5", "--synthetic",
                 "--run-dir", str(tmp_path / "run"), "--max-steps", "2"])  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and "hard_keep and proxy_keep both select" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["train", "--recipe", "fast", "--set", "proxy_keep=0", "--synthetic",
                 "--run-dir", str(tmp_path / "zero"), "--max-steps", "2"]) != 0  # fmt: skip
    assert "proxy_keep must be above 0" in capsys.readouterr().err


def test_resuming_a_proxy_run_from_a_checkpoint_without_the_proxy_is_refused(tmp_path, capsys):
    """A checkpoint that lost the proxy's weights cannot continue the run exactly: one line."""
    run = tmp_path / "run"
    small = ["--recipe", "fast", "--synthetic", "--set", "synthetic_train_per_class=8",
             "--set", "synthetic_test_per_class=2", "--batch-size", "16", "--threads", "1",
             "--no-progress", "--set", "width=16", "--set", "proxy_keep=0.5",
             "--set", "proxy_width=8", "--set", "hard_keep=1"]  # fmt: skip
    assert main(["train", *small, "--run-dir", str(run), "--max-steps", "4",
                 "--checkpoint-every", "2"]) == 0  # fmt: skip
    capsys.readouterr()
    (run / "ckpt-00000004.pt").unlink()
    state = load_checkpoint(run / "ckpt-00000002.pt")
    assert state["selector"]["model"]  # the proxy was saved
    del state[DIGEST_KEY]
    save_checkpoint(run, 2, {**state, "selector": None})
    assert main(["train", "--run-dir", str(run), "--no-progress"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no state of the example selector" in err[0]
