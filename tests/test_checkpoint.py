import os

import pytest
import torch

from cifarlab.errors import CifarlabError
from cifarlab.run.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)


class _FailsMidway:
    """Pickling this raises after the tensors before it were written: a write cut short."""

    def __reduce__(self):
        raise OSError(28, "No space left on device")


def test_interrupted_write_leaves_the_previous_checkpoint(tmp_path):
    good = {"step": 1, "w": torch.arange(10.0)}
    save_checkpoint(tmp_path, 1, good)
    big = {"step": 2, "w": torch.randn(1_000_000), "bad": _FailsMidway()}
    with pytest.raises(
        CifarlabError, match="No space left on device.*earlier checkpoints are intact"
    ):
        save_checkpoint(tmp_path, 2, big)
    assert latest_checkpoint(tmp_path).name == "ckpt-00000001.pt"
    assert torch.equal(load_checkpoint(latest_checkpoint(tmp_path))["w"], good["w"])
    assert sorted(os.listdir(tmp_path)) == ["ckpt-00000001.pt"]  # no partial file left


def test_keeps_the_newest(tmp_path):
    for step in range(1, 8):
        save_checkpoint(tmp_path, step * 10, {"step": step}, keep=3)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [50, 60, 70]


def test_temporary_files_are_never_taken_for_checkpoints(tmp_path):
    save_checkpoint(tmp_path, 5, {"step": 5})
    (tmp_path / ".ckpt-00000009.pt.tmp-123").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path).name == "ckpt-00000005.pt"


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_loading_never_runs_code_from_the_file(tmp_path):
    path = tmp_path / "ckpt-00000001.pt"
    torch.save({"step": 1, "x": Payload()}, path)
    with pytest.raises(CifarlabError, match="not a readable cifarlab checkpoint"):
        load_checkpoint(path)


def test_garbage_file_is_a_clear_error(tmp_path):
    path = tmp_path / "ckpt-00000003.pt"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(CifarlabError, match="ckpt-00000003.pt: not a readable cifarlab checkpoint"):
        load_checkpoint(path)
