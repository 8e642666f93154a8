"""A fully connected layer's products through oneDNN instead of torch.mm on the CPU.

torch.mm and F.linear run on MKL's GEMM, which does not use AVX-512 on AMD CPUs: at the
tutorial's local3 shape ([128, 2304] x [2304, 384]) it reaches about 200 GFLOP/s on our
AMD EPYC against about 450 for oneDNN's matmul, the library the convolutions already use.
The three products of a layer (forward, input gradient, weight gradient) all go through
oneDNN here; the result is the same function, summed in another order.

oneDNN is reached through `torch.ops.mkldnn._linear_pointwise`, the operator PyTorch's
compiler emits for CPU linears. Where it cannot serve (no oneDNN in this build, another
device or dtype, export or tracing, a hook on the layer), `linear` calls the layer itself.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import register_flop_formula

_POINTWISE = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
AVAILABLE = torch.backends.mkldnn.is_available() and _POINTWISE is not None


def _product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [M, K] @ weight[N, K]^T (+ bias [N]) -> [M, N]; strided views are read in place."""
    return _POINTWISE(x, weight, bias, "none", [], "")


class _OneDnnLinear(torch.autograd.Function):
    """y = x W^T + b, with dL/dx = g W and dL/dW = g^T x also as oneDNN products (W and
    x transposed as views: no copies)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return _product(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        want_x, want_w, want_b = ctx.needs_input_grad
        grad_x = _product(g, weight.t(), None) if want_x else None  # [M, N] x [N, K]
        grad_w = _product(g.t(), x.t(), None) if want_w else None  # [N, M] x [M, K]
        grad_b = g.sum(0) if want_b else None  # False when there is no bias
        return grad_x, grad_w, grad_b


def _served(x: torch.Tensor, layer: nn.Linear) -> bool:
    """oneDNN takes this call: CPU, float32 throughout, a 2-D batch, not being exported,
    and no hook watching the layer (summaries hook it: the layer itself runs them)."""
    return (
        AVAILABLE
        and not (layer._forward_hooks or layer._forward_pre_hooks)
        and x.device.type == "cpu"
        and x.dim() == 2
        and x.dtype == layer.weight.dtype == torch.float32
        and not (torch.jit.is_tracing() or torch.compiler.is_compiling())
        and not torch.onnx.is_in_onnx_export()
    )


def linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """layer(x), through oneDNN where it can serve (see the module's docstring)."""
    if not _served(x, layer):
        return layer(x)
    if torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad):
        return _OneDnnLinear.apply(x, layer.weight, layer.bias)
    return _product(x, layer.weight, layer.bias)


if AVAILABLE:
    # So FLOP counters see what F.linear would have counted: 2 M K N.
    @register_flop_formula(_POINTWISE)
    def _flops(x_shape, w_shape, *args, **kwargs) -> int:
        return 2 * x_shape[0] * x_shape[1] * w_shape[0]
