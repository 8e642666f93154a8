"""Hostile archives: nothing is written outside the download's own work folder, nothing is
installed, and the refusal is one line. The archives are built here, byte by byte."""

import dataclasses
import gzip
import hashlib
import io
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cifarlab.data import sources
from cifarlab.data.layout import CIFAR10
from cifarlab.data.records import write_records
from cifarlab.data.sources import download, safe_extract, unpacked_size_limit
from cifarlab.errors import DataError, SourceError

from .conftest import assert_one_line_error, cli


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def _archive(tmp_path):
    """A small, well-formed cifar-10-binary.tar.gz and the DatasetInfo whose md5s match it."""
    folder = tmp_path / "src" / CIFAR10.folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in CIFAR10.train_files + CIFAR10.test_files:
        write_records(
            folder / name,
            rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, 2),
        )
    path = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=CIFAR10.folder)
    md5s = {name: _md5(folder / name) for name in CIFAR10.file_md5}
    return path, dataclasses.replace(CIFAR10, archive_md5=_md5(path), file_md5=md5s)


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _gzip_tar(path, members):
    """members: (TarInfo, bytes or None). None writes the header only (a declared size)."""
    raw = io.BytesIO()
    for info, data in members:
        raw.write(info.tobuf(format=tarfile.GNU_FORMAT))
        if data is not None:
            raw.write(data + b"\0" * (-len(data) % 512))
    raw.write(b"\0" * 1024)
    path.write_bytes(gzip.compress(raw.getvalue()))
    return path


def _member(name, size=0, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname = size, kind, linkname
    return info


HOSTILE = {
    "a declared 10 GB member (bomb)": ([(_member("cifar-10-batches-bin/data_batch_1.bin", 10**10), None)], "unpacks to more than"),
    "a path climbing out": ([(_member("cifar-10-batches-bin/../../../escape.txt", 4), b"evil")], "'..'"),
    "an absolute path": ([(_member("/tmp/cifarlab-escape.txt", 4), b"evil")], "absolute path"),
    "a symlink to /etc": ([(_member("cifar-10-batches-bin/etc", 0, tarfile.SYMTYPE, "/etc"), None)], "link"),
    "a symlink then a write through it": ([(_member("cifar-10-batches-bin/x", 0, tarfile.SYMTYPE, "../.."), None),
                                            (_member("cifar-10-batches-bin/x/escape.txt", 4), b"evil")], "link"),
    "a hard link": ([(_member("cifar-10-batches-bin/h", 0, tarfile.LNKTYPE, "/etc/passwd"), None)], "link"),
    "a fifo": ([(_member("cifar-10-batches-bin/pipe", 0, tarfile.FIFOTYPE), None)], "special file"),
    "a block device": ([(_member("cifar-10-batches-bin/disk", 0, tarfile.BLKTYPE), None)], "special file"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_archives_are_refused_before_anything_is_written(tmp_path, case):
    members, reason = HOSTILE[case]
    archive = _gzip_tar(tmp_path / "cifar-10-binary.tar.gz", members)
    outside_before = _tree(tmp_path)
    landed_before = {Path(i.name) for i, _ in members if Path(i.name).exists()}
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(SourceError, match=reason):
        safe_extract(archive, dest, max_bytes=unpacked_size_limit(CIFAR10))
    assert _tree(dest) == [] and _tree(tmp_path) == [*outside_before, "dest"]
    for info, _ in members:  # where each member would have landed, even outside tmp_path
        landing = Path(info.name) if info.name.startswith("/") else (dest / info.name).resolve()
        assert not landing.exists() or landing in landed_before, landing
    # through the installer, with checksums that match this archive: nothing installed
    info = dataclasses.replace(CIFAR10, archive_md5=_md5(archive))
    root = tmp_path / "root"
    with pytest.raises(SourceError, match=reason):
        download(info, root, archive=archive, log=lambda m: None)
    assert _tree(root) == []


def test_members_adding_up_past_the_data_sets_size_are_refused_before_writing(tmp_path):
    """No member is large, but together they unpack to more than the data set can hold."""
    tiny = dataclasses.replace(CIFAR10, examples={"train": 1, "test": 1})  # limit about 1.05 MB
    limit = unpacked_size_limit(tiny)
    piece = limit // 3 + 1
    members = [
        (_member(f"cifar-10-batches-bin/part{i}.bin", piece), b"\0" * piece) for i in range(3)
    ]
    archive = _gzip_tar(tmp_path / "cifar-10-binary.tar.gz", members)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(SourceError, match=f"unpacks to more than {limit:,} bytes"):
        safe_extract(archive, dest, max_bytes=limit)
    assert _tree(dest) == []  # refused at the third header, before anything was written
    info = dataclasses.replace(tiny, archive_md5=_md5(archive))
    with pytest.raises(SourceError, match="unpacks to more than"):
        download(info, tmp_path / "root", archive=archive, log=lambda m: None)
    assert _tree(tmp_path / "root") == []


@pytest.mark.parametrize(
    "content", [b"", b"\x1f\x8b\x08garbage", gzip.compress(b"not a tar" * 100)]
)
def test_broken_archives_are_data_errors(tmp_path, content):
    path = tmp_path / "a.tar.gz"
    path.write_bytes(content)
    with pytest.raises(DataError):
        safe_extract(path, tmp_path)


def test_the_command_refuses_any_archive_but_the_official_one_in_one_line(tmp_path):
    archive = _gzip_tar(tmp_path / "evil.tar.gz", HOSTILE["a path climbing out"][0])
    done = cli("download", "--archive", archive, "--data-dir", tmp_path / "root")
    assert_one_line_error(done, "md5 mismatch", "nothing installed")
    assert not (tmp_path / "root" / CIFAR10.folder).exists()


def test_downloads_at_once_install_one_verified_copy(tmp_path, monkeypatch):
    archive, info = _archive(tmp_path)
    check = sources.installed_problem

    def slow_check(*args):  # a slow disk: the others finish their copies meanwhile
        problem = check(*args)
        time.sleep(0.05)
        return problem

    monkeypatch.setattr(sources, "installed_problem", slow_check)
    root = tmp_path / "root"
    errors = []
    start = threading.Barrier(4)

    def install():
        start.wait()
        try:
            download(info, root, archive=archive, log=lambda m: None)
        except Exception as e:  # noqa: BLE001 - the test reports any failure
            errors.append(e)

    threads = [threading.Thread(target=install) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [p.name for p in root.iterdir()] == [CIFAR10.folder]  # no "invalid" copy aside
    assert sources.installed_problem(info, root) is None
