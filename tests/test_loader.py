import pytest
import torch

from cifarlab.data.augment import CentralCropStandardize
from cifarlab.data.loader import HardExamples, TrainBatches, eval_batches, hardest_order
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


def _drive(batches, steps, loss_of):
    """Draw `steps` batches, recording each example's loss as loss_of(labels); the labels."""
    drawn = []
    for _ in range(steps):
        _, y = batches.next_batch()
        batches.record_losses(loss_of(y))
        drawn.append(y)
    return drawn


def test_hardest_order_draws_only_the_hardest_fraction_each_as_often():
    losses = torch.arange(100.0)  # example i has loss i: the hardest are 70..99
    order = hardest_order(losses, 0.3, torch.Generator().manual_seed(0))
    assert order.numel() == 100 and set(order.tolist()) == set(range(70, 100))
    counts = order.bincount(minlength=100)[70:]
    assert set(counts.tolist()) == {3, 4}  # 100 draws from 30: three passes and part of a fourth
    again = hardest_order(losses, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(order, again)  # a pure function of the losses and the generator


def test_later_epochs_draw_from_the_examples_with_the_highest_recorded_loss():
    images, labels = _split(1000)
    batches = TrainBatches(images, labels, 100, transform=_identity, seed=5,
                           hard_examples=HardExamples(keep=0.25, from_epoch=1))  # fmt: skip
    first = torch.cat(_drive(batches, 10, lambda y: (y % 4 == 0).float()))  # epoch 0: all
    assert sorted(first.tolist()) == list(range(1000))
    second = torch.cat(_drive(batches, 10, lambda y: (y % 4 == 0).float()))
    assert set(second.tolist()) == set(range(0, 1000, 4))  # the 250 with loss 1, 4 times each


def test_hard_selection_resumes_mid_epoch_exactly_and_ranks_agree():
    images, labels = _split(1000)
    hard = HardExamples(keep=0.5, from_epoch=1)

    def loss_of(y):
        return (y * 7919 % 1000).float()  # a fixed scramble of the indices

    a = TrainBatches(images, labels, 100, transform=_identity, seed=2, hard_examples=hard)
    _drive(a, 14, loss_of)  # into epoch 1, the first selected one
    state = a.state_dict()
    expected = _drive(a, 12, loss_of)  # through the start of epoch 2
    b = TrainBatches(images, labels, 100, transform=_identity, seed=2, hard_examples=hard)
    b.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(expected, _drive(b, 12, loss_of), strict=True))
    # Two ranks of 50, each recording its half, gathered: the same batches as one of 100.
    gathered = {}
    ranks = [TrainBatches(images, labels, 50, transform=_identity, seed=2, rank=r, world_size=2,
                          hard_examples=hard, gather=lambda t: gathered["losses"])
             for r in range(2)]  # fmt: skip
    single = TrainBatches(images, labels, 100, transform=_identity, seed=2, hard_examples=hard)
    for _ in range(26):
        _, whole = single.next_batch()
        single.record_losses(loss_of(whole))
        halves = [r.next_batch()[1] for r in ranks]
        assert torch.equal(torch.cat(halves), whole)
        gathered["losses"] = loss_of(torch.cat(halves))  # what an all-gather hands every rank
        for r, half in zip(ranks, halves, strict=True):
            r.record_losses(loss_of(half))
    for r in ranks:
        assert torch.equal(r.example_losses, single.example_losses)


def test_resume_without_the_saved_losses_is_refused():
    images, labels = _split(500)
    state = TrainBatches(images, labels, 50, transform=_identity).state_dict()
    hard = TrainBatches(images, labels, 50, transform=_identity,
                        hard_examples=HardExamples(keep=0.5, from_epoch=1))  # fmt: skip
    with pytest.raises(ValueError, match="without hard-example selection"):
        hard.load_state_dict(state)
