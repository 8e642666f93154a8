"""Muon (orthogonalized momentum for the filters) against hand computations and torch's SGD."""

import math

import pytest
import torch

from cifarlab.config import build_config
from cifarlab.errors import ConfigError
from cifarlab.muon import NEWTON_SCHULZ, Muon, gram_form_is_cheaper, orthogonalize
from cifarlab.recipes import TrainingPlan, get_recipe
from cifarlab.recipes.fast import Params
from cifarlab.settings import field_names, with_defaults


@pytest.mark.parametrize("shape", [(64, 24, 3, 3), (256, 64, 3, 3), (300, 20)])
def test_orthogonalize_keeps_the_directions_and_evens_out_the_singular_values(shape):
    torch.manual_seed(0)
    # A badly conditioned update: singular values spread over three orders of magnitude.
    u, _, vh = torch.linalg.svd(torch.randn(shape).reshape(shape[0], -1), full_matrices=False)
    spread = torch.logspace(0, -3, u.shape[1])
    update = (u * spread) @ vh
    result = orthogonalize(update.reshape(shape), iterations=5).reshape(shape[0], -1)
    singular = torch.linalg.svdvals(result)
    # the largest directions land near 1 (the iteration is tuned to overshoot, not converge);
    # the smallest, 1000x weaker, are lifted far above their share
    assert singular.max() < 1.25 and singular[: len(singular) // 2].min() > 0.6
    assert singular.min() > 100 * spread.min() / spread.max()
    polar = u @ vh  # the exact answer: every singular value 1, the same directions
    cosine = (result * polar).sum() / (result.norm() * polar.norm())
    assert cosine > 0.9


def textbook(update: torch.Tensor, iterations: int) -> torch.Tensor:
    """The quintic iteration as Jordan writes it, on the wide orientation, in float64."""
    x = update.reshape(update.shape[0], -1).double()
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / (x.norm() + 1e-7)
    a, b, c = NEWTON_SCHULZ
    for _ in range(iterations):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).reshape(update.shape)


@pytest.mark.parametrize("shape, on_the_gram", [((192, 192, 3, 3), True), ((48, 24, 3, 3), True),
                                                ((300, 20), True), ((64, 64), False),
                                                ((40, 60), False)])  # fmt: skip
def test_either_form_of_the_iteration_computes_the_textbook_function(shape, on_the_gram):
    """Wide banks (the fast network's) iterate on their Gram matrix, square-ish ones on
    themselves: the same function, to float64's rounding in float64 and within 1e-5 in
    float32."""
    m, n = sorted((shape[0], math.prod(shape[1:])))
    assert gram_form_is_cheaper(m, n, 5) == on_the_gram
    torch.manual_seed(0)
    update = torch.randn(shape)
    want = textbook(update, 5)
    assert ((orthogonalize(update.double(), 5) - want).norm() / want.norm()) < 1e-12
    assert ((orthogonalize(update, 5).double() - want).norm() / want.norm()) < 1e-5


def test_orthogonalize_in_bfloat16_lands_where_float32_does():
    """Jordan's Muon iterates in bfloat16: the singular values land in the same band, the
    update points the same way, and it comes back in the update's dtype."""
    torch.manual_seed(0)
    update = torch.randn(192, 48, 3, 3)
    exact = orthogonalize(update, 5)
    rounded = orthogonalize(update, 5, torch.bfloat16)
    assert rounded.dtype == torch.float32 and rounded.shape == update.shape
    singular = torch.linalg.svdvals(rounded.reshape(192, -1))
    assert singular.max() < 1.25 and singular.min() > 0.6
    cosine = (rounded * exact).sum() / (rounded.norm() * exact.norm())
    assert 0.99 < cosine < 1  # close, and not the float32 result itself
    # as written, never on the Gram matrix: it corrects its own rounding each iteration
    assert torch.equal(rounded, orthogonalize(update, 5, torch.bfloat16, gram_form=False))


def test_muons_arithmetic_follows_the_setting_and_says_so():
    cpu = torch.device("cpu")
    images = torch.randint(0, 256, (50, 32, 32, 3), dtype=torch.uint8)
    for muon_precision, precision, iterated in (("float32", "bfloat16", None),
                                                ("bfloat16", "float32", torch.bfloat16),
                                                ("auto", "float32", None),
                                                ("auto", "bfloat16", torch.bfloat16)):  # fmt: skip
        recipe = get_recipe("fast", Params(conv_optimizer="muon", width=32, precision=precision,
                                           muon_precision=muon_precision))  # fmt: skip
        optimizer = recipe.build_optimizer(recipe.build_model(10, images))
        assert optimizer.newton_schulz_dtype == iterated
        said = recipe.arithmetic(cpu)
        assert said.endswith("; Newton-Schulz in bfloat16") == (iterated is not None), said
        assert said.startswith(precision)
    weight = torch.randn(8, 4, 3, 3, requires_grad=True)
    muon = Muon([{"params": [weight], "lr": 0.1, "momentum": 0.5, "orthogonalize": True}],
                newton_schulz_dtype=torch.bfloat16)  # fmt: skip
    weight.grad = torch.randn(8, 4, 3, 3)
    before = weight.detach().clone()
    muon.step()
    assert weight.dtype == torch.float32 and not torch.equal(weight.detach(), before)
    assert "newton_schulz_dtype" not in str(muon.state_dict())  # checkpoints unchanged


def test_groups_without_orthogonalize_take_torch_sgd_steps_exactly():
    torch.manual_seed(0)
    ours = torch.randn(5, 3, requires_grad=True)
    theirs = ours.detach().clone().requires_grad_(True)
    muon = Muon([{"params": [ours], "lr": 0.1, "momentum": 0.85, "weight_decay": 0.01}])
    sgd = torch.optim.SGD([theirs], lr=0.1, momentum=0.85, weight_decay=0.01, nesterov=True)
    for _ in range(4):
        grad = torch.randn(5, 3)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        muon.step()
        sgd.step()
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_an_orthogonalized_group_rescales_the_filters_then_steps_along_the_orthogonalized_momentum():
    torch.manual_seed(0)
    weight = torch.randn(8, 4, 3, 3, requires_grad=True)
    start = weight.detach().clone()
    muon = Muon([{"params": [weight], "lr": 0.2, "momentum": 0.5, "orthogonalize": True}],
                iterations=5)  # fmt: skip
    g1, g2 = torch.randn(8, 4, 3, 3), torch.randn(8, 4, 3, 3)
    weight.grad = g1
    muon.step()
    buffer = g1
    rescaled = start * (8**0.5 / start.norm())
    expected = rescaled - 0.2 * orthogonalize(g1 + 0.5 * buffer, 5)
    torch.testing.assert_close(weight.detach(), expected)
    weight.grad = g2
    muon.step()
    buffer = 0.5 * buffer + g2
    rescaled = expected * (8**0.5 / expected.norm())
    torch.testing.assert_close(
        weight.detach(), rescaled - 0.2 * orthogonalize(g2 + 0.5 * buffer, 5)
    )
    assert set(muon.state_dict()["state"][0]) == {"momentum_buffer"}  # what a checkpoint keeps


def test_the_fast_recipe_gives_muon_every_trainable_filter_and_sgd_the_rest():
    recipe = get_recipe("fast-sgd", Params(conv_optimizer="muon", width=32))
    model = recipe.build_model(10, torch.randint(0, 256, (50, 32, 32, 3), dtype=torch.uint8))
    optimizer = recipe.build_optimizer(model)
    trainable = {id(q) for q in model.parameters() if q.requires_grad}
    grouped = [id(q) for group in optimizer.param_groups for q in group["params"]]
    assert sorted(grouped) == sorted(trainable)  # each trainable parameter exactly once
    muon_group = optimizer.param_groups[-1]
    assert muon_group["orthogonalize"] and len(muon_group["params"]) == 6  # 3 blocks x 2 convs
    assert all(q.ndim == 4 for q in muon_group["params"])
    assert not any(g["orthogonalize"] for g in optimizer.param_groups[:-1])
    plan = TrainingPlan(max_steps=100, steps_per_epoch=10, global_batch_size=2048,
                        train_examples=20480)  # fmt: skip
    rates = recipe.learning_rates(50, plan)
    assert len(rates) == len(optimizer.param_groups)
    factor = rates[0] / (1.5 * 2)  # the SGD rate scales with the batch; Muon's does not
    assert rates[3] == pytest.approx(0.24 * factor)
    # the default stays torch's SGD: old runs replay and resume exactly
    sgd = get_recipe("fast-sgd", Params(width=32)).build_optimizer(model)
    assert type(sgd) is torch.optim.SGD


def test_the_fast_muon_recipe_is_the_fast_recipe_with_airbench_muon_defaults(tmp_path):
    sgd, muon, cheapest = get_recipe("fast-sgd"), get_recipe("fast-muon"), get_recipe("fast")

    def changed(a, b):
        return {n for n in field_names(Params) if getattr(a.params, n) != getattr(b.params, n)}

    assert changed(sgd, muon) == {
        "conv_optimizer",
        "learning_rate",
        "warmup_fraction",
        "final_lr_fraction",
    }
    # the default `fast`: the cheapest measured 94% (docs/fast.md), fast-muon narrowed, and
    # in bfloat16 where this CPU multiplies it natively and it times faster
    assert changed(muon, cheapest) == {"width", "hard_keep", "muon_momentum", "precision"}
    assert (muon.params.precision, cheapest.params.precision) == ("float32", "auto")
    assert (cheapest.params.width, cheapest.params.hard_keep, cheapest.params.muon_momentum) == (
        192,
        0.7,
        0.7,
    )
    assert build_config("fast").run.max_steps == 304 and build_config("fast").run.batch_size == 2000
    assert muon.params.conv_optimizer == "muon" and muon.params.warmup_fraction == 0.0
    config = build_config("fast-muon", {"run_dir": str(tmp_path), "muon_lr": "0.3"})
    assert config.params.muon_lr == 0.3 and config.run.batch_size == 2000
    assert config.run.max_steps == 8 * (50_000 // 2000)  # 8 epochs
    with pytest.raises(ConfigError, match="conv_optimizer is 'adam'"):
        build_config("fast-muon", {"run_dir": str(tmp_path), "conv_optimizer": "adam"})
    with pytest.raises(TypeError, match="no field nope"):
        with_defaults(Params, "Broken", nope=1)


def test_the_flop_count_is_the_functions_not_the_gram_forms():
    """The Gram form multiplies less; the training FLOP count (flops.py) counts the
    function as written: k (4m^2n + 2m^3) for k iterations on an m x n bank (m <= n)."""
    from torch.utils.flop_counter import FlopCounterMode

    m, n, k = 16, 72, 5  # an [16, 8, 3, 3] bank, on its Gram matrix when it can
    counts = {}
    for gram_form in (True, False):
        weight = torch.randn(m, 8, 3, 3, requires_grad=True)
        muon = Muon([{"params": [weight], "lr": 0.1, "momentum": 0.5, "orthogonalize": True}])
        muon.gram_form = gram_form
        weight.grad = torch.randn(m, 8, 3, 3)
        with FlopCounterMode(display=False) as counter:
            muon.step()
        counts[gram_form] = counter.get_total_flops()
    assert counts[False] == k * (4 * m * m * n + 2 * m**3)
    assert counts[True] == 4 * m * m * n + 2 * (4 * k - 1) * m**3 < counts[False]
    recipe = get_recipe("fast", Params(conv_optimizer="muon", width=32))
    model = recipe.build_model(10, torch.randint(0, 256, (50, 32, 32, 3), dtype=torch.uint8))
    assert recipe.build_optimizer(model).gram_form  # training takes the Gram form
