"""Convolutions in bfloat16 (models/bf16_conv.py): every filter-gradient route against float64
for every shape the fast recipes use, the layer against plain autocast, the float32 path
untouched, the timed verdicts kept per machine, and a bfloat16 run that learns and resumes
exactly."""

import json

import pytest
import torch

from cifarlab import timed_choice
from cifarlab.config import build_config
from cifarlab.flops import step_flops
from cifarlab.models import bf16_conv
from cifarlab.recipes import TrainingPlan

BF16 = torch.bfloat16


@pytest.fixture(autouse=True)
def _own_timings(own_timings, monkeypatch):
    """Each test times into its own cache, and forgets what earlier tests measured."""
    monkeypatch.setattr(bf16_conv, "_used", {})  # the routes this process already asked for


def fast_shapes(width: int) -> list[tuple[int, int, int]]:
    """(in channels, out channels, side) of the fast network's six 3x3 convolutions."""
    w4 = width // 4
    return [(24, w4, 31), (w4, w4, 15), (w4, width, 15), (width, width, 7), (width, width, 7),
            (width, width, 3)]  # fmt: skip


SHAPES = sorted({s for width in (32, 64, 192, 256) for s in fast_shapes(width)}) + [
    (5, 7, 1),  # a 1x1 image: only the centre tap sees a pixel
    (3, 4, 6),
]


def _bf16_inputs(batch, c_in, c_out, height, width, layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (
        torch.randn(batch, c_in, height, width, generator=g)
        .to(BF16)
        .contiguous(memory_format=layout)
    )
    w = (torch.randn(c_out, c_in, 3, 3, generator=g) * 0.1).to(BF16)
    grad_y = torch.randn(batch, c_out, height, width, generator=g).to(BF16)
    return x, w, grad_y.contiguous(memory_format=layout)


@pytest.mark.parametrize("route", sorted(bf16_conv.WEIGHT_GRAD_ROUTES))
@pytest.mark.parametrize("c_in, c_out, side", SHAPES)
def test_every_filter_gradient_route_is_the_filter_gradient(route, c_in, c_out, side):
    """Against float64 on the same bfloat16 inputs: the routes differ only in rounding (at
    most bfloat16's, 2^-8 relative, for the one that rounds its result to bfloat16)."""
    batch = 3  # odd: uneven over two threads
    layout = torch.channels_last if side % 2 else torch.contiguous_format
    x, w, grad_y = _bf16_inputs(batch, c_in, c_out, side, side + (side > 1), layout)
    grad_y = grad_y[..., : x.shape[-1]]
    want = torch.ops.aten.convolution_backward(
        grad_y.double(), x.double(), w.double(), None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
        [False, True, False],
    )[1]  # fmt: skip
    got = bf16_conv.WEIGHT_GRAD_ROUTES[route](grad_y, x, w, 1)
    assert got.dtype == torch.float32 and got.shape == want.shape
    error = (got.double() - want).norm() / want.norm()
    assert error < 4e-3, f"{route} at {c_in}->{c_out}, {side}px: relative error {error:.1e}"


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_the_unfolded_route_sums_its_chunks_to_the_whole_batchs_gradient(layout, monkeypatch):
    """Chunks of 2 images over a batch of 7 (the last chunk short): the same gradient as one
    chunk of all 7, within float32's rounding of the sum."""
    x, w, grad_y = _bf16_inputs(7, 6, 10, 5, 5, layout)
    whole = bf16_conv._unfolded_weight_grad(grad_y, x, w, 1)
    image_bytes = 5 * 5 * 9 * 6 * x.element_size()  # one image's unfolded rows
    monkeypatch.setattr(bf16_conv, "UNFOLDED_CHUNK_BYTES", 2 * image_bytes)
    chunked = bf16_conv._unfolded_weight_grad(grad_y, x, w, 1)
    want = torch.ops.aten.convolution_backward(
        grad_y.double(), x.double(), w.double(), None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
        [False, True, False],
    )[1]  # fmt: skip
    for got in (whole, chunked):
        assert ((got.double() - want).norm() / want.norm()) < 4e-3
    # rounded to bfloat16 per chunk, so not bit for bit: within two bfloat16 roundings
    assert ((chunked - whole).norm() / whole.norm()) < 8e-3


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_the_layer_under_autocast_matches_plain_autocast_and_is_untouched_outside(layout):
    torch.manual_seed(0)
    conv = bf16_conv.Conv2d(16, 32, 3, padding=1, bias=False)
    plain = torch.nn.Conv2d(16, 32, 3, padding=1, bias=False)
    plain.load_state_dict(conv.state_dict())  # the same parameters and state-dict keys
    x = torch.randn(5, 16, 9, 9).contiguous(memory_format=layout)

    outside = conv(x)  # no autocast: nn.Conv2d's own forward, bit for bit
    assert outside.dtype == torch.float32 and torch.equal(outside, plain(x))

    runs = {}
    for name, layer in (("routes", conv), ("autocast", plain)):
        xs = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=BF16):
            y = layer(xs)
        assert y.dtype == BF16
        upstream = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(BF16)
        y.backward(upstream)
        runs[name] = (y.float(), xs.grad.float(), layer.weight.grad)
        assert layer.weight.grad.dtype == torch.float32
    assert type(conv.weight.grad) is torch.Tensor
    for got, want in zip(runs["routes"], runs["autocast"], strict=True):
        assert ((got - want).norm() / want.norm()) < 1e-2


def test_the_layer_leaves_what_it_does_not_serve_to_pytorch():
    strided = bf16_conv.Conv2d(4, 4, 3, stride=2, padding=1, bias=False)
    biased = bf16_conv.Conv2d(4, 4, 3, padding=1)
    x = torch.randn(2, 4, 8, 8)
    with torch.autocast("cpu", dtype=BF16):
        assert not bf16_conv.serves(x, strided) and not bf16_conv.serves(x, biased)
        assert strided(x).grad_fn.name() != "_Bf16ConvBackward"
        plain = bf16_conv.Conv2d(4, 4, 3, padding=1, bias=False)
        assert bf16_conv.serves(x, plain)
        assert plain(x).grad_fn.name() == "_Bf16ConvBackward"
    with torch.autocast("cpu", dtype=torch.float16):
        assert not bf16_conv.serves(x, plain)  # only bfloat16 takes these routes


def test_a_verdict_is_measured_once_per_machine_and_key_and_kept(tmp_path):
    calls = []

    def measure():
        calls.append(1)
        return {"route": "a", "n": len(calls)}

    first = timed_choice.remembered("probe", {"shape": [1, 2]}, measure)
    path = timed_choice.verdict_path("probe", {"shape": [1, 2]})
    assert first == {"route": "a", "n": 1} and json.loads(path.read_text()) == first
    assert str(path).startswith(str(tmp_path / "cache" / "timings"))
    timed_choice.forget()  # a new process: reads the file, does not measure
    assert timed_choice.remembered("probe", {"shape": [1, 2]}, measure) == first
    assert len(calls) == 1
    assert timed_choice.remembered("probe", {"shape": [2, 1]}, measure)["n"] == 2  # another key
    timed_choice.forget()
    path.write_text("{half a verdict")  # unreadable: measured again, not trusted
    assert timed_choice.remembered("probe", {"shape": [1, 2]}, measure)["n"] == 3


def test_measuring_a_verdict_leaves_the_global_generator_where_it_was(tmp_path):
    # A run seeds, then chooses its routes (timing builds and runs a network when nothing is
    # cached), then draws its initial weights: the same weights whether it timed or read.
    def measure():
        torch.nn.Linear(64, 64)  # a network built to be timed draws its weights
        return {"draws": torch.rand(3).tolist()}

    torch.manual_seed(7)
    timed_choice.remembered("probe-rng", {}, measure)  # measured here
    after_measuring = torch.rand(4)
    timed_choice.forget()
    torch.manual_seed(7)
    timed_choice.remembered("probe-rng", {}, measure)  # read from the cache
    assert torch.equal(torch.rand(4), after_measuring)


def test_the_route_timing_settles_each_shape_once(tmp_path):
    route = bf16_conv.weight_grad_route(8, 8, 5, 5, 3, 1)
    assert route in bf16_conv.WEIGHT_GRAD_ROUTES
    (verdict_file,) = (tmp_path / "cache" / "timings").glob("bf16-conv-weight-grad-*.json")
    verdict = json.loads(verdict_file.read_text())
    assert verdict["route"] == route == min(verdict["ms"], key=verdict["ms"].get)
    assert set(verdict["ms"]) == set(bf16_conv.WEIGHT_GRAD_ROUTES)


def test_precision_setting_decides_the_arithmetic_and_not_the_flop_count():
    cpu = torch.device("cpu")
    recipes = {
        p: build_config("fast", {"precision": p}).recipe for p in ("float32", "bfloat16", "auto")
    }
    assert recipes["float32"].compute_dtype(cpu) is None
    assert recipes["bfloat16"].compute_dtype(cpu) == BF16
    assert recipes["float32"].compute_dtype(torch.device("cuda")) is None
    auto = recipes["auto"].compute_dtype(cpu)
    if bf16_conv.native_bf16():  # then it was timed, and the verdict kept
        (kept,) = timed_choice.timings_folder().glob("fast-net-bf16-*.json")
        assert (auto == BF16) == json.loads(kept.read_text())["bfloat16"]
    else:
        assert auto is None
    counts = set()
    for precision in ("float32", "bfloat16"):
        config = build_config("fast", {"precision": precision, "width": 32})
        plan = TrainingPlan.for_run(config, 50_000)
        counts.add(step_flops(config, 100, plan))
    assert len(counts) == 1


def test_a_bfloat16_forward_of_the_fast_network_stays_close_to_float32():
    torch.manual_seed(0)
    recipe = build_config("fast", {"width": 32, "precision": "bfloat16"}).recipe
    model = recipe.build_model(10, torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8))
    x = recipe.eval_preprocess()(torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8))
    model.train()
    want = model(x)
    with recipe.autocast(torch.device("cpu")):
        got = model(x)
    assert got.dtype == BF16
    assert ((got.float() - want).norm() / want.norm()) < 0.03
