import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_data_root(tmp_path, monkeypatch):
    # No test may read or write the user's real data root.
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "data-root"))
    torch.manual_seed(0)


@pytest.fixture
def own_timings(tmp_path, monkeypatch):
    """The test times into its own kernel cache (timed_choice's verdicts), and forgets what
    earlier tests measured; a module adds its own memory of the routes it asked for."""
    from cifarlab import timed_choice

    monkeypatch.setenv("CIFARLAB_KERNEL_CACHE", str(tmp_path / "cache"))
    timed_choice.forget()
    yield
    timed_choice.forget()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A small synthetic run trained once for the tests that evaluate, predict and export.
    Its test split (70 images) is not a multiple of the evaluation batch sizes the tests use."""
    from cifarlab.cli import main

    run = tmp_path_factory.mktemp("trained") / "run"
    code = main(["train", "--synthetic", "--run-dir", str(run), "--max-steps", "60", "--batch-size", "32",
                 "--checkpoint-every", "30", "--summary-every", "30", "--no-progress",
                 "--set", "synthetic_train_per_class=40", "--set", "synthetic_test_per_class=7"])  # fmt: skip
    assert code == 0
    return run


def trivial_accuracy(data_dir) -> float:
    """The best test accuracy of two classifiers that learn no shapes: nearest class mean on
    each image's mean colour, and on its raw pixels. A network's accuracy means something only
    above this (the synthetic set is built so that it is about one half)."""
    from cifarlab.data.records import load_split

    x, y = load_split(data_dir, "train")
    xt, yt = load_split(data_dir, "test")
    best = 0.0
    for features in (lambda a: a.float().mean(dim=(1, 2)), lambda a: a.float().flatten(1)):
        f = features(x)
        centroids = torch.stack([f[y == k].mean(0) for k in range(int(y.max()) + 1)])
        predicted = torch.cdist(features(xt), centroids).argmin(1)
        best = max(best, (predicted == yt).float().mean().item())
    return best


def check_bench_report(report: dict, repeats: int, images_per_run: int | None, wall: float) -> None:
    """A benchmark's JSON adds up: one rate per run, each that run's images over its timed
    seconds, the headline the median, and the timed seconds within the command's own wall
    time (an inflated, inverted or invented rate fails one of these)."""
    import statistics

    runs, images, seconds = report["runs"], report["run_images"], report["run_seconds"]
    assert len(runs) == len(images) == len(seconds) == repeats
    for rate, n, t in zip(runs, images, seconds, strict=True):
        assert n > 0 and t > 0 and abs(rate - n / t) <= 0.001 * rate + 0.1, (rate, n, t)
        assert images_per_run is None or n == images_per_run
    assert abs(report["images_per_second"] - statistics.median(runs)) <= 0.1
    assert 0 < sum(seconds) + report["warmup_seconds"] < wall
