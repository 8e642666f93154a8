import numpy as np
import torch

from cifarlab.data.records import load_split
from cifarlab.data.synthetic import make_synthetic


def test_synthetic_set_is_deterministic_and_balanced(tmp_path):
    make_synthetic(tmp_path / "a", train_per_class=20, test_per_class=5, seed=1)
    make_synthetic(tmp_path / "b", train_per_class=20, test_per_class=5, seed=1)
    make_synthetic(tmp_path / "c", train_per_class=20, test_per_class=5, seed=2)
    xa, ya = load_split(tmp_path / "a", "train")
    xb, yb = load_split(tmp_path / "b", "train")
    xc, _ = load_split(tmp_path / "c", "train")
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(xa, xc)
    assert torch.bincount(ya).tolist() == [20] * 10
    assert torch.bincount(load_split(tmp_path / "a", "test")[1]).tolist() == [5] * 10


def test_synthetic_classes_are_separable_by_a_simple_statistic(tmp_path):
    # A nearest-class-mean classifier on per-channel means must beat chance by far: the
    # classes carry real signal, so "the network learned" tests are meaningful.
    make_synthetic(tmp_path, train_per_class=100, test_per_class=30, seed=0)
    x, y = load_split(tmp_path, "train")
    xt, yt = load_split(tmp_path, "test")
    feats = x.float().mean(dim=(1, 2))
    centroids = torch.stack([feats[y == k].mean(0) for k in range(10)])
    pred = torch.cdist(xt.float().mean(dim=(1, 2)), centroids).argmin(1)
    assert (pred == yt).float().mean() > 0.5


def test_synthetic_cifar100_layout(tmp_path):
    make_synthetic(tmp_path, "cifar100", train_per_class=2, test_per_class=1)
    x, y = load_split(tmp_path, "train", "cifar100")
    _, coarse = load_split(tmp_path, "train", "cifar100", coarse=True)
    assert x.shape == (200, 32, 32, 3)
    np.testing.assert_array_equal(coarse.numpy(), y.numpy() // 5)
