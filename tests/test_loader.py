import pytest
import torch

from cifarlab.data.augment import CentralCropStandardize
from cifarlab.data.loader import TrainBatches, eval_batches
from cifarlab.recipes import get_recipe


def _identity(raw, generator=None, position=None):
    return raw


_distort = get_recipe("tutorial").train_transform


def _split(n=1000):
    images = torch.zeros(n, 32, 32, 3, dtype=torch.uint8)
    labels = torch.arange(n)  # label = example index, so batches reveal which examples they hold
    return images, labels


def test_each_epoch_is_a_fresh_permutation_without_the_remainder():
    images, labels = _split(1000)
    batches = TrainBatches(images, labels, 128, transform=_identity, seed=3)
    assert batches.steps_per_epoch == 7  # 1000 // 128, the partial batch dropped
    epochs = []
    for _ in range(2):
        seen = torch.cat([batches.next_batch()[1] for _ in range(7)])
        assert seen.numel() == 896 and seen.unique().numel() == 896  # no repeats in an epoch
        epochs.append(seen)
    assert batches.epoch == 2 and batches.step_in_epoch == 0
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled


def test_ranks_take_disjoint_slices_of_the_single_process_batches():
    images, labels = _split(1000)
    single = TrainBatches(images, labels, 128, transform=_identity, seed=7)
    ranks = [
        TrainBatches(images, labels, 64, transform=_identity, seed=7, rank=r, world_size=2)
        for r in range(2)
    ]
    for _ in range(10):  # crosses an epoch boundary (7 steps an epoch)
        whole = single.next_batch()[1]
        part0, part1 = (r.next_batch()[1] for r in ranks)
        assert set(part0.tolist()).isdisjoint(part1.tolist())
        assert torch.equal(torch.cat([part0, part1]), whole)


def test_ranks_together_cover_the_epoch():
    images, labels = _split(768)
    ranks = [
        TrainBatches(images, labels, 32, transform=_identity, seed=0, rank=r, world_size=3)
        for r in range(3)
    ]
    seen = torch.cat([r.next_batch()[1] for _ in range(ranks[0].steps_per_epoch) for r in ranks])
    assert sorted(seen.tolist()) == list(range(768))


def test_same_seed_same_batches_and_state_resumes_exactly():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (600, 32, 32, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (600,), generator=g)
    a = TrainBatches(images, labels, 64, transform=_distort, seed=11)
    b = TrainBatches(images, labels, 64, transform=_distort, seed=11)
    for _ in range(5):
        (xa, ya), (xb, yb) = a.next_batch(), b.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    state = a.state_dict()
    expected = [a.next_batch() for _ in range(12)]  # crosses the epoch boundary at step 9
    c = TrainBatches(images, labels, 64, transform=_distort, seed=11)
    c.load_state_dict(state)
    for x, y in expected:
        xc, yc = c.next_batch()
        assert torch.equal(x, xc) and torch.equal(y, yc)


def test_resume_refuses_a_different_global_batch():
    images, labels = _split(512)
    state = TrainBatches(images, labels, 64, transform=_identity).state_dict()
    other = TrainBatches(images, labels, 32, transform=_identity)
    with pytest.raises(ValueError, match="global batch 64"):
        other.load_state_dict(state)


def test_split_smaller_than_a_batch_is_an_error():
    images, labels = _split(100)
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        TrainBatches(images, labels, 128, transform=_identity)


@pytest.mark.parametrize("world_size", [1, 3])
def test_eval_counts_every_example_exactly_once(world_size):
    images, labels = _split(1000)  # not a multiple of 128: the last batch is partial
    seen = []
    for rank in range(world_size):
        for x, y in eval_batches(
            images,
            labels,
            128,
            transform=CentralCropStandardize(),
            rank=rank,
            world_size=world_size,
        ):
            assert x.shape == (y.numel(), 3, 24, 24)
            seen += y.tolist()
    assert sorted(seen) == list(range(1000))


def test_ranks_see_exactly_the_distortions_of_one_process():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (700, 32, 32, 3), dtype=torch.uint8, generator=g)
    labels = torch.arange(700)
    single = TrainBatches(images, labels, 128, transform=_distort, seed=4)
    ranks = [
        TrainBatches(images, labels, 64, transform=_distort, seed=4, rank=r, world_size=2)
        for r in range(2)
    ]
    for _ in range(7):  # crosses the epoch boundary (5 steps an epoch)
        x, y = single.next_batch()
        parts = [r.next_batch() for r in ranks]
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
