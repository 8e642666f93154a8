"""The convolution by Fourier transform (models/tutorial_cpu/fft_conv.py, NNPACK called from
kernels.cpp) computes conv2d: output, input, filter and bias gradients against float64,
in either input layout, for batches that split unevenly over the threads; and PyTorch's
convolution serves wherever it does not."""

import dataclasses
import shutil

import pytest
import torch
import torch.nn.functional as F

from cifarlab.models.tutorial_cpu import build as native
from cifarlab.models.tutorial_cpu import fft_conv

# Where the native kernels can be built, the Fourier convolution must serve (PyTorch's x86
# and ARM builds carry NNPACK): a silent fallback would hide a broken kernel.
needs_kernels = pytest.mark.skipif(
    not (shutil.which("c++") and shutil.which("ninja")),
    reason="no C++ compiler or ninja: PyTorch's convolution serves",
)


@pytest.fixture(autouse=True)
def fourier_route_on(monkeypatch):
    """These tests exercise the route itself, whichever route is faster on this machine."""
    monkeypatch.setenv("CIFARLAB_FFT_CONV", "1")


def _reference(x, weight, bias, padding, upstream):
    """Output and gradients of F.conv2d in float64."""
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    out = F.conv2d(x64, w64, b64, padding=padding)
    out.backward(upstream.double())
    return out.detach(), x64.grad, w64.grad, b64.grad


@needs_kernels
@pytest.mark.parametrize(
    "batch, channels, filters, size, kernel, padding",
    [
        (8, 64, 64, (12, 12), 5, 2),  # the tutorial's conv2
        (3, 5, 7, (9, 11), 3, 1),  # odd channels, a rectangle, an odd batch over two threads
        (1, 3, 4, (6, 6), 5, 0),  # one image, no padding: a 2x2 output
    ],
)
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_fft_conv_equals_conv2d_with_its_gradients(
    batch, channels, filters, size, kernel, padding, layout
):
    assert native.kernels() is not None and native.kernels().fft_conv_available()
    torch.manual_seed(batch)
    x = torch.randn(batch, channels, *size).contiguous(memory_format=layout).requires_grad_()
    weight = (torch.randn(filters, channels, kernel, kernel) * 0.1).requires_grad_()
    bias = torch.randn(filters, requires_grad=True)
    assert fft_conv.fft_conv_serves(x, weight, padding)
    out = fft_conv.conv2d(x, weight, bias, padding)
    assert type(out.grad_fn).__name__ == "_FftConvBackward"
    upstream = torch.randn_like(out)
    out.backward(upstream)
    want, want_x, want_w, want_b = _reference(x, weight, bias, padding, upstream)
    # Float32 rounding, relative to each tensor's scale (the transforms mix all the values)
    for got, expected in [
        (out, want),
        (x.grad, want_x),
        (weight.grad, want_w),
        (bias.grad, want_b),
    ]:
        scale = expected.abs().max()
        torch.testing.assert_close(
            got.detach().double() / scale, expected / scale, rtol=0, atol=2e-6
        )
    with torch.no_grad():  # evaluation: the forward alone, the same values
        torch.testing.assert_close(
            fft_conv.conv2d(x, weight, bias, padding), out.detach(), rtol=0, atol=0
        )


def test_pytorchs_convolution_serves_where_the_fourier_one_does_not(monkeypatch):
    x = torch.randn(2, 4, 12, 12, requires_grad=True)
    weight = torch.randn(6, 4, 5, 5, requires_grad=True)
    # Float64, an output larger than a 16x16 transform (the filters' gradient's kernel),
    # a padding as large as the kernel, an empty batch, non-square filters: each goes to
    # F.conv2d, with the same result.
    for t, w, padding in [(x.double(), weight.double(), 2), (torch.randn(2, 4, 20, 20), weight, 2),
                          (x, weight, 5), (torch.randn(0, 4, 12, 12), weight, 2),
                          (x, torch.randn(6, 4, 5, 3), 1)]:  # fmt: skip
        assert not fft_conv.fft_conv_serves(t, w, padding)
        torch.testing.assert_close(
            fft_conv.conv2d(t, w, None, padding), F.conv2d(t, w, padding=padding)
        )
    monkeypatch.setenv("CIFARLAB_FFT_CONV", "0")  # switched off for A/B runs
    assert not fft_conv.fft_conv_serves(x, weight, 2)
    assert type(fft_conv.conv2d(x, weight, None, 2).grad_fn).__name__ == "ConvolutionBackward0"


@needs_kernels
def test_the_kernel_refuses_what_it_cannot_convolve():
    kernels = native.kernels()
    x, weight = torch.randn(2, 4, 12, 12), torch.randn(6, 4, 5, 5)
    with pytest.raises(RuntimeError, match="NCHW-contiguous float32"):
        kernels.fft_conv(x.contiguous(memory_format=torch.channels_last), weight, None, 2)
    with pytest.raises(RuntimeError, match="input channels"):
        kernels.fft_conv(x, torch.randn(6, 3, 5, 5), None, 2)
    with pytest.raises(RuntimeError, match="at most 16x16"):
        kernels.fft_conv(x, weight, None, 5)


@needs_kernels
def test_the_tutorials_arithmetic_names_the_route_its_conv2_takes(monkeypatch):
    from cifarlab.recipes import get_recipe

    cpu = torch.device("cpu")
    tutorial = get_recipe("tutorial")
    tutorial.prepare_device(cpu)
    assert tutorial.arithmetic(cpu) == "float32, conv2 by Fourier transform (timed faster here)"
    monkeypatch.setenv("CIFARLAB_FFT_CONV", "0")
    assert tutorial.arithmetic(cpu) == "float32"
    monkeypatch.setenv("CIFARLAB_FFT_CONV", "1")
    reference = get_recipe("tutorial", dataclasses.replace(tutorial.params, fast_path=False))
    assert reference.arithmetic(cpu) == "float32"  # the straightforward network: oneDNN's
