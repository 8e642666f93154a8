"""The training-FLOP count behind BENCHMARKS.md's FLOP figures (benchmarks/time_to_accuracy.py)."""

import sys
from pathlib import Path

import torch

from cifarlab.config import build_config

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from time_to_accuracy import flops_per_step, run_plan, training_flops  # noqa: E402

CPU = torch.device("cpu")


def test_a_step_counts_the_forward_and_backward_matrix_products():
    config = build_config("fast", {"width": 32, "batch_size": 8})
    step = flops_per_step(config, CPU)
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


def test_a_run_sums_each_epochs_steps_at_that_epochs_image_size():
    # Progressive resizing: the first epoch on 24-px crops, then full size; 50 examples at
    # batch 10 are 5 steps an epoch, and 12 steps end 2 steps into the third epoch.
    config = build_config("fast", {"width": 32, "batch_size": 10, "small_epochs": 1})
    plan = run_plan(config, 12, train_examples=50)
    small, full = flops_per_step(config, CPU, 0, plan), flops_per_step(config, CPU, 5, plan)
    assert small < 0.7 * full
    assert training_flops(config, CPU, steps=12, train_examples=50) == 5 * small + 7 * full


def test_once_the_whitening_bias_is_frozen_block_1_skips_its_input_gradient():
    # 5 steps an epoch; the bias trains for the first 1.4 epochs: steps 0-6.
    config = build_config("fast", {"width": 32, "batch_size": 10, "whiten_bias_epochs": 1.4})
    plan = run_plan(config, 12, train_examples=50)
    trains, frozen = flops_per_step(config, CPU, 6, plan), flops_per_step(config, CPU, 7, plan)
    block1_input_gradient = 10 * 2 * 31 * 31 * 8 * 24 * 3 * 3  # conv 3x3, 24 -> 8 channels
    assert trains - frozen == block1_input_gradient
    assert training_flops(config, CPU, steps=12, train_examples=50) == 7 * trains + 5 * frozen
