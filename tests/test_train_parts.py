"""Schedules, averages and the loss at their corner cases, against hand computations."""

import math

import pytest
import torch

from cifarlab.averaging import ExponentialWeightAverage, ScalarAverage, ema_decay_at
from cifarlab.recipes import get_recipe
from cifarlab.schedules import staircase_decay_steps, staircase_learning_rate


def test_decay_steps_of_the_tutorial():
    assert staircase_decay_steps(50_000, 128, 350) == 136_718


@pytest.mark.parametrize(
    "step, rate",
    [
        (0, 0.1),
        (1, 0.1),
        (99_999, 0.1),
        (136_717, 0.1),
        (136_718, 0.01),
        (273_435, 0.01),
        (273_436, 0.001),
    ],
)
def test_staircase_learning_rate_at_corner_steps(step, rate):
    assert staircase_learning_rate(step, 0.1, 0.1, 136_718) == pytest.approx(rate, rel=1e-12)


@pytest.mark.parametrize(
    "n, decay",
    [
        (0, 0.1),
        (1, 2 / 11),
        (10, 11 / 20),
        (89_989, 89_990 / 89_999),
        (89_990, 0.9999),
        (10**6, 0.9999),
    ],
)
def test_ema_decay_warm_up(n, decay):
    assert ema_decay_at(n, 0.9999) == pytest.approx(decay, rel=1e-12)


def test_weight_average_follows_tensorflow_update():
    model = torch.nn.Linear(3, 2)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    average = ExponentialWeightAverage(model, 0.9999)
    with torch.no_grad():
        model.weight.add_(1.0)
    decay = average.update(model, num_updates=1)
    assert decay == pytest.approx(2 / 11)
    expected = initial["weight"] - (1 - 2 / 11) * (initial["weight"] - model.weight)
    torch.testing.assert_close(average.shadow["weight"], expected)
    torch.testing.assert_close(average.shadow["bias"], initial["bias"])  # unchanged weights stay


def test_loss_averages_are_debiased():
    avg = ScalarAverage(0.9)
    assert avg.update({"loss": 4.0})["loss"] == pytest.approx(4.0)  # first value as is
    second = avg.update({"loss": 2.0})["loss"]
    assert second == pytest.approx((0.9 * 0.1 * 4 + 0.1 * 2) / (1 - 0.81))


def test_loss_equals_a_hand_computation():
    torch.manual_seed(0)
    recipe = get_recipe("tutorial")
    model = recipe.build_model(10, None)
    logits = torch.tensor(
        [[2.0, 1.0, 0.0, 0, 0, 0, 0, 0, 0, 0], [0.0, 0, 0, 3.0, 0, 0, 0, 0, 0, 0]]
    )
    labels = torch.tensor([0, 5])
    total, terms = recipe.loss(model, logits, labels)
    ce0 = -2.0 + math.log(math.exp(2) + math.exp(1) + 8)
    ce1 = -0.0 + math.log(math.exp(3) + 9)
    assert terms["cross_entropy"].item() == pytest.approx((ce0 + ce1) / 2, rel=1e-6)
    w3 = model.local3.weight.detach().double()
    w4 = model.local4.weight.detach().double()
    assert terms["weight_loss/local3.weight"].item() == pytest.approx(
        0.004 * (w3**2).sum().item() / 2, rel=1e-5
    )
    assert terms["weight_loss/local4.weight"].item() == pytest.approx(
        0.004 * (w4**2).sum().item() / 2, rel=1e-5
    )
    assert set(terms) == {"cross_entropy", "weight_loss/local3.weight", "weight_loss/local4.weight"}
    assert total.item() == pytest.approx(sum(t.item() for t in terms.values()), rel=1e-6)


def test_one_training_step_on_its_own_is_plain_sgd_and_updates_the_average():
    from cifarlab.config import build_config
    from cifarlab.recipes import TrainingPlan
    from cifarlab.train.distributed import Placement
    from cifarlab.train.loop import apply_step, build_state, forward_step

    config = build_config("tutorial", {"batch_size": 8, "learning_rate": 0.05, "ema_decay": 0.5})
    recipe = get_recipe("tutorial", config.params)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 32, 32, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (40,), generator=g)
    state = build_state(config, recipe, Placement(torch.device("cpu")), images, labels, 10)
    plan = TrainingPlan(max_steps=10, steps_per_epoch=5, global_batch_size=8, train_examples=40)
    before = {k: v.clone() for k, v in state.model.state_dict().items()}

    result = forward_step(state, recipe, plan)
    assert result.learning_rates == [0.05] and result.images.shape == (8, 3, 24, 24)
    grads = torch.autograd.grad(result.loss, list(state.model.parameters()), retain_graph=True)
    apply_step(state, result)

    assert state.step == 1 and state.batches.batches_drawn == 1
    for (name, param), grad in zip(state.model.named_parameters(), grads, strict=True):
        torch.testing.assert_close(param.detach(), before[name] - 0.05 * grad)
        # the average after one update: decay min(0.5, 2/11) = 2/11 towards the new weights
        expected = before[name] + (1 - 2 / 11) * (param.detach() - before[name])
        torch.testing.assert_close(state.average.shadow[name], expected)
