"""The tutorial network's fast path computes the reference's function: outputs, input and
parameter gradients, the pooling, the LRN, the first convolution with its pool and the
oneDNN fully connected layers on their own, and a few real training steps."""

import shutil

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from cifarlab.models.lrn import local_response_norm
from cifarlab.models.tutorial import TutorialNet, same_max_pool
from cifarlab.models.tutorial_cpu import build as native
from cifarlab.models.tutorial_cpu import onednn_linear, same_max_pool_unpadded
from cifarlab.models.tutorial_cpu.conv_pool import conv_then_max_pool
from cifarlab.models.tutorial_cpu.lrn import (
    _LRNChannelsLast,
    _NativeLRN,
    local_response_norm_channels_last,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _twins(dtype, device):
    torch.manual_seed(0)
    reference = TutorialNet(10, fast=False).to(device, dtype)
    fast = TutorialNet(10, fast=True).to(device, dtype)
    fast.load_state_dict(reference.state_dict())
    return reference, fast.to(memory_format=torch.channels_last)


def _outputs_and_gradients(model, x, upstream):
    x = x.clone().requires_grad_()
    out = model(x)
    (out * upstream).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.detach(), x.grad, grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "dtype, rtol, atol", [(torch.float64, 1e-12, 1e-14), (torch.float32, 1e-4, 1e-5)]
)
def test_fast_path_matches_the_reference(device, dtype, rtol, atol):
    reference, fast = _twins(dtype, device)
    x = torch.randn(16, 3, 24, 24, dtype=dtype, device=device) * 3
    upstream = torch.randn(16, 10, dtype=dtype, device=device)
    out_r, dx_r, grads_r = _outputs_and_gradients(reference, x, upstream)
    out_f, dx_f, grads_f = _outputs_and_gradients(fast, x, upstream)
    torch.testing.assert_close(out_f, out_r, rtol=rtol, atol=atol)
    torch.testing.assert_close(dx_f, dx_r, rtol=rtol, atol=atol)
    for name, g in grads_r.items():
        scale = g.abs().max()
        torch.testing.assert_close(grads_f[name] / scale, g / scale, rtol=rtol, atol=atol, msg=name)
    with torch.no_grad():  # the inference (export) branch
        torch.testing.assert_close(fast(x), out_r, rtol=rtol, atol=atol)


@pytest.mark.parametrize("size", [24, 12, 7, 6, 5, 2])
def test_unpadded_pool_equals_the_padded_one(size):
    x = torch.randn(3, 4, size, size)
    torch.testing.assert_close(same_max_pool_unpadded(x), same_max_pool(x), rtol=0, atol=0)
    cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(same_max_pool_unpadded(cl), same_max_pool(x), rtol=0, atol=0)


def test_channels_last_lrn_passes_gradcheck_and_equals_the_reference():
    x = (torch.randn(2, 11, 5, 4, dtype=torch.float64) * 10).requires_grad_()
    torch.autograd.gradcheck(lambda t: local_response_norm_channels_last(t, radius=2), (x,))
    torch.autograd.gradcheck(lambda t: local_response_norm_channels_last(t, beta=0.6), (x,))
    torch.testing.assert_close(local_response_norm_channels_last(x), local_response_norm(x))


# Where a compiler and ninja are installed (CI, our machines) the kernel must build: a
# silent fallback would hide a broken kernel behind the slower path.
BUILDS_HERE = bool(shutil.which("c++") and shutil.which("ninja"))


@pytest.mark.skipif(not BUILDS_HERE, reason="no C++ compiler or ninja: the PyTorch path serves")
@pytest.mark.parametrize("radius", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("channels", [64, 7, 3])
def test_native_lrn_equals_the_float64_reference(radius, channels):
    assert native.kernels() is not None
    torch.manual_seed(radius)
    x = (torch.randn(3, channels, 5, 4) * 10).contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(3, channels, 5, 4)
    x32 = x.clone().requires_grad_()
    out = local_response_norm_channels_last(x32, radius=radius)
    assert type(out.grad_fn).__name__ == _NativeLRN.__name__ + "Backward"
    out.backward(upstream)
    x64 = x.double().requires_grad_()
    want = local_response_norm(x64, radius=radius)
    want.backward(upstream.double())
    torch.testing.assert_close(out.double(), want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-4, atol=1e-6)
    empty = torch.empty(0, channels, 5, 4).contiguous(memory_format=torch.channels_last)
    assert (
        local_response_norm_channels_last(empty.requires_grad_(), radius=radius).shape
        == empty.shape
    )
    with torch.no_grad():  # evaluation: the kernel's forward alone
        torch.testing.assert_close(
            local_response_norm_channels_last(x, radius=radius), out.detach(), rtol=0, atol=0
        )


@pytest.mark.skipif(not BUILDS_HERE, reason="no C++ compiler or ninja: the PyTorch path serves")
@pytest.mark.parametrize("x_layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("g_layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("channels_last_out", [True, False])
def test_native_lrn_reads_and_writes_either_layout(x_layout, g_layout, channels_last_out):
    """NCHW in and out is how the LRNs meet the Fourier convolution (fft_conv.py): the
    values are the channels-last kernel's, the output in the layout asked for, the input
    gradient in x's."""
    torch.manual_seed(1)
    x = (torch.randn(3, 64, 5, 4) * 10).contiguous(memory_format=x_layout).requires_grad_()
    upstream = torch.randn(3, 64, 5, 4).contiguous(memory_format=g_layout)
    out = local_response_norm_channels_last(x, channels_last_out=channels_last_out)
    assert out.is_contiguous(
        memory_format=torch.channels_last if channels_last_out else torch.contiguous_format
    )
    out.backward(upstream)
    assert x.grad.is_contiguous(memory_format=x_layout)
    x64 = x.detach().double().requires_grad_()
    want = local_response_norm(x64)
    want.backward(upstream.double())
    torch.testing.assert_close(out.double(), want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-6)


def test_the_pytorch_lrn_serves_where_the_native_kernel_does_not(monkeypatch):
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    # Outside the kernel's cover: float64, another beta, a radius it was not compiled for.
    for t, kwargs in [(x.double(), {}), (x, {"beta": 0.6}), (x, {"radius": 6})]:
        assert (
            type(local_response_norm_channels_last(t, **kwargs).grad_fn).__name__
            == "_LRNChannelsLastBackward"
        )
    # Switched off by the environment: the same function through PyTorch's ops.
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_kernels", None)
    monkeypatch.setenv("CIFARLAB_NATIVE", "0")
    out = local_response_norm_channels_last(x)
    assert native.kernels() is None
    assert type(out.grad_fn).__name__ == _LRNChannelsLast.__name__ + "Backward"
    torch.testing.assert_close(out, local_response_norm(x))


def test_a_kernel_that_cannot_be_built_warns_once_and_leaves_the_pytorch_path(
    monkeypatch, tmp_path
):
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_kernels", None)
    monkeypatch.setattr(native, "SOURCE", tmp_path / "missing.cpp")
    monkeypatch.setenv("CIFARLAB_KERNEL_CACHE", str(tmp_path / "build"))
    with pytest.warns(UserWarning, match="native kernels unavailable"):
        assert native.kernels() is None
    assert native.kernels() is None  # asked once: no second warning, no second build


@pytest.mark.skipif(not BUILDS_HERE, reason="no C++ compiler or ninja: the PyTorch path serves")
@pytest.mark.parametrize("shape", [(4, 64, 24, 24), (3, 5, 7, 7), (2, 1, 6, 6), (2, 3, 3, 4)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_native_max_pool_backward_equals_pytorchs(shape, channels_last):
    torch.manual_seed(0)
    y = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    pooled, indices = F.max_pool2d(y, 3, 2, ceil_mode=True, return_indices=True)
    grad = torch.randn(pooled.shape)  # NCHW, as flatten's backward hands it over
    got = native.kernels().max_pool_backward(grad, indices, *shape[2:], channels_last)
    expected = torch.ops.aten.max_pool2d_with_indices_backward(
        grad, y.contiguous(), [3, 3], [2, 2], [0, 0], [1, 1], True, indices.contiguous()
    )
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert got.is_contiguous(memory_format=layout)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    bad = indices.clone()
    bad[-1, -1, 0, 1] = shape[2] * shape[3]  # one past the plane: refused, nothing written
    with pytest.raises(RuntimeError, match="outside"):
        native.kernels().max_pool_backward(grad, bad, *shape[2:], channels_last)


def test_max_pool_clipped_passes_gradcheck_on_both_paths():
    from cifarlab.models.tutorial_cpu.max_pool import max_pool_clipped

    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 7).contiguous(memory_format=torch.channels_last)
    for t in (x.double(), x):  # float64: PyTorch's ops; float32: the native kernels here
        t = t.clone().requires_grad_()
        out = max_pool_clipped(t)
        torch.testing.assert_close(out, F.max_pool2d(t, 3, 2, ceil_mode=True))
        upstream = torch.randn_like(out)
        (grad,) = torch.autograd.grad((out * upstream).sum(), t)
        (want,) = torch.autograd.grad((F.max_pool2d(t, 3, 2, ceil_mode=True) * upstream).sum(), t)
        torch.testing.assert_close(grad, want)
    torch.autograd.gradcheck(max_pool_clipped, (x.double().requires_grad_(),))


@pytest.mark.parametrize("size", [24, 12, 6])
def test_conv_then_pool_passes_gradcheck_and_equals_the_reference(size):
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size, dtype=torch.float64).requires_grad_()
    w = torch.randn(4, 3, 5, 5, dtype=torch.float64).to(memory_format=torch.channels_last)
    b = torch.randn(4, dtype=torch.float64)
    w.requires_grad_(), b.requires_grad_()
    torch.autograd.gradcheck(lambda *t: conv_then_max_pool(*t, 2), (x, w, b))
    expected = same_max_pool(F.conv2d(x, w, b, padding=2))
    torch.testing.assert_close(conv_then_max_pool(x, w, b, 2), expected, rtol=0, atol=0)


@pytest.mark.skipif(not onednn_linear.AVAILABLE, reason="this PyTorch has no oneDNN")
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_equals_torch_linear_with_its_gradients(bias):
    torch.manual_seed(0)
    layer = torch.nn.Linear(300, 70, bias=bias)
    x = torch.randn(33, 300)
    upstream = torch.randn(33, 70)
    results = []
    for fn in (lambda t: layer(t), lambda t: onednn_linear.linear(t, layer)):
        layer.zero_grad()
        t = x.clone().requires_grad_()
        out = fn(t)
        (out * upstream).sum().backward()
        grads = [t.grad, layer.weight.grad] + ([layer.bias.grad] if bias else [])
        results.append([out.detach(), *grads])
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(onednn_linear.linear(x, layer), layer(x), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not onednn_linear.AVAILABLE, reason="this PyTorch has no oneDNN")
def test_onednn_linear_counts_the_flops_of_a_linear_and_serves_only_float32():
    layer = torch.nn.Linear(64, 32)
    x = torch.randn(8, 64)
    with FlopCounterMode(display=False) as counter:
        onednn_linear.linear(x, layer)
    assert counter.get_total_flops() == 2 * 8 * 64 * 32
    assert onednn_linear._served(x, layer)
    assert not onednn_linear._served(
        x.double(), torch.nn.Linear(64, 32).double()
    )  # float64: F.linear
    assert not onednn_linear._served(x[None], layer)  # and batches of another rank
    seen = []
    hook = layer.register_forward_hook(lambda m, i, o: seen.append(o))
    out = onednn_linear.linear(x, layer)  # a summary's hook: the layer itself runs
    hook.remove()
    assert len(seen) == 1 and seen[0] is out


def test_summary_hooks_see_conv1s_whole_activation_and_change_nothing():
    """The fast path pools before conv1's ReLU, except when a summary watches the ReLU."""
    _, fast = _twins(torch.float32, "cpu")
    x = torch.randn(4, 3, 24, 24)
    plain = fast(x)
    seen = {}
    hook = fast.conv1_relu.register_forward_hook(lambda m, i, o: seen.setdefault("conv1", o))
    watched = fast(x)
    hook.remove()
    assert seen["conv1"].shape == (4, 64, 24, 24) and (seen["conv1"] >= 0).all()
    torch.testing.assert_close(watched, plain, rtol=1e-5, atol=1e-6)


def test_a_few_real_training_steps_agree(tmp_path):
    """The whole training step (distortions, loss with weight decay, SGD, the average) on
    both paths, from the same seed: the losses and the averaged weights stay together."""
    from cifarlab.config import build_config
    from cifarlab.recipes import get_recipe
    from cifarlab.train.distributed import Placement
    from cifarlab.train.loop import apply_step, build_state, forward_step

    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (512, 32, 32, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (512,), generator=g)
    runs = {}
    for fast in (False, True):
        config = build_config(
            "tutorial", {"run_dir": str(tmp_path), "fast_path": fast, "batch_size": 64}
        )
        recipe = get_recipe("tutorial", config.params)
        state = build_state(config, recipe, Placement(torch.device("cpu")), images, labels, 10)
        losses = [
            apply_step(state, forward_step(state, recipe, state.plan))["total_loss"]
            for _ in range(6)
        ]
        runs[fast] = losses, state.average.evaluated_state()
    torch.testing.assert_close(
        torch.tensor(runs[True][0]), torch.tensor(runs[False][0]), rtol=1e-4, atol=1e-5
    )
    for name, value in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][name], value, rtol=1e-4, atol=1e-5, msg=name)
