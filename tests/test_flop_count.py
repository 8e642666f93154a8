"""The training-FLOP count (cifarlab/flops.py) behind --budget's neighbours, `bench train
--json`, `experiment show` and BENCHMARKS.md's FLOP figures."""

import pytest

from cifarlab.config import build_config
from cifarlab.flops import counted_step_flops, step_flops, step_flops_by_module, training_flops
from cifarlab.recipes import TrainingPlan


def _plan(config, steps, examples):
    return TrainingPlan(steps, examples // config.run.batch_size, config.run.batch_size, examples)


def test_a_step_counts_the_forward_and_backward_matrix_products():
    config = build_config("fast-sgd", {"width": 32, "batch_size": 8})
    step = step_flops(config, 0, _plan(config, 100, 50_000))
    # By hand, per image: each convolution 2 x out_h x out_w x out_ch x in_ch x k x k FLOPs
    # forward (32-px images: whitening 2x2 -> 31 px, then 3x3 same-padded convs, 2x2 pools).
    convs = [(31, 24, 3, 2), (31, 8, 24, 3), (15, 8, 8, 3), (15, 32, 8, 3), (7, 32, 32, 3),
             (7, 32, 32, 3), (3, 32, 32, 3)]  # fmt: skip
    forward = sum(2 * side * side * out * inp * k * k for side, out, inp, k in convs)
    forward += 2 * 32 * 10  # the linear head
    # Backward: gradients for the input and the weights of each trained layer (twice the
    # forward), less what the frozen whitening filters and their input never need.
    whitening = 2 * 31 * 31 * 24 * 3 * 2 * 2
    expected = 8 * (forward + 2 * (forward - whitening))
    assert step == expected


@pytest.mark.parametrize("recipe", ["fast-sgd", "fast"])
def test_a_step_split_by_layer_sums_to_the_step_and_each_layer_is_its_own(recipe):
    config = build_config(recipe, {"width": 32, "batch_size": 8})
    plan = _plan(config, 100, 50_000)
    by_module = step_flops_by_module(config, 0, plan)
    assert sum(by_module.values()) == step_flops(config, 0, plan)
    # Block 1's first convolution (24 -> 8 channels at 31 px): forward, input and filter
    # gradients (the whitening bias still trains at step 0, so the input gradient is needed).
    assert by_module["blocks.0.conv1"] == 8 * 3 * (2 * 31 * 31 * 8 * 24 * 9)
    assert by_module["blocks.2.conv2"] == 8 * 3 * (2 * 3 * 3 * 32 * 32 * 9)
    # The frozen whitening filters, applied in the network's own forward: forward only.
    assert by_module["(network)"] == 8 * 2 * 31 * 31 * 24 * 3 * 2 * 2
    assert by_module["head"] == 8 * 3 * (2 * 32 * 10)  # the linear head: the same three
    # Muon's products on the filters are counted; SGD's element-wise update is not.
    assert (by_module["optimizer step"] > 0) == (recipe == "fast")


def test_blocks_1_and_3_take_their_own_widths_and_the_count_follows():
    # airbench96_faster's shape at a small scale: block 1 and block 3 apart from `width`.
    config = build_config("fast-sgd", {"width": 32, "block1_width": 12, "block3_width": 48,
                                       "batch_size": 8})  # fmt: skip
    assert config.recipe.widths() == (12, 32, 48)
    assert build_config("fast-sgd", {"width": 32}).recipe.widths() == (8, 32, 32)
    net = config.recipe.build_model(10, None)
    assert [b.conv1.out_channels for b in net.blocks] == [12, 32, 48]
    assert net.blocks[1].conv1.in_channels == 12 and net.head.in_features == 48
    by_module = step_flops_by_module(config, 0, _plan(config, 100, 50_000))
    assert by_module["blocks.1.conv1"] == 8 * 3 * (2 * 15 * 15 * 32 * 12 * 9)
    assert by_module["blocks.2.conv1"] == 8 * 3 * (2 * 7 * 7 * 48 * 32 * 9)
    assert by_module["blocks.2.conv2"] == 8 * 3 * (2 * 3 * 3 * 48 * 48 * 9)


@pytest.mark.parametrize("recipe", ["fast-sgd", "fast", "tutorial"])
def test_the_count_extrapolated_from_two_small_batches_is_the_direct_count(recipe):
    # Muon's orthogonalization costs the same at any batch; everything else is per image.
    config = build_config(
        recipe, {"batch_size": 40, "width": 32} if recipe != "tutorial" else {"batch_size": 40}
    )
    plan = _plan(config, 100, 50_000)
    direct = counted_step_flops(config, 0, plan, 40)
    assert step_flops(config, 0, plan) == direct
    if recipe == "fast":  # and the batch-independent part is really there
        per_image = counted_step_flops(config, 0, plan, 4) - counted_step_flops(config, 0, plan, 2)
        assert direct - 20 * per_image > 0


def test_a_run_sums_each_epochs_steps_at_that_epochs_image_size():
    # Progressive resizing: the first epoch on 24-px crops, then full size; 50 examples at
    # batch 10 are 5 steps an epoch, and 12 steps end 2 steps into the third epoch.
    config = build_config(
        "fast-sgd", {"width": 32, "batch_size": 10, "small_epochs": 1, "max_steps": 12}
    )
    plan = _plan(config, 12, 50)
    small, full = step_flops(config, 0, plan), step_flops(config, 5, plan)
    assert small < 0.7 * full
    counted = training_flops(config, train_examples=50)
    assert counted["run_flops"] == 5 * small + 7 * full and counted["kinds"] == 2


def test_once_the_whitening_bias_is_frozen_block_1_skips_its_input_gradient():
    # 5 steps an epoch; the bias trains for the first 1.4 epochs: steps 0-6.
    config = build_config("fast-sgd", {"width": 32, "batch_size": 10, "whiten_bias_epochs": 1.4,
                                       "max_steps": 12})  # fmt: skip
    plan = _plan(config, 12, 50)
    trains, frozen = step_flops(config, 6, plan), step_flops(config, 7, plan)
    block1_input_gradient = 10 * 2 * 31 * 31 * 8 * 24 * 3 * 3  # conv 3x3, 24 -> 8 channels
    assert trains - frozen == block1_input_gradient
    assert training_flops(config, train_examples=50)["run_flops"] == 7 * trains + 5 * frozen


def test_the_global_batch_over_processes_sets_the_steps_per_epoch():
    config = build_config("fast-sgd", {"width": 32, "batch_size": 10, "max_steps": 4})
    one, two = training_flops(config, 100), training_flops(config, 100, world_size=2)
    assert two["step_flops"] == 2 * one["step_flops"] and two["run_flops"] == 2 * one["run_flops"]


def test_the_tutorials_fast_path_is_counted_as_its_reference():
    """Its Fourier-transform conv2 and native LRN are invisible to torch's counter (it saw
    a sixth of the work): the count runs the reference network, the same function."""
    fast = build_config("tutorial", {"max_steps": 3})
    reference = build_config("tutorial", {"max_steps": 3, "fast_path": False})
    assert training_flops(fast, 50_000) == training_flops(reference, 50_000)
    # Per image, by hand: 24-px crops; conv1 5x5 3->64 at 24x24, conv2 5x5 64->64 at 12x12
    # (after pool1), the fully connected 2304->384->192->10; backward twice the forward but
    # no input gradient for conv1; each LRN's channel sums a [64 x 64] band product at
    # 12x12, forward and backward.
    conv1, conv2 = 2 * 24 * 24 * 64 * 5 * 5 * 3, 2 * 12 * 12 * 64 * 5 * 5 * 64
    dense = 2 * (2304 * 384 + 384 * 192 + 192 * 10)
    lrn = 2 * 64 * 64 * 12 * 12
    per_image = 3 * (conv1 + conv2 + dense) - conv1 + 2 * 2 * lrn
    assert training_flops(fast, 50_000)["step_flops"] == 128 * per_image


@pytest.mark.parametrize("recipe, goal", [("fast95", 1.0e15), ("fast96", 2.4e15)])
def test_each_rung_trains_within_its_goals_flops_as_it_stands(recipe, goal):
    """docs/fast.md's rungs promise their goal's FLOPs: a default that grows past it (more
    steps, a wider network, a dearer selection) fails here before any run is reported."""
    counted = training_flops(build_config(recipe, {}), 50_000)["run_flops"]
    assert 0.9 * goal < counted <= goal
