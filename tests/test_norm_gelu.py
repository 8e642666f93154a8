"""The fused max-pool, batch norm and GELU (models/norm_gelu.py, kernels.cpp part 5): output,
input gradient, the batch norm's parameter gradients and running statistics against
float64 for every shape the fast recipes use, in float32 and bfloat16; the max-pool's ties
and NaNs as PyTorch's; the GELU against the exact one; where it falls back to PyTorch's
operators; evaluation's one-pass kernel; the fast network trained through it against the
same network without it; and the choice between the two, timed, kept and followed."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifarlab import timed_choice
from cifarlab.models import norm_gelu
from cifarlab.models.fast import FastNet
from cifarlab.models.tutorial_cpu import build

pytestmark = pytest.mark.skipif(not norm_gelu.available(), reason="native kernels not built")

EPS = 1e-12  # the fast network's


def block_shapes(width: int, image: int) -> list[tuple[int, int, bool]]:
    """(channels, side, pooled) after each 3x3 convolution of the fast network on images of
    `image` pixels: each block's first is pooled, its second (and a residual third) not."""
    w4, side = width // 4, image - 1
    return [(w4, side, True), (w4, side // 2, False), (width, side // 2, True),
            (width, side // 4, False), (width, side // 4, True), (width, side // 8, False)]  # fmt: skip


# fast (192), fast-muon and fast-sgd (256), fast95 and fast96 (384), on full images and on
# progressive resizing's 24-pixel crops; then odd channel counts (the vector loops'
# remainders) and the smallest maps.
SHAPES = sorted(
    {s for width in (192, 256, 384) for image in (32, 24) for s in block_shapes(width, image)}
) + [(5, 9, True), (17, 6, True), (7, 2, True), (3, 1, False), (33, 5, False)]


def reference(y: torch.Tensor, weight, bias, pool: bool) -> torch.Tensor:
    x = F.max_pool2d(y, 2) if pool else y
    return F.gelu(F.batch_norm(x, None, None, weight, bias, True, 0.0, EPS))


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).norm() / want.norm()).item()


def batch_norm(channels: int, seed: int) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels, momentum=0.6, eps=EPS)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(channels, generator=g) + 0.5)
        norm.bias.copy_(torch.randn(channels, generator=g))
    return norm


@pytest.fixture(autouse=True)
def _own_timings(own_timings, monkeypatch):
    """Each test times into its own cache, and forgets what earlier tests measured."""
    monkeypatch.setattr(norm_gelu, "_chosen", {})


def fused(y: torch.Tensor, norm: nn.BatchNorm2d, pool: bool, route: str = "fused") -> torch.Tensor:
    if pool:
        return norm_gelu.pool_norm_gelu(y, nn.MaxPool2d(2), norm, nn.GELU(), route)
    return norm_gelu.norm_gelu(y, norm, nn.GELU(), route)


def modules(y: torch.Tensor, norm: nn.BatchNorm2d, pool: bool) -> torch.Tensor:
    return nn.GELU()(norm(F.max_pool2d(y, 2) if pool else y))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels, side, pool", SHAPES)
def test_output_gradients_and_statistics_match_float64(channels, side, pool, dtype):
    """Float32 differs from float64 by rounding (about 1e-6 of the norm); bfloat16 by its
    output's rounding (about 3e-3): a wrong statistic, slope or winner is off by far more."""
    g = torch.Generator().manual_seed(channels * 100 + side)
    batch = 3  # odd: uneven over two threads
    width = side + 1 if side in (9, 15) else side  # a few non-square maps
    y = torch.randn(batch, channels, side, width, generator=g).to(dtype)
    y = y.contiguous(memory_format=torch.channels_last).requires_grad_()
    norm = batch_norm(channels, side)
    norm.weight.requires_grad_(True)  # the fast network freezes it; its gradient is right too
    out = fused(y, norm, pool)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn(out.shape, generator=g).to(dtype)
    out.backward(grad)

    y64 = y.detach().double().requires_grad_()
    w64 = norm.weight.detach().double().requires_grad_()
    b64 = norm.bias.detach().double().requires_grad_()
    want = reference(y64, w64, b64, pool)
    want.backward(grad.double())
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    assert relative_error(out, want) < tolerance
    assert relative_error(y.grad, y64.grad) < tolerance
    # the parameters' gradients are summed in float32 from float32 (or bfloat16) inputs
    assert relative_error(norm.weight.grad, w64.grad) < tolerance
    assert relative_error(norm.bias.grad, b64.grad) < tolerance

    # running statistics: as nn.BatchNorm2d keeps them (momentum 0.6, unbiased variance)
    plain = batch_norm(channels, side).double()
    plain(F.max_pool2d(y64.detach(), 2) if pool else y64.detach())
    assert torch.allclose(norm.running_mean.double(), plain.running_mean, rtol=1e-5, atol=1e-6)
    assert torch.allclose(norm.running_var.double(), plain.running_var, rtol=1e-5, atol=1e-6)
    assert norm.num_batches_tracked.item() == 1


def test_ties_go_to_the_first_of_the_window_as_pytorchs_max_pool():
    """Many equal values in a window (small integers): the gradient lands where PyTorch's
    max-pool sends it (the first in row-major order), every other input gets exactly 0, and
    an odd last row and column get 0."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (3, 16, 9, 7), generator=g).float()
    y = y.contiguous(memory_format=torch.channels_last).requires_grad_()
    norm = batch_norm(16, 0)
    out = fused(y, norm, True)
    grad = torch.randn(out.shape, generator=g)
    out.backward(grad)
    y64 = y.detach().double().requires_grad_()
    weight, bias = norm.weight.detach().double(), norm.bias.detach().double()
    reference(y64, weight, bias, True).backward(grad.double())
    assert torch.equal(y.grad != 0, y64.grad != 0)
    assert relative_error(y.grad, y64.grad) < 1e-5
    assert (y.grad[:, :, 8, :] == 0).all() and (y.grad[:, :, :, 6] == 0).all()


def test_a_nan_reaches_the_output_as_with_pytorchs_operators():
    """A NaN in the input wins its window and spoils its channel's statistics: the whole
    channel is NaN, as PyTorch's operators make it, not quietly finite."""
    y = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    y[1, 2, 3, 4] = float("nan")
    out = fused(y, batch_norm(4, 0), True)
    plain = batch_norm(4, 0)
    want = reference(y.double(), plain.weight.detach().double(), plain.bias.detach().double(), True)
    assert torch.equal(torch.isnan(out), torch.isnan(want))
    assert torch.isnan(out[:, 2]).all() and not torch.isnan(out[:, [0, 1, 3]]).any()


def test_the_gelu_is_the_exact_one_within_float_rounding():
    """The kernel's erf (Abramowitz and Stegun 7.1.26, absolute error under 1.5e-7) and
    exponential: GELU(z) within 5e-7 x max(1, |z|) of float64's, z from -7 to 7."""
    y = torch.linspace(-3, 3, 20_001).reshape(1, 1, 1, -1).contiguous()  # one channel
    weight, bias = torch.tensor([4.0]), torch.tensor([0.0])
    out, _, _, mean, var = build.kernels().norm_gelu_forward(y, weight, bias, EPS, False)
    z = (y.double() - mean.double()) / (var.double() + EPS).sqrt() * 4
    assert z.min() < -6.5 and z.max() > 6.5
    error = (out.double() - F.gelu(z)).abs()
    assert (error <= 5e-7 * z.abs().clamp_min(1)).all(), error.max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pool", [True, False])
def test_evaluation_uses_the_running_statistics(pool, dtype):
    """In evaluation (no gradient) the one-pass kernel: the running statistics, not the
    batch's, against float64; they stay as they were."""
    g = torch.Generator().manual_seed(3)
    y = torch.randn(3, 48, 15, 15, generator=g).to(dtype)
    y = y.contiguous(memory_format=torch.channels_last)
    norm = batch_norm(48, 3)
    with torch.no_grad():
        norm.running_mean.copy_(torch.randn(48, generator=g))
        norm.running_var.copy_(torch.rand(48, generator=g) + 0.5)
    norm.eval()
    before = copy.deepcopy(norm.state_dict())
    with torch.no_grad():
        out = fused(y, norm, pool)
    x = F.max_pool2d(y.double(), 2) if pool else y.double()
    want = F.gelu(F.batch_norm(x, norm.running_mean.double(), norm.running_var.double(),
                               norm.weight.double(), norm.bias.double(), False, 0.0, EPS))  # fmt: skip
    assert relative_error(out, want) < (1e-6 if dtype == torch.float32 else 5e-3)
    assert all(torch.equal(before[k], v) for k, v in norm.state_dict().items())


def test_where_it_does_not_serve_pytorchs_operators_run():
    """Evaluation with a gradient to compute, a float16 tensor and the tanh GELU take
    PyTorch's operators: bit for bit the modules' own output."""
    y = torch.randn(3, 8, 10, 10).contiguous(memory_format=torch.channels_last)
    norm, pool, gelu = batch_norm(8, 1), nn.MaxPool2d(2), nn.GELU()
    norm.eval()
    y_grad = y.clone().requires_grad_()
    assert not norm_gelu.serves(y_grad, norm)
    assert torch.equal(norm_gelu.pool_norm_gelu(y_grad, pool, norm, gelu), gelu(norm(pool(y))))
    norm.train()
    tanh = nn.GELU(approximate="tanh")
    assert not norm_gelu.serves(y.to(torch.float16), norm)
    assert torch.equal(
        norm_gelu.norm_gelu(y, copy.deepcopy(norm), tanh), tanh(copy.deepcopy(norm)(y))
    )
    assert norm_gelu.serves(y, norm)


def test_native_off_gives_the_modules_own_function(monkeypatch):
    y = torch.randn(3, 8, 10, 10).contiguous(memory_format=torch.channels_last)
    norm, pool, gelu = batch_norm(8, 1), nn.MaxPool2d(2), nn.GELU()
    monkeypatch.setenv("CIFARLAB_NATIVE", "0")
    assert not norm_gelu.serves(y, norm)
    got = norm_gelu.pool_norm_gelu(y, pool, norm, gelu)
    assert torch.equal(got, gelu(batch_norm(8, 1)(pool(y))))


def test_either_layout_in_gives_the_same_result():
    y = torch.randn(3, 8, 9, 9)
    a = fused(y.contiguous(memory_format=torch.channels_last), batch_norm(8, 2), True)
    b = fused(y.contiguous(), batch_norm(8, 2), True)
    assert torch.equal(a, b)


@pytest.mark.parametrize("residual", [False, True])
def test_tensorboards_graph_of_the_fast_network_traces_the_same_twice(residual, tmp_path):
    """add_graph traces the network twice and checks the two agree: under a trace the
    kernels' tests on the tensor must not run (recorded in the graph, they failed it)."""
    from torch.utils.tensorboard import SummaryWriter

    net = FastNet(widths=(8, 16, 16), residual=residual).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with SummaryWriter(str(tmp_path)) as writer:
        writer.add_graph(net.train(), x)  # raises TracingCheckError if the traces differ


@pytest.mark.parametrize("residual", [False, True])
def test_the_fast_network_trains_the_same_with_and_without_it(residual, monkeypatch):
    """One training step of a small fast network (float32): logits, every parameter's
    gradient and the running statistics agree with PyTorch's operators' to rounding."""
    monkeypatch.setattr(norm_gelu, "TIMING_BATCH", 64)
    torch.manual_seed(0)
    model = FastNet(widths=(16, 32, 32), residual=residual, residual_init=0.5)
    model = model.to(memory_format=torch.channels_last).train()
    twin = copy.deepcopy(model)
    x = torch.randn(5, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (5,))

    def step(network):
        logits = network(x)
        F.cross_entropy(logits, labels).backward()
        return logits

    with norm_gelu.recording() as asked:  # times each shape (batch 64 here), then:
        step(copy.deepcopy(model))
    for choice in asked:  # the kernel for every shape, as where it was timed faster
        norm_gelu._chosen[choice] = True
    fast_logits = step(model)
    monkeypatch.setenv("CIFARLAB_NATIVE", "0")
    plain_logits = step(twin)
    assert torch.allclose(fast_logits, plain_logits, rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        if a.grad is not None:
            assert relative_error(a.grad, b.grad.double()) < 1e-4, name
    for (name, a), b in zip(model.named_buffers(), twin.buffers(), strict=True):
        assert torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-6), name


def test_the_faster_way_is_timed_once_kept_and_followed(tmp_path, monkeypatch):
    """The first call of a shape times both ways and keeps the verdict in the cache; the
    call and every later one take the way it names, bit for bit that way's output; a
    verdict changed in the cache (as another machine's would be) is followed, not remeasured."""
    monkeypatch.setattr(norm_gelu, "TIMING_BATCH", 64)
    y = torch.randn(3, 16, 10, 10).contiguous(memory_format=torch.channels_last)
    by_kernel, by_modules = fused(y, batch_norm(16, 1), True), modules(y, batch_norm(16, 1), True)
    assert not torch.equal(by_kernel, by_modules)  # the two ways are told apart by their bits

    out = fused(y, batch_norm(16, 1), True, route="auto")
    (kept,) = (tmp_path / "cache" / "timings").glob("norm-gelu-*.json")
    verdict = json.loads(kept.read_text())
    assert verdict["fused"] == (verdict["ms"]["fused"] < verdict["ms"]["modules"])
    assert all(ms > 0 for ms in verdict["ms"].values())
    assert torch.equal(out, by_kernel if verdict["fused"] else by_modules)
    assert norm_gelu.describe({(16, 10, 10, "float32", True, True): verdict["fused"]}) == (
        "pool, batch norm and GELU fused" if verdict["fused"] else ""
    )

    kept.write_text(json.dumps({**verdict, "fused": not verdict["fused"]}))
    monkeypatch.setattr(norm_gelu, "_chosen", {})
    timed_choice.forget()  # a new process: reads the file
    with norm_gelu.recording() as asked:
        out = fused(y, batch_norm(16, 1), True, route="auto")
    assert torch.equal(out, by_modules if verdict["fused"] else by_kernel)
    assert asked == {(16, 10, 10, "float32", True, True): not verdict["fused"]}
    assert json.loads(kept.read_text())["fused"] != verdict["fused"]  # not measured again
    # evaluation is its own choice (the one-pass kernel): timed apart
    with torch.no_grad():
        fused(y, batch_norm(16, 1).eval(), True, route="auto")
    assert len(list((tmp_path / "cache" / "timings").glob("norm-gelu-*.json"))) == 2


def test_the_choices_in_words():
    a, b = (8, 4, 4, "bfloat16", True, True), (8, 2, 2, "bfloat16", False, True)
    assert norm_gelu.describe({}) == norm_gelu.describe({a: False, b: False}) == ""
    assert norm_gelu.describe({a: True, b: True}) == "pool, batch norm and GELU fused"
    assert norm_gelu.describe({a: True, b: False}) == (
        "pool, batch norm and GELU fused for 1 of 2 shapes (timed faster here)"
    )
    with pytest.raises(ValueError, match="route must be one of auto, fused"):
        norm_gelu.norm_gelu(torch.randn(2, 3, 4, 4), batch_norm(3, 0), nn.GELU(), "always")
