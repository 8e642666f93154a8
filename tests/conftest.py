import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_data_root(tmp_path, monkeypatch):
    # No test may read or write the user's real data root.
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "data-root"))
    torch.manual_seed(0)


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
