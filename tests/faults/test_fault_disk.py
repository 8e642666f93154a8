"""A full disk (a file-size limit, as `ulimit -f` sets) while writing checkpoints."""

import resource
import shutil

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
        done, "cannot write", "ckpt-00000012.pt", "The earlier checkpoints are intact"
    )
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
