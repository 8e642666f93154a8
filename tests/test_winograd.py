"""Winograd's F(4x4, 3x3) convolution (models/winograd.py): the output and both gradients
against float64 for every shape the fast recipes use (full-size and cropped images, odd
batches, both layouts), the network and a training run by it, the timed choice per shape,
and what it leaves to the library."""

import json

import pytest
import torch
import torch.nn.functional as F

from cifarlab import timed_choice
from cifarlab.cli import main
from cifarlab.config import build_config
from cifarlab.flops import step_flops
from cifarlab.models import norm_gelu, winograd
from cifarlab.models.fast import FastNet
from cifarlab.models.tutorial_cpu import build
from cifarlab.recipes import TrainingPlan
from cifarlab.run.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not winograd.available(), reason="native kernels not built")


@pytest.fixture(autouse=True)
def _own_timings(own_timings, monkeypatch):
    """Each test times into its own cache, and forgets what earlier tests measured."""
    monkeypatch.setattr(winograd, "_used", {})


def fast_shapes(width: int, image: int) -> list[tuple[int, int, int]]:
    """(in channels, out channels, side) of the fast network's 3x3 convolutions on images
    of `image` pixels (the whitening takes one off; each block's pool halves)."""
    w4, side = width // 4, image - 1
    return [(24, w4, side), (w4, w4, side // 2), (w4, width, side // 2),
            (width, width, side // 4), (width, width, side // 8)]  # fmt: skip


# fast (192), fast-muon and fast-sgd (256), the runs above 94% (320, 384), on full images
# and on progressive resizing's 24-pixel crops; and the edge cases of the tiling.
SHAPES = sorted(
    {s for width in (192, 256, 320, 384) for image in (32, 24) for s in fast_shapes(width, image)}
) + [(5, 7, 1), (3, 4, 2), (6, 5, 5), (4, 3, 9)]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).norm() / want.norm()).item()


@pytest.mark.parametrize("c_in, c_out, side", SHAPES)
def test_output_and_both_gradients_match_float64(c_in, c_out, side):
    """The same inputs in float64 through the library's convolution: Winograd in float32
    differs by rounding only (about 1e-6 of the norm; the direct float32 sum about 1e-7)."""
    g = torch.Generator().manual_seed(side)
    batch = 3 if side > 2 else 1  # odd: uneven over two threads
    width = side + 1 if side in (5, 9) else side  # a few non-square maps
    layout = torch.channels_last if side % 2 else torch.contiguous_format
    x = torch.randn(batch, c_in, side, width, generator=g, dtype=torch.float64)
    w = torch.randn(c_out, c_in, 3, 3, generator=g, dtype=torch.float64) / (3 * c_in**0.5)
    grad_y = torch.randn(batch, c_out, side, width, generator=g, dtype=torch.float64)
    xd, wd = x.clone().requires_grad_(), w.clone().requires_grad_()
    want = F.conv2d(xd, wd, padding=1)
    want.backward(grad_y)

    xs = x.float().contiguous(memory_format=layout).requires_grad_()
    ws = w.float().contiguous(memory_format=layout).requires_grad_()
    got = winograd.winograd_conv3x3(xs, ws)
    got.backward(grad_y.float())
    assert got.shape == want.shape and got.dtype == torch.float32
    for name, a, b in (("output", got, want), ("input gradient", xs.grad, xd.grad),
                       ("filter gradient", ws.grad, wd.grad)):  # fmt: skip
        error = relative_error(a, b)
        assert error < 2e-5, f"{name} at {c_in}->{c_out}, {side}x{width}: {error:.1e}"
    assert ws.grad.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("images_a_chunk", [1, 2, 7])
def test_a_batch_worked_through_in_chunks_gives_the_same_convolution(monkeypatch, images_a_chunk):
    """Chunks of 1 and 2 images (the last one short) and one chunk for the whole batch: the
    output and both gradients of the same float64 reference, with buffers reused."""
    c_in, c_out, side, batch = 6, 5, 7, 5
    bytes_an_image = 36 * 4 * (c_in + c_out) * 4  # a 7x7 map is 2x2 tiles
    monkeypatch.setattr(winograd, "CHUNK_BYTES", images_a_chunk * bytes_an_image)
    chunks = winograd._chunks(batch, side, side, c_in + c_out)
    assert [c.stop - c.start for c in chunks] == {1: [1] * 5, 2: [2, 2, 1], 7: [5]}[images_a_chunk]
    g = torch.Generator().manual_seed(images_a_chunk)
    x = torch.randn(batch, c_in, side, side, generator=g, dtype=torch.float64)
    w = torch.randn(c_out, c_in, 3, 3, generator=g, dtype=torch.float64) / 8
    grad_y = torch.randn(batch, c_out, side, side, generator=g, dtype=torch.float64)
    xd, wd = x.clone().requires_grad_(), w.clone().requires_grad_()
    F.conv2d(xd, wd, padding=1).backward(grad_y)
    xs, ws = x.float().requires_grad_(), w.float().requires_grad_()
    got = winograd.winograd_conv3x3(xs, ws)
    got.backward(grad_y.float())
    for name, a, b in (("output", got, F.conv2d(x, w, padding=1)),
                       ("input gradient", xs.grad, xd.grad), ("filter gradient", ws.grad, wd.grad)):  # fmt: skip
        assert relative_error(a, b) < 2e-5, name


def test_the_transforms_are_the_algorithm():
    """One tile by hand: A^T [(G w G^T) * (B^T d B)] A is the 3x3 correlation of the 6x6
    input tile, the 4x4 valid part; and the filter transform's adjoint is its adjoint."""
    g = torch.Generator().manual_seed(0)
    d = torch.randn(6, 6, generator=g, dtype=torch.float64)
    w = torch.randn(3, 3, generator=g, dtype=torch.float64)
    tile = winograd.AT @ ((winograd.G @ w @ winograd.G.T) * (winograd.BT @ d @ winograd.BT.T))
    want = F.conv2d(d.view(1, 1, 6, 6), w.view(1, 1, 3, 3)).view(4, 4)
    assert torch.allclose(tile @ winograd.AT.T, want, atol=1e-12)

    weight = torch.randn(5, 4, 3, 3, generator=g, dtype=torch.float64)
    u = winograd.filter_transform(weight)  # [36, 4, 5]
    assert torch.allclose(u[:, 1, 2].view(6, 6), winograd.G @ weight[2, 1] @ winograd.G.T)
    grad_u = torch.randn(36, 4, 5, generator=g, dtype=torch.float64)
    lhs = (u * grad_u).sum()
    rhs = (weight * winograd.filter_transform_grad(grad_u)).sum()
    assert torch.allclose(lhs, rhs)
    mirrored = winograd.filter_transform(weight, mirrored=True)  # [36, 5, 4]
    want = winograd.filter_transform(weight.flip(2, 3).transpose(0, 1))
    assert torch.allclose(mirrored, want)


def test_the_kernels_refuse_what_they_cannot_read():
    kernels = build.kernels()
    with pytest.raises(RuntimeError, match="contiguous float32"):
        kernels.winograd_input(torch.zeros(1, 4, 4, 2, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="contiguous float32"):
        kernels.winograd_input(torch.zeros(1, 2, 4, 4).permute(0, 2, 3, 1))  # not [N, H, W, C]
    with pytest.raises(RuntimeError, match="tiles"):
        kernels.winograd_output(torch.zeros(36, 5, 3), 1, 4, 4)  # a 4x4 map is one tile
    x = torch.zeros(2, 7, 7, 3)  # 8 tiles
    with pytest.raises(RuntimeError, match=r"out has shape \[36, 7, 3\], not \[36, 8, 3\]"):
        kernels.winograd_input(x, out=torch.empty(36, 7, 3))
    with pytest.raises(RuntimeError, match="out must be a contiguous float32"):
        kernels.winograd_output_grad(x, out=torch.empty(36, 3, 8).transpose(1, 2))
    given = torch.empty(2, 7, 7, 3)
    assert (
        kernels.winograd_output(torch.ones(36, 8, 3), 2, 7, 7, out=given).data_ptr()
        == given.data_ptr()
    )


def test_the_network_by_winograd_computes_the_direct_network():
    torch.manual_seed(0)
    direct = FastNet(10, widths=(8, 32, 32), residual=True, residual_init=0.5)
    by_winograd = FastNet(
        10, widths=(8, 32, 32), residual=True, residual_init=0.5, convolution="winograd"
    )
    by_winograd.load_state_dict(direct.state_dict())  # the same parameters and keys
    x = torch.randn(5, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    runs = []
    for net in (direct, by_winograd):
        logits = net(x)
        logits.square().sum().backward()
        runs.append((logits, *(p.grad for p in net.parameters() if p.requires_grad)))
    assert by_winograd(x).grad_fn is not None
    for got, want in zip(runs[1], runs[0], strict=True):
        assert relative_error(got, want.double()) < 1e-4


def test_auto_times_each_shape_once_and_takes_the_faster(tmp_path):
    conv = winograd.Conv2d(16, 16, 3, padding=1, bias=False, algorithm="auto")
    x = torch.randn(2, 16, 7, 7)
    conv(x)
    (kept,) = (tmp_path / "cache" / "timings").glob("winograd-conv-*.json")
    verdict = json.loads(kept.read_text())
    assert verdict["winograd"] == (verdict["ms"]["winograd"] < verdict["ms"]["direct"])
    assert winograd.routes_used() == {(16, 16, 7, 7): verdict["winograd"]}
    by_winograd = conv(x).grad_fn.name() == "_WinogradConvBackward"
    assert by_winograd == verdict["winograd"]

    # A kept verdict is obeyed as read: the other answer, written by hand, is taken.
    kept.write_text(json.dumps({**verdict, "winograd": not verdict["winograd"]}))
    timed_choice.forget()
    winograd._used.clear()
    assert (conv(x).grad_fn.name() == "_WinogradConvBackward") != by_winograd
    assert "of 1 convolution shapes" in winograd.choices_line()


def test_what_it_does_not_serve_goes_to_the_library():
    x = torch.randn(2, 4, 8, 8)
    layers = {
        "strided": winograd.Conv2d(4, 4, 3, stride=2, padding=1, bias=False, algorithm="winograd"),
        "biased": winograd.Conv2d(4, 4, 3, padding=1, algorithm="winograd"),
        "5x5": winograd.Conv2d(4, 4, 5, padding=2, bias=False, algorithm="winograd"),
        "direct": winograd.Conv2d(4, 4, 3, padding=1, bias=False),
    }
    for name, layer in layers.items():
        plain = torch.nn.Conv2d(4, 4, layer.kernel_size, layer.stride, layer.padding,
                                bias=layer.bias is not None)  # fmt: skip
        plain.load_state_dict(layer.state_dict())
        assert torch.equal(layer(x), plain(x)), name  # the library's, bit for bit
    chosen = winograd.Conv2d(4, 4, 3, padding=1, bias=False, algorithm="winograd")
    assert chosen(x).grad_fn.name() == "_WinogradConvBackward"
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bfloat16 keeps its own routes
        assert chosen(x).grad_fn.name() == "_Bf16ConvBackward"
    assert not winograd.serves(x.double(), chosen.double())
    with pytest.raises(ValueError, match="algorithm must be one of"):
        winograd.Conv2d(4, 4, 3, padding=1, algorithm="fft")


def test_the_setting_changes_the_arithmetic_not_the_flop_count():
    counts = set()
    for convolution in ("direct", "winograd", "auto"):
        config = build_config("fast", {"convolution": convolution, "width": 32})
        plan = TrainingPlan.for_run(config, 50_000)
        counts.add(step_flops(config, 100, plan))
    assert len(counts) == 1
    with pytest.raises(Exception, match="convolution"):
        build_config("fast", {"convolution": "fft"})


def test_each_setting_says_its_arithmetic_as_results_record_it():
    cpu = torch.device("cpu")

    def arithmetic(**settings) -> tuple[str, str]:
        """What the recipe says, and what its pool, batch norm and GELU chose, in words."""
        recipe = build_config("fast", {"width": 32, "precision": "float32", **settings}).recipe
        with norm_gelu.recording() as asked:
            recipe.prepare_device(cpu)  # auto: every shape timed here, as before training
        # the six after the convolutions, each timed for training and for evaluation
        assert len(asked) == (12 if norm_gelu.available() else 0)
        fused = norm_gelu.describe(asked)
        return recipe.arithmetic(cpu), f"; {fused}" if fused else ""

    said, fused = arithmetic()
    assert said == "float32" + fused
    every = "float32, Winograd for every 3x3 convolution it serves"
    said, fused = arithmetic(convolution="winograd")
    assert said == every + fused
    assert winograd.routes_used() == {}  # winograd does not time; auto times every shape
    said, fused = arithmetic(convolution="auto")
    used = winograd.routes_used()
    chosen = [f"{c}->{o} at {h}x{w}" for (c, o, h, w), fast in sorted(used.items()) if fast]
    assert len(used) == 5 and said.startswith(f"float32, Winograd for {len(chosen)} of 5 ")
    assert all(shape in said for shape in chosen) and said.endswith(fused)
    said, fused = arithmetic(precision="bfloat16", convolution="auto")
    assert said == "bfloat16" + fused


def test_a_run_by_winograd_trains_resumes_exactly_and_exports(tmp_path, capsys):
    args = ["--recipe", "fast", "--synthetic", "--set", "synthetic_train_per_class=12",
            "--set", "synthetic_test_per_class=4", "--batch-size", "24", "--threads", "1",
            "--no-progress", "--set", "width=64", "--set", "convolution=winograd",
            "--set", "precision=float32",
            "--max-steps", "8", "--checkpoint-every", "4"]  # fmt: skip
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    with norm_gelu.recording() as asked:
        assert main(["train", *args, "--run-dir", str(straight)]) == 0
    fused = norm_gelu.describe(asked)
    resumed.mkdir()
    for name in ("config.json", "ckpt-00000004.pt"):
        (resumed / name).write_bytes((straight / name).read_bytes())
    assert main(["train", "--run-dir", str(resumed), "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().out
    a, b = (load_checkpoint(run / "ckpt-00000008.pt") for run in (straight, resumed))
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    first = load_checkpoint(straight / "ckpt-00000004.pt")["model"]
    moved = [
        n for n, t in a["model"].items() if t.is_floating_point() and not torch.equal(t, first[n])
    ]
    assert any("blocks.1.conv" in n for n in moved)  # the Winograd layers were trained
    for run in (straight, resumed):  # the result says how it was computed
        (entry,) = json.loads((run / "result.json").read_text())["history"][-1:]
        assert entry["arithmetic"] == "float32, Winograd for every 3x3 convolution it serves" + (
            f"; {fused}" if fused else ""
        )

    # Export traces the library's convolution: the same function as the Winograd one.
    out = tmp_path / "model.onnx"
    assert main(["export", str(straight), "--out", str(out), "--check-images", "40"]) == 0
    assert "argmax agreement 100.00%" in capsys.readouterr().out


def test_native_off_after_the_kernels_loaded_turns_winograd_off(monkeypatch):
    """fast_step_profile.py --against-env sets CIFARLAB_NATIVE=0 in a process that has
    loaded the kernels: Winograd must stop serving then, as the fused layers do."""
    x = torch.randn(2, 8, 7, 7)
    layer = winograd.Conv2d(8, 8, 3, padding=1, bias=False, algorithm="winograd")
    assert build.kernels() is not None and winograd.serves(x, layer)
    monkeypatch.setenv("CIFARLAB_NATIVE", "0")
    assert not winograd.available() and not winograd.serves(x, layer)
    assert torch.equal(layer(x), F.conv2d(x, layer.weight, padding=1))


def test_without_the_native_kernels_every_algorithm_is_the_library(monkeypatch):
    monkeypatch.setattr(build, "_tried", False)
    monkeypatch.setattr(build, "_kernels", None)
    monkeypatch.setenv("CIFARLAB_NATIVE", "0")
    x = torch.randn(2, 8, 7, 7)
    for algorithm in winograd.ALGORITHMS:
        layer = winograd.Conv2d(8, 8, 3, padding=1, bias=False, algorithm=algorithm)
        assert not winograd.serves(x, layer)
        assert torch.equal(layer(x), F.conv2d(x, layer.weight, padding=1)), algorithm
    assert winograd.routes_used() == {}  # nothing was timed
    recipe = build_config("fast", {"convolution": "auto", "precision": "float32"}).recipe
    assert recipe.arithmetic(torch.device("cpu")) == (
        "float32, direct convolutions (the Winograd kernels are not built here)"
    )
