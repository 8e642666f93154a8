"""A full disk while writing checkpoints and exports: a file-size limit (as `ulimit -f`
sets) everywhere, and a real full file system (a small tmpfs) where the machine allows."""

import os
import resource
import shutil
import subprocess

import pytest

from cifarlab.run.checkpoint import list_checkpoints, load_checkpoint

from .conftest import assert_one_line_error, cli

LIMIT = 4 << 20  # bytes: above every small file a run writes, below one checkpoint (~13 MB)


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def test_a_checkpoint_that_cannot_be_written_leaves_the_previous_one_intact(small_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    before = (run / "ckpt-00000008.pt").read_bytes()
    done = cli(
        "train", "--run-dir", run, "--max-steps", 12, "--no-progress", preexec_fn=_limit_file_size
    )
    assert_one_line_error(
        done, "cannot write", "ckpt-00000012.pt", "the earlier checkpoints are intact",
        "the file-size limit (ulimit -f, 4.2 MB) is below a checkpoint",
    )  # fmt: skip
    assert [s for s, _ in list_checkpoints(run)] == [4, 8]
    assert (run / "ckpt-00000008.pt").read_bytes() == before
    assert load_checkpoint(run / "ckpt-00000008.pt")["step"] == 8
    assert not list(run.glob(".ckpt-*"))  # the partial temporary file was removed
    # With room again, the same command continues from step 8.
    again = cli("train", "--run-dir", run, "--max-steps", 12, "--no-progress")
    assert again.returncode == 0 and "from ckpt-00000008.pt (step 8)" in again.stdout


def test_a_full_disk_during_export_leaves_no_file(small_run, tmp_path):
    out = tmp_path / "m.pt"
    done = cli("export", small_run, "--format", "torchscript", "--out", out, "--check-images", 10,
               preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)))  # fmt: skip
    assert_one_line_error(done, "File too large")
    assert not out.exists() and not list(tmp_path.glob(".m.pt*"))


# The same, on a real full file system: a tmpfs of a chosen size, mounted for the test (needs
# root and a kernel that lets it mount; elsewhere these skip and the file-size limit above
# stands in for a full disk).


def _mount_tmpfs(path, size_bytes):
    path.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")


@pytest.fixture
def small_disk(tmp_path):
    mounted = tmp_path / "disk"
    yield mounted
    subprocess.run(["umount", "-l", str(mounted)], capture_output=True)


def _size(folder):
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_file_system_during_a_checkpoint_keeps_the_previous_one(small_run, small_disk):
    # Room for the run as it is and its small files, not for one more checkpoint.
    _mount_tmpfs(small_disk, _size(small_run) + (2 << 20))
    run = small_disk / "run"
    shutil.copytree(small_run, run)
    before = (run / "ckpt-00000008.pt").read_bytes()
    done = cli("train", "--run-dir", run, "--max-steps", 12, "--no-progress")
    assert_one_line_error(
        done, "cannot write", "ckpt-00000012.pt", "the earlier checkpoints are intact"
    )
    assert "No space left on device" in done.stderr
    assert (run / "ckpt-00000008.pt").read_bytes() == before
    assert not list(run.glob(".ckpt-*"))  # the partial temporary file was removed
    # With room again, the same command continues from step 8.
    subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
    again = cli("train", "--run-dir", run, "--max-steps", 12, "--no-progress")
    assert again.returncode == 0 and "from ckpt-00000008.pt (step 8)" in again.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_file_system_during_an_onnx_export_leaves_no_file(small_run, small_disk):
    _mount_tmpfs(small_disk, 1 << 20)  # 1 MB: the model is about 4.4 MB
    out = small_disk / "model.onnx"
    done = cli("export", small_run, "--out", out, "--check-images", 10)
    assert_one_line_error(done, "No space left on device")
    assert list(small_disk.iterdir()) == []
