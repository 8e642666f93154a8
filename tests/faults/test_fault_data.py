"""Corrupt data is never used: every command that reads a run's data checks it first."""

import numpy as np
import pytest

from cifarlab.data.layout import CIFAR10
from cifarlab.data.records import write_records
from cifarlab.data.sources import MANIFEST, VERIFIED

from .conftest import SMALL, assert_one_line_error, cli

RECORD = CIFAR10.record_bytes


def _flip(offset):
    def damage(path):
        data = bytearray(path.read_bytes())
        data[offset] ^= 0x01
        path.write_bytes(bytes(data))

    return damage


DAMAGE = {
    "a flipped label byte": (_flip(0), "md5 mismatch"),
    "a flipped pixel byte": (_flip(RECORD + 1500), "md5 mismatch"),
    "a record removed": (lambda p: p.write_bytes(p.read_bytes()[RECORD:]), "md5 mismatch"),
    "bytes appended": (lambda p: p.write_bytes(p.read_bytes() + b"\0" * 10), "md5 mismatch"),
    "the file deleted": (lambda p: p.unlink(), "missing test_batch.bin"),
    "the manifest deleted": (lambda p: (p.parent / MANIFEST).unlink(), f"no {MANIFEST}"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_eval_refuses_damaged_data_even_when_its_check_was_cached(run_copy, case):
    folder = run_copy / "synthetic-data" / CIFAR10.folder
    assert cli("eval", run_copy).returncode == 0  # caches the check by size and mtime
    assert (folder / VERIFIED).is_file()
    damage, message = DAMAGE[case]
    damage(folder / "test_batch.bin")
    assert_one_line_error(cli("eval", run_copy), message)
    assert_one_line_error(cli("export", run_copy), message)


def test_a_damaged_file_with_its_old_size_and_mtime_restored_is_the_one_blind_spot(run_copy):
    # What the cache trusts, stated as a test: an edit that restores size and mtime is not
    # re-hashed. `cifarlab download --verify` always hashes everything.
    import os

    path = run_copy / "synthetic-data" / CIFAR10.folder / "test_batch.bin"
    assert cli("eval", run_copy).returncode == 0
    stat = path.stat()
    _flip(5)(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cli("eval", run_copy).returncode == 0


def test_resuming_a_synthetic_run_remakes_its_damaged_data_and_says_so(run_copy):
    folder = run_copy / "synthetic-data" / CIFAR10.folder
    _flip(0)(folder / "data_batch_1.bin")
    done = cli("train", "--run-dir", run_copy, "--max-steps", 10, "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "synthetic data failed its check" in done.stdout and "made it again" in done.stdout
    aside = list((run_copy / "synthetic-data").glob(f"{CIFAR10.folder}.invalid-*"))
    assert len(aside) == 1 and (aside[0] / "data_batch_1.bin").is_file()  # kept, not deleted


def _fake_install(root, damage=None):
    """Data in the official layout that is not the real set (so it fails the official md5s)."""
    folder = root / CIFAR10.folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in CIFAR10.train_files + CIFAR10.test_files:
        write_records(
            folder / name,
            rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, 4),
        )
    return folder


def test_eval_of_a_synthetic_run_with_a_data_dir_says_where_its_data_is(small_run, tmp_path):
    """It used to look for the real CIFAR-10 there, and blame that data's checksums."""
    _fake_install(tmp_path / "data")
    done = cli("eval", small_run, "--data-dir", tmp_path / "data")
    assert_one_line_error(done, "was trained on the synthetic set", "synthetic-data",
                          "--data-dir is for runs on the real data")  # fmt: skip


def test_training_on_an_unverifiable_data_dir_says_the_installed_files_failed(tmp_path):
    # Regression: this ended with "`npm pack` failed: no output".
    _fake_install(tmp_path / "data")
    (tmp_path / "bogus.tar.gz").write_bytes(b"not the archive")
    done = cli("download", "--data-dir", tmp_path / "data", "--archive", tmp_path / "bogus.tar.gz")
    line = assert_one_line_error(done, "fails its check", "md5 mismatch", "could not be installed")
    assert str(tmp_path / "data" / CIFAR10.folder) in line
    assert (tmp_path / "data" / CIFAR10.folder / "test_batch.bin").is_file()  # left as it was


def test_training_refuses_a_batch_larger_than_the_data(tmp_path):
    done = cli("train", *SMALL, "--run-dir", tmp_path / "r", "--batch-size", 1000)
    assert_one_line_error(done, "cannot fill one global batch of 1000", "smaller --batch-size")
