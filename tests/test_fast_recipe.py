"""The fast recipe's parts against hand computations, and short real runs on synthetic data."""

import json

import pytest
import torch
from conftest import trivial_accuracy

from cifarlab.cli import main
from cifarlab.config import build_config
from cifarlab.data.loader import BatchPosition
from cifarlab.models.fast import FastNet, ResidualBlock, _patches, whitening_filters
from cifarlab.recipes import TrainingPlan, get_recipe
from cifarlab.recipes.fast import (
    LookaheadAverage,
    alternating_flip,
    cutout,
    jitter,
    random_flip,
    translate,
)
from cifarlab.run.checkpoint import load_checkpoint


def test_whitening_filters_turn_a_known_covariance_into_the_identity():
    torch.manual_seed(0)
    mixing = torch.randn(12, 12, dtype=torch.float64)
    covariance = mixing @ mixing.T + 0.1 * torch.eye(12, dtype=torch.float64)
    patches = torch.distributions.MultivariateNormal(torch.zeros(12), covariance.float()).sample(
        (200_000,)
    )
    filters = whitening_filters(patches.view(-1, 3, 2, 2), eps=0.0).double()  # [24, 3, 2, 2]
    w = filters.view(24, 12)
    assert torch.allclose(w[12:], -w[:12])  # the second half: the negatives
    # W C W^T = I for the known covariance: the filters are C^(-1/2) up to a rotation
    torch.testing.assert_close(
        w[:12] @ covariance @ w[:12].T, torch.eye(12, dtype=torch.float64), atol=0.03, rtol=0
    )
    # ordered by variance: the first filter follows the covariance's largest eigenvector
    top = torch.linalg.eigh(covariance).eigenvectors[:, -1]
    assert abs(torch.nn.functional.cosine_similarity(w[0], top, dim=0)) > 0.99


def test_the_network_whitens_its_training_patches():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(64, 3, 32, 32, generator=g).cumsum(dim=3)  # correlated neighbours
    net = FastNet(10)
    net.init_whitening(images)
    with torch.no_grad():
        features = torch.nn.functional.conv2d(images, net.whiten.weight[:12])
    flat = features.permute(0, 2, 3, 1).reshape(-1, 12)
    cov = torch.cov(flat.T)
    torch.testing.assert_close(cov, torch.eye(12), atol=0.05, rtol=0)
    assert _patches(images, 2).shape == (64 * 31 * 31, 3, 2, 2)


def test_alternating_flip_mirrors_each_image_in_every_other_epoch():
    indices = torch.arange(10_000)
    by_epoch = torch.stack([alternating_flip(indices, e) for e in range(4)])  # [4, N]
    assert torch.equal(by_epoch[0], ~by_epoch[1]) and torch.equal(by_epoch[0], by_epoch[2])
    assert torch.equal(by_epoch[1], by_epoch[3])
    assert 0.48 < by_epoch[0].float().mean() < 0.52  # half start mirrored


def test_the_flip_ablations_mirror_at_random_or_never():
    whole = random_flip(torch.Generator().manual_seed(3), 0, 10_000, 10_000)
    assert 0.48 < whole.float().mean() < 0.52
    rank1 = random_flip(torch.Generator().manual_seed(3), 5_000, 10_000, 5_000)
    assert torch.equal(rank1, whole[5_000:])  # ranks see one process's draws
    images = torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8)
    position = BatchPosition(1, 0, 64, torch.arange(64))
    outputs = {}
    for flip in ("alternating", "random", "none"):
        recipe = get_recipe(
            "fast-sgd", build_config("fast-sgd", {"flip": flip, "translate": 0}).params
        )
        outputs[flip] = recipe.train_transform(images, torch.Generator().manual_seed(0), position)
    plain = get_recipe("fast-sgd").normalize(images)
    mirrored = [torch.equal(outputs["random"][i], plain[i].flip(2)) for i in range(64)]
    assert torch.equal(outputs["none"], plain) and 16 < sum(mirrored) < 48
    assert torch.equal(outputs["alternating"][alternating_flip(torch.arange(64), 1)],
                       plain.flip(3)[alternating_flip(torch.arange(64), 1)])  # fmt: skip


def test_without_whitening_the_first_layer_is_learned_from_its_default_start():
    images = torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8)
    for whitening in (True, False):
        recipe = get_recipe("fast-sgd", build_config("fast-sgd", {"whitening": whitening}).params)
        torch.manual_seed(0)
        model = recipe.build_model(10, images)
        trained = {n for n, q in model.named_parameters() if q.requires_grad}
        assert ("whiten.weight" in trained) is not whitening
        torch.manual_seed(0)
        default = FastNet(10).whiten.weight  # the same draws, no whitening
        assert torch.equal(model.whiten.weight, default) is not whitening


def test_translation_moves_each_image_by_its_drawn_shift_and_splits_across_ranks():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32).repeat(4, 1, 1, 1)
    whole = translate(x, 2, torch.Generator().manual_seed(5), 0, 8)
    halves = [
        translate(x[i * 4 : (i + 1) * 4], 2, torch.Generator().manual_seed(5), i * 4, 8)
        for i in range(2)
    ]
    assert torch.equal(torch.cat(halves), whole)  # ranks see one process's shifts
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(8):  # every output is one of the 25 windows of its padded image
        assert any(
            torch.equal(whole[i], padded[i, :, dy : dy + 32, dx : dx + 32])
            for dy in range(5)
            for dx in range(5)
        )
    assert torch.equal(translate(x, 0, torch.Generator(), 0, 8), x)


def test_jitter_shifts_then_scales_each_image_by_its_own_draw_and_splits_across_ranks():
    x = torch.randn(8, 3, 4, 4)
    whole = jitter(x, 0.2, 0.1, torch.Generator().manual_seed(3), 0, 8)
    halves = [
        jitter(x[i * 4 : (i + 1) * 4], 0.2, 0.1, torch.Generator().manual_seed(3), i * 4, 8)
        for i in range(2)
    ]
    assert torch.equal(torch.cat(halves), whole)  # ranks see one process's draws
    for i in range(8):  # whole[i] = (x[i] + s) c: solve for c and s from two pixels
        a, b = x[i].flatten()[:2], whole[i].flatten()[:2]
        scale = (b[1] - b[0]) / (a[1] - a[0])
        shift = b[0] / scale - a[0]
        assert 0.9 <= scale <= 1.1 and -0.2 <= shift <= 0.2
        torch.testing.assert_close(whole[i], (x[i] + shift) * scale, rtol=1e-4, atol=1e-4)
    scales = [(whole[i].std() / x[i].std()).item() for i in range(8)]
    assert len({round(s, 4) for s in scales}) == 8  # a draw per image
    assert jitter(x, 0, 0, torch.Generator(), 0, 8) is x  # off: untouched, nothing drawn


def test_cutout_blanks_one_square_inside_each_image_at_its_own_place_across_ranks():
    x = torch.randn(64, 3, 12, 10) + 5  # never 0 by chance
    whole = cutout(x, 4, torch.Generator().manual_seed(7), 0, 64)
    halves = [cutout(x[i * 32 : (i + 1) * 32], 4, torch.Generator().manual_seed(7), i * 32, 64)
              for i in range(2)]  # fmt: skip
    assert torch.equal(torch.cat(halves), whole)  # ranks see one process's draws
    corners = set()
    for i in range(64):
        blank = whole[i] == 0
        assert torch.equal(blank[0], blank[1]) and torch.equal(blank[0], blank[2])  # all channels
        rows, cols = blank[0].nonzero(as_tuple=True)
        top, left = rows.min().item(), cols.min().item()
        assert len(rows) == 16 and rows.max() - top == 3 and cols.max() - left == 3  # a 4x4 square
        assert top + 4 <= 12 and left + 4 <= 10  # inside the image
        assert torch.equal(whole[i][~blank], x[i][~blank])  # the rest untouched
        corners.add((top, left))
    assert len(corners) > 32  # a place per image: (12 - 3) x (10 - 3) = 63 possible
    assert {c[0] for c in corners} >= {0, 8} and {c[1] for c in corners} >= {0, 6}  # edges reached
    assert cutout(x, 0, torch.Generator(), 0, 64) is x  # off: untouched, nothing drawn


def test_a_residual_block_starts_as_its_first_half_and_its_branch_learns_from_step_one():
    torch.manual_seed(0)
    block = ResidualBlock(8, 16, bn_momentum=0.6, residual_init=0.0)
    x = torch.randn(6, 8, 10, 10)
    first_half = block.first_half(x)  # (the fused pool, batch norm and GELU where built)
    out = block(x)
    assert torch.equal(out, first_half)  # the branch joins with scale 0: exactly the first half
    out.square().sum().backward()
    assert block.branch_scale.grad.abs() > 0  # the scale moves at the first step...
    assert torch.equal(block.conv3.weight.grad, torch.zeros_like(block.conv3.weight))
    block.zero_grad()
    with torch.no_grad():
        block.branch_scale.fill_(0.5)  # ...and once it has, the branch's filters learn
    plain = ResidualBlock(8, 16, bn_momentum=0.6, residual_init=1.0)
    plain.load_state_dict({**block.state_dict(), "branch_scale": torch.tensor(1.0)})
    block(x).square().sum().backward()
    assert block.conv3.weight.grad.abs().sum() > 0 and block.conv2.weight.grad.abs().sum() > 0
    branch = plain(x) - first_half  # the plain sum: x0 + branch(x0)
    torch.testing.assert_close(block(x), first_half + 0.5 * branch)
    net = FastNet(10, widths=(8, 16, 16), residual=True)
    assert all(isinstance(b, ResidualBlock) for b in net.blocks)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_a_frozen_whitening_bias_gets_an_exact_zero_and_leaves_the_rest_as_it_was():
    torch.manual_seed(0)
    net = FastNet(10, widths=(8, 16, 16))
    x = torch.randn(4, 3, 32, 32)

    def gradients(bias_trains: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        net.zero_grad(set_to_none=True)
        net.whiten_bias_trains = bias_trains
        logits = net(x)
        logits.square().sum().backward()
        return logits, {k: p.grad for k, p in net.named_parameters() if p.requires_grad}

    (out_trains, trains), (out_frozen, frozen) = gradients(True), gradients(False)
    assert torch.equal(out_trains, out_frozen)
    assert trains["whiten.bias"].abs().sum() > 0 and torch.equal(
        frozen["whiten.bias"], torch.zeros(24)
    )
    for name in trains.keys() - {"whiten.bias"}:
        torch.testing.assert_close(frozen[name], trains[name], rtol=0, atol=0)
    recipe = get_recipe("fast-sgd")
    plan = TrainingPlan(max_steps=100, steps_per_epoch=10, global_batch_size=64, train_examples=640)
    assert [recipe.prepare_step(net, s, plan) for s in (0, 29, 30, 99)] == [
        True,
        True,
        False,
        False,
    ]
    assert net.whiten_bias_trains is False


@pytest.mark.parametrize(
    "step, factor",
    [(0, 0.2), (10, 0.2 + 0.8 * 0.10 / 0.23), (23, 1.0), (50, 1 - 0.93 * 0.27 / 0.77), (100, 0.07)],
)
def test_learning_rates_at_corner_steps(step, factor):
    recipe = get_recipe("fast-sgd")
    plan = TrainingPlan(
        max_steps=100, steps_per_epoch=10, global_batch_size=512, train_examples=5120
    )
    rates = recipe.learning_rates(step, plan)
    base = 1.5 * 512 / 1024
    assert rates[0] == pytest.approx(base * factor)
    assert rates[1] == pytest.approx(base * factor * 64)  # BatchNorm biases
    assert rates[2] == (
        pytest.approx(base * factor) if step < 30 else 0.0
    )  # whitening bias: 3 epochs


def test_lookahead_holds_back_more_as_the_run_ends_and_lands_on_the_slow_copy():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    plan = TrainingPlan(max_steps=10, steps_per_epoch=5, global_batch_size=4, train_examples=20)
    average = LookaheadAverage(model, plan, every=5, final_decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    average.update(model, 3)  # not an averaging step
    assert model.weight.eq(1.0).all()
    average.update(model, 5)  # decay 0.5 * 0.5**3 = 0.0625: slow = 0.9375
    assert model.weight[0, 0].item() == pytest.approx(0.9375) and average.slow["weight"][
        0, 0
    ].item() == pytest.approx(0.9375)
    with torch.no_grad():
        model.weight.fill_(2.0)
    average.update(model, 10)  # the last step: the model becomes the slow copy
    assert model.weight[0, 0].item() == pytest.approx(0.9375)


SMALL = ["--recipe", "fast-sgd", "--synthetic", "--set", "synthetic_train_per_class=40", "--set", "synthetic_test_per_class=10",
         "--batch-size", "64", "--threads", "2", "--no-progress", "--set", "width=32"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "conv_optimizer, extra",
    [("sgd", []), ("muon", []), ("muon", ["--set", "hard_keep=0.5", "--set", "hard_from_epoch=1"]),
     ("muon", ["--set", "precision=bfloat16"]),  # models/bf16_conv.py's routes, timed here
     ("muon", ["--set", "residual=true", "--set", "cutout=8"]),
     # 80 candidates a step, 5 steps an epoch: step 9 is mid-epoch, between proxy steps
     ("muon", ["--set", "proxy_keep=0.8", "--set", "proxy_width=16"])],
)  # fmt: skip
def test_a_short_run_learns_and_resumes_exactly_mid_epoch(tmp_path, capsys, conv_optimizer, extra):
    """With hard-example selection too: step 9 is mid-way through the first selected epoch.
    In bfloat16 too: its routes are deterministic, so the resumed run is bit-identical.
    With a proxy choosing the batches: it resumes where it was, to the bit."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = [
        *SMALL,
        *extra,
        "--set",
        f"conv_optimizer={conv_optimizer}",
        "--max-steps",
        "36",
        "--checkpoint-every",
        "9",
        "--set",
        "keep_checkpoints=10",
    ]
    assert main(["train", *common, "--run-dir", str(straight), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # 6 steps an epoch: 36 steps = 6 epochs. Chance is 0.1; classifiers that learn no
    # shapes reach about 0.5 on this set.
    assert trivial_accuracy(straight / "synthetic-data") < 0.6 < 0.65 < result["precision_at_1"]
    # As if killed after step 9 (mid-epoch 2, between lookahead steps): continue from there.
    split.mkdir()
    (split / "ckpt-00000009.pt").write_bytes((straight / "ckpt-00000009.pt").read_bytes())
    (split / "config.json").write_text(
        (straight / "config.json").read_text().replace(str(straight), str(split))
    )
    assert main(["train", "--run-dir", str(split), "--no-progress"]) == 0
    a, b = (
        load_checkpoint(straight / "ckpt-00000036.pt"),
        load_checkpoint(split / "ckpt-00000036.pt"),
    )
    for part in ("model", "average"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    if "hard_keep=0.5" in extra:  # the selection ran; the resumed run kept the same losses
        assert torch.isfinite(a["data"]["example_losses"]).sum() >= 384
        assert torch.equal(a["data"]["example_losses"], b["data"]["example_losses"])
    if "proxy_keep=0.8" in extra:  # the proxy's weights and momentum came back too
        assert a["selector"]["model"].keys() == b["selector"]["model"].keys()
        assert all(
            torch.equal(v, b["selector"]["model"][k]) for k, v in a["selector"]["model"].items()
        )
    assert main(["eval", str(straight), "--tta", "--json"]) == 0
    tta = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert tta["precision_at_1"] == result["precision_at_1"]  # the final evaluation used TTA
    if "precision=bfloat16" in extra:  # the file computes in float32, checked against float32
        assert main(["export", str(straight), "--out", str(tmp_path / "m.onnx")]) == 0
        assert "max logit difference" in capsys.readouterr().out


def test_the_training_transform_gives_normalized_channels_last_batches():
    recipe = get_recipe("fast-sgd")
    images = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
    position = BatchPosition(epoch=0, offset=0, global_batch_size=8, indices=torch.arange(8))
    x = recipe.train_transform(images, torch.Generator().manual_seed(0), position)
    assert x.shape == (8, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    plain = recipe.eval_preprocess()(images)
    assert plain.abs().max() < 3 and torch.allclose(x.abs().sum(), plain.abs().sum(), rtol=0.2)


@pytest.mark.parametrize(
    "views, weights",
    [(6, {(0, 0): 0.5, (-1, -1): 0.25, (1, 1): 0.25}),
     (18, {(dy, dx): 1 / 9 for dy in (-1, 0, 1) for dx in (-1, 0, 1)})],
)  # fmt: skip
def test_tta_averages_each_shift_and_its_mirror_with_its_weight(views, weights):
    recipe = get_recipe("fast-muon", get_recipe("fast-muon").Params(tta_views=views))
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 10, 20] = 1.0  # one lit pixel, away from the borders: each view moves it

    def model(v):  # the identity as a "model": the logits are the view itself
        return v.flatten(1)

    seen = recipe.tta_logits(model, x).view(32, 32)
    expected = torch.zeros(32, 32)
    for (dy, dx), weight in weights.items():
        # a view shifted by (dy, dx) shows pixel (y, x) at (y - dy, x - dx); its mirror at 31 - that
        expected[10 - dy, 20 - dx] += weight / 2
        expected[10 - dy, 31 - (20 - dx)] += weight / 2
    torch.testing.assert_close(seen, expected)


def test_small_epochs_train_on_smaller_crops_then_full_images():
    recipe = get_recipe(
        "fast-sgd", build_config("fast-sgd", {"small_epochs": 2, "small_size": 24}).params
    )
    images = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
    model = recipe.build_model(10, images)
    sizes = []
    for epoch in range(4):
        position = BatchPosition(
            epoch=epoch, offset=0, global_batch_size=8, indices=torch.arange(8)
        )
        x = recipe.train_transform(images, torch.Generator().manual_seed(epoch), position)
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert model(x).shape == (8, 10)  # global max-pool: any size goes through
        sizes.append(x.shape[-1])
    assert sizes == [24, 24, 32, 32]
    # the default trains on full images only, and draws nothing extra (old runs replay exactly)
    plain = get_recipe("fast-sgd")
    position = BatchPosition(epoch=0, offset=0, global_batch_size=8, indices=torch.arange(8))
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    plain.train_transform(images, g1, position)
    get_recipe("fast-sgd", build_config("fast-sgd", {"small_epochs": 0}).params).train_transform(
        images, g2, position
    )
    assert torch.equal(g1.get_state(), g2.get_state())


@pytest.mark.slow
def test_a_budget_counts_each_kind_of_step_at_its_own_cost(monkeypatch):
    """The fast recipe's steps after the whitening bias freezes skip a layer's input
    gradient: the budget times that kind of step too, instead of pricing every step as the
    costlier first kind. The timings are replaced so the arithmetic is exact (the real
    timing run: the next test)."""
    from cifarlab.train import budget

    seconds = iter([1.0, 0.5, 0.0])  # a bias-training step, a frozen step, the evaluation
    timed = []
    monkeypatch.setattr(
        budget, "_timed", lambda fn, repeats: timed.append(fn.__name__) or next(seconds)
    )
    monkeypatch.setattr(budget, "_clock", lambda: 0.0)  # the timing run itself: no time
    config = build_config("fast-sgd", {"batch_size": 64, "width": 32, "whiten_bias_epochs": 1})
    lines = []
    # 400 examples / 64: 6 steps an epoch, the first 6 at 1.0 s, then 0.5 s (each with the
    # margin); 15 s of startup; a quarter of a second to spare after the 16th step
    m = budget.STEP_MARGIN
    minutes = (15 + m * (6 * 1.0 + 10 * 0.5) + 0.25) / 60
    steps = budget.steps_for_budget(config, minutes, 400, 100, log=lines.append)
    assert steps == 16 and timed == ["one_step", "one_step", "evaluate"]
    assert (
        f"{m:.2f}, {0.5 * m:.2f} s a step" in lines[-1] and "16 steps (2.7 epochs) fit" in lines[-1]
    )


@pytest.mark.slow
def test_a_budget_prices_a_proxys_training_at_its_share_of_the_steps(monkeypatch):
    """A proxy that trains every 4th step: each kind of step is timed over whole cycles of
    4, so its training is in one timed step of 4, as in the run; an epoch counts the
    candidates drawn, as the run's does."""
    from cifarlab.recipes.proxy import ProxySelector
    from cifarlab.train import budget

    trained = []
    train_on = ProxySelector.train_on
    monkeypatch.setattr(ProxySelector, "train_on",
                        lambda self, *a: trained.append(a[2]) or train_on(self, *a))  # fmt: skip
    timed = []  # (timed calls, the proxy's training steps among them)

    def fake_timed(fn, repeats):
        fn()  # the warm-up, as budget._timed
        before = len(trained)
        for _ in range(repeats):
            fn()
        timed.append((repeats, len(trained) - before))
        return 1.0

    monkeypatch.setattr(budget, "_timed", fake_timed)
    monkeypatch.setattr(budget, "_clock", lambda: 0.0)
    config = build_config("fast-sgd", {"batch_size": 32, "width": 32, "whiten_bias_epochs": 1,
                                       "hard_keep": 1, "proxy_keep": 0.5, "proxy_width": 16,
                                       "proxy_train_every": 4})  # fmt: skip
    lines = []
    # 400 examples / 64 candidates: 6 steps an epoch; evaluation 1.0 s x 100 / 64 images
    m = budget.STEP_MARGIN
    minutes = (15 + 100 / 64 + 12 * m + 0.25) / 60
    assert budget.steps_for_budget(config, minutes, 400, 100, log=lines.append) == 12
    assert timed[:2] == [(4, 1), (4, 1)]  # the two kinds of step; then the evaluation
    assert "12 steps (2.0 epochs) fit" in lines[-1]


def test_a_budget_picks_the_steps_that_fit_and_saves_them(tmp_path, capsys, monkeypatch):
    """The budget's arithmetic on a clock the test controls: every timed call (each kind of
    training step, the evaluation of one batch) takes 2.0 s, the timing run itself none.
    The real steps still run; only their durations are fixed, so the machine's load cannot
    change the answer."""
    from cifarlab.train import budget

    monkeypatch.setattr(budget, "_clock", lambda: 0.0)
    monkeypatch.setattr(budget, "_timed", lambda fn, repeats: (fn(), 2.0)[1])
    monkeypatch.setattr(budget, "STEP_MARGIN", 1.03)  # the arithmetic below, whatever it's tuned to
    # 1 min = 60 s: 15 s of start-up, evaluation 2.0 s x 100 test images / 128 a batch =
    # 1.5625 s, leaving 43.4375 s for steps of 2.0 x 1.03 = 2.06 s: 21 steps (3.5 epochs).
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--budget", "1", "--run-dir", str(run), "--json"]) == 0
    out = capsys.readouterr().out
    assert (
        "budget 1 min: 2.06, 2.06 s a step, about 2 s to evaluate; 21 steps (3.5 epochs) fit" in out
    )
    assert json.loads((run / "config.json").read_text())["run"]["max_steps"] == 21
    assert json.loads(out.strip().splitlines()[-1])["step"] == 21
    # 0.4 min leaves 7.4 s: 3 steps, less than an epoch (6 steps: 6 x 2.06 + 1.6 + 15 s)
    assert main(["train", *SMALL, "--budget", "0.4", "--run-dir", str(tmp_path / "y")]) == 1
    assert "--budget 0.4 min: one epoch takes about 0.5 min" in capsys.readouterr().err
    assert not (tmp_path / "y" / "config.json").exists()
    assert (
        main(
            ["train", *SMALL, "--budget", "1", "--max-steps", "6", "--run-dir", str(tmp_path / "x")]
        )
        == 1
    )
    assert "--budget and --max-steps both set the run's length" in capsys.readouterr().err
