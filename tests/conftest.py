import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_data_root(tmp_path, monkeypatch):
    # No test may read or write the user's real data root.
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "data-root"))
    torch.manual_seed(0)
