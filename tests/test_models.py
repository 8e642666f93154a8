import math

import pytest
import torch
import torch.nn.functional as F

from cifarlab.models.lrn import local_response_norm
from cifarlab.models.tutorial import TutorialNet, same_max_pool


def test_parameter_count_matches_the_tutorial():
    assert sum(p.numel() for p in TutorialNet(10).parameters()) == 1_068_298
    # CIFAR-100: only softmax_linear grows (192 x 100 + 100 instead of 192 x 10 + 10).
    assert sum(p.numel() for p in TutorialNet(100).parameters()) == 1_068_298 - 1_930 + 19_300


def test_output_shapes_for_both_datasets():
    x = torch.randn(5, 3, 24, 24)
    assert TutorialNet(10)(x).shape == (5, 10)
    assert TutorialNet(100)(x).shape == (5, 100)


def test_unknown_recipe_lists_the_known_ones():
    from cifarlab.errors import ConfigError
    from cifarlab.recipes import get_recipe

    with pytest.raises(ConfigError, match="unknown recipe 'resnet'.*tutorial"):
        get_recipe("resnet")


@pytest.mark.parametrize(
    "layer, std, bias",
    [
        ("conv1", 5e-2, 0.0),
        ("conv2", 5e-2, 0.1),
        ("local3", 0.04, 0.1),
        ("local4", 0.04, 0.1),
        ("softmax_linear", 1 / 192, 0.0),
    ],
)
def test_initial_weights_are_truncated_normals_with_the_spec_std(layer, std, bias):
    torch.manual_seed(0)
    module = getattr(TutorialNet(), layer)
    w = module.weight.detach()
    assert w.abs().max() <= 2 * std + 1e-9  # truncated at two standard deviations
    assert abs(w.mean()) < 0.05 * std
    # A normal truncated at +-2 sigma keeps 0.8796 of its standard deviation.
    assert w.std().item() == pytest.approx(0.8796 * std, rel=0.05 if w.numel() > 5000 else 0.15)
    assert torch.all(module.bias == bias)


def _lrn_reference(x, radius=4, bias=1.0, alpha=0.001 / 9, beta=0.75):
    """The definition, channel by channel, in float64."""
    out = torch.empty_like(x)
    c = x.shape[1]
    for k in range(c):
        lo, hi = max(0, k - radius), min(c, k + radius + 1)
        out[:, k] = x[:, k] / (bias + alpha * (x[:, lo:hi] ** 2).sum(dim=1)) ** beta
    return out


def test_lrn_forward_and_backward_match_the_definition():
    torch.manual_seed(0)
    x = (torch.randn(3, 64, 5, 5, dtype=torch.float64) * 20).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    out, ref = local_response_norm(x), _lrn_reference(x_ref)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    (ref * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    # And PyTorch's own op agrees once its alpha convention (divided by the size) is allowed for.
    torch.testing.assert_close(
        out, F.local_response_norm(x, size=9, alpha=0.001, beta=0.75, k=1.0), rtol=1e-10, atol=1e-12
    )


def test_lrn_float32_matches_float64():
    x = torch.randn(2, 64, 12, 12) * 30
    torch.testing.assert_close(
        local_response_norm(x), _lrn_reference(x.double()).float(), rtol=1e-5, atol=1e-5
    )


def test_same_pooling_pads_at_the_end_like_tensorflow():
    # A spike at row/col 2 lies in windows starting at 0 and 2 under TensorFlow's SAME
    # (extra padding at the end); symmetric padding=1 would put it in one window only.
    x = torch.zeros(1, 1, 24, 24)
    x[0, 0, 2, 2] = 1.0
    out = same_max_pool(x)
    assert out.shape == (1, 1, 12, 12)
    expected = torch.zeros(12, 12)
    expected[:2, :2] = 1.0
    assert torch.equal(out[0, 0], expected)
    # The last window starts at 22 and sees rows 22, 23 and the padding.
    y = torch.zeros(1, 1, 24, 24)
    y[0, 0, 23, 23] = 5.0
    assert same_max_pool(y)[0, 0, 11, 11] == 5.0 and same_max_pool(y).sum() == 5.0


def test_same_pooling_against_explicit_windows():
    x = torch.randn(2, 3, 12, 12)
    out = same_max_pool(x)
    assert out.shape == (2, 3, 6, 6)
    for i in range(6):
        for j in range(6):
            window = x[:, :, 2 * i : min(2 * i + 3, 12), 2 * j : min(2 * j + 3, 12)]
            torch.testing.assert_close(out[:, :, i, j], window.amax(dim=(2, 3)))


def test_negative_inputs_never_lose_to_padding():
    x = -torch.rand(1, 2, 24, 24) - 1  # all negative: zero padding would wrongly win
    assert (same_max_pool(x) < 0).all()
    assert math.isfinite(same_max_pool(x).sum().item())
