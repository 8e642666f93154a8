"""Muon for convolution filters, Nesterov SGD for everything else, in one optimizer.

Muon (Keller Jordan, 2024) replaces each filter's momentum update by the nearest
semi-orthogonal matrix (all singular values 1), found with a few Newton-Schulz iterations:
every direction of the filter bank moves by the same amount, however unevenly the gradient
spreads over them. Used for the convolutions of a BatchNorm network, whose output does not
depend on a filter bank's scale: each step the weights are first rescaled to a fixed norm
(sqrt of the output channels), so the step size means the same thing all through the run.

One optimizer (not two side by side) so the trainer's contract holds unchanged: one rate per
parameter group from the recipe, one state dict in each checkpoint. A group with
`orthogonalize=True` gets the Muon update; the others get exactly torch.optim.SGD's Nesterov
update with its (coupled) weight decay.

Why not torch.optim.Muon (torch >= 2.9): it takes only 2-D parameters (these are 4-D filter
banks, flattened here per step), keeps its momentum as an exponential average (buffer
lerped towards the gradient) where the recipes' settings assume SGD's sum, shrinks weights
by a decoupled decay instead of fixing their norm, and serves no non-Muon group, so the
recipes' tuned steps would all change meaning and the trainer would need two optimizers.
"""

from __future__ import annotations

import torch

# Coefficients of the quintic Newton-Schulz iteration X <- aX + b(XX^T)X + c(XX^T)^2 X,
# chosen (Jordan, 2024) to push singular values in (0, 1] towards 1 quickly rather than
# exactly: a handful of iterations leaves them within about [0.7, 1.2], which is enough.
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)
WIDE_FLOATS = (torch.float32, torch.float64)  # where the Gram form's rounding was checked


def orthogonalize(
    update: torch.Tensor,
    iterations: int,
    dtype: torch.dtype | None = None,
    gram_form: bool = True,
) -> torch.Tensor:
    """[out, ...] -> the same shape with the [out, rest] matrix's singular values near 1
    (its directions kept). Works on the wide orientation, where X X^T is the small product.
    `dtype`: the iterations' arithmetic (default the update's); in bfloat16, as Jordan's
    Muon runs them on a GPU, they land about 3e-2 from float64's (BENCHMARKS.md, "Muon's
    orthogonalization on the CPU"); the result comes back in the update's dtype.
    `gram_form`: in float32 or float64, iterate on the Gram matrix where that multiplies
    less (the same function; False: always as written, as the FLOP count does). Not in
    bfloat16: as written, each iteration recomputes X from X and so corrects its own
    rounding, where the Gram form would carry P's errors through to the end."""
    matrix = update.reshape(update.shape[0], -1).to(dtype or update.dtype)
    tall = matrix.shape[0] > matrix.shape[1]
    x = matrix.T if tall else matrix
    x = x / (x.norm() + 1e-7)  # all singular values <= 1, where the iteration converges
    if gram_form and x.dtype in WIDE_FLOATS and gram_form_is_cheaper(*x.shape, iterations):
        x = _iterate_on_the_gram(x, iterations)
    else:
        a, b, c = NEWTON_SCHULZ
        for _ in range(iterations):
            gram = x @ x.T
            x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).reshape(update.shape).to(update.dtype)


def gram_form_is_cheaper(m: int, n: int, iterations: int) -> bool:
    """Whether iterating on the m x m Gram matrix multiplies less than iterating on the
    m x n matrix itself (m <= n): 2m^2n + (4k - 1)m^3 multiply-adds against k (2m^2n + m^3)
    for k iterations; for 5, where n > 1.75m."""
    k = iterations
    return 2 * m * m * n + (4 * k - 1) * m**3 < k * (2 * m * m * n + m**3)


def _iterate_on_the_gram(x: torch.Tensor, iterations: int) -> torch.Tensor:
    """The same iterations as orthogonalize's loop, with the wide [m, n] matrix multiplied
    only twice. Each iteration multiplies X on the left by Q = aI + bA + cA^2, a polynomial
    in A = X X^T, so after k of them X_k = P X_0 with P = Q_k ... Q_1, and the next Gram
    matrix is Q A Q (Q is symmetric): only m x m products inside the loop, and X_0 enters
    twice (A_0 and the final P X_0) instead of twice an iteration. For a 192 x 1,728 filter
    bank 2.6x fewer multiplications; the same function, rounded in another order (in float32
    both forms within 7.1e-6 of float64 on `fast`'s real momentum)."""
    a, b, c = NEWTON_SCHULZ
    gram = x @ x.T
    poly = None
    for _ in range(iterations):
        q = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A^2
        q.diagonal().add_(a)
        poly = q if poly is None else q @ poly
        gram = q @ gram @ q
    return poly @ x


class Muon(torch.optim.Optimizer):
    """Param groups: `lr`, `momentum`, and either `orthogonalize=True` (Muon, Nesterov
    momentum, `iterations` Newton-Schulz steps, no weight decay: the norm is fixed instead)
    or `orthogonalize=False` with `weight_decay` (Nesterov SGD, as torch.optim.SGD).
    `newton_schulz_dtype`: the iterations' arithmetic (None: the parameters')."""

    def __init__(self, groups: list[dict], iterations: int = 5,
                 newton_schulz_dtype: torch.dtype | None = None) -> None:  # fmt: skip
        defaults = {"lr": 0.0, "momentum": 0.0, "weight_decay": 0.0, "orthogonalize": False,
                    "iterations": iterations}  # fmt: skip
        super().__init__(groups, defaults)
        # Not a group setting: a checkpoint's state dict stays as it was, and a run resumed
        # on another machine takes the arithmetic chosen there.
        self.newton_schulz_dtype = newton_schulz_dtype
        # The training FLOP count sets it False: the FLOPs of the function as written, the
        # Gram form's fewer multiplications not counted (as Winograd's are not).
        self.gram_form = True

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            momentum = group["momentum"]
            buffers = [self._buffer(p) for p in params]
            grads = [p.grad for p in params]
            if group["weight_decay"] and not group["orthogonalize"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            # buffer <- momentum * buffer + g; Nesterov step g + momentum * buffer
            torch._foreach_mul_(buffers, momentum)
            torch._foreach_add_(buffers, grads)
            steps = torch._foreach_add(grads, buffers, alpha=momentum)
            if group["orthogonalize"]:
                for p, s in zip(params, steps, strict=True):
                    p.mul_(p.shape[0] ** 0.5 / p.norm())  # the fixed norm; BatchNorm follows
                    update = orthogonalize(s, group["iterations"], self.newton_schulz_dtype,
                                           self.gram_form)  # fmt: skip
                    p.add_(update, alpha=-group["lr"])
            else:
                torch._foreach_add_(params, steps, alpha=-group["lr"])
        return None

    def _buffer(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        return state["momentum_buffer"]
