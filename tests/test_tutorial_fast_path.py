"""The tutorial network's fast path computes the reference's function: outputs, input and
parameter gradients, the pooling and the LRN on their own, and a few real training steps."""

import pytest
import torch

from cifarlab.models.lrn import local_response_norm, local_response_norm_channels_last
from cifarlab.models.tutorial import TutorialNet, same_max_pool, same_max_pool_unpadded

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
