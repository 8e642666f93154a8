import numpy as np
import pytest
import torch

from cifarlab.data.layout import CIFAR10, CIFAR100, dataset_dir, resolve_data_dir
from cifarlab.data.records import load_split, read_records, write_records
from cifarlab.errors import DataError


def _record_bytes(labels: list[int], rng: np.random.Generator):
    """Build records byte by byte as the format defines them; return (bytes, expected HWC images)."""
    blob = bytearray()
    images = []
    for label in labels:
        planes = rng.integers(0, 256, size=(3, 32, 32), dtype=np.uint8)  # R, G, B planes
        blob += bytes(label if isinstance(label, tuple) else (label,))
        for channel in range(3):
            for row in range(32):
                for col in range(32):
                    blob.append(int(planes[channel, row, col]))
        images.append(planes.transpose(1, 2, 0))
    return bytes(blob), np.stack(images)


def test_reads_cifar10_records_built_byte_by_byte(tmp_path):
    rng = np.random.default_rng(1)
    blob, expected = _record_bytes([6, 9, 0, 3], rng)
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(blob)
    images, labels = read_records(path)
    assert images.dtype == torch.uint8 and images.shape == (4, 32, 32, 3)
    assert labels.dtype == torch.int64 and labels.tolist() == [6, 9, 0, 3]
    np.testing.assert_array_equal(images.numpy(), expected)
    # The red value of pixel (row 0, col 1) is the record's 3rd byte (after label, pixel 0).
    assert images[0, 0, 1, 0] == blob[2]


def test_reads_cifar100_fine_and_coarse_labels(tmp_path):
    rng = np.random.default_rng(2)
    blob, expected = _record_bytes([(19, 99), (0, 0), (7, 42)], rng)
    path = tmp_path / "train.bin"
    path.write_bytes(blob)
    images, fine = read_records(path, "cifar100")
    _, coarse = read_records(path, "cifar100", coarse=True)
    assert fine.tolist() == [99, 0, 42]
    assert coarse.tolist() == [19, 0, 7]
    np.testing.assert_array_equal(images.numpy(), expected)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_write_then_read_round_trips(tmp_path, dataset):
    rng = np.random.default_rng(3)
    n_classes = 10 if dataset == "cifar10" else 100
    images = rng.integers(0, 256, size=(7, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, n_classes, size=7)
    write_records(tmp_path / "f.bin", images, labels, dataset)
    got_images, got_labels = read_records(tmp_path / "f.bin", dataset)
    np.testing.assert_array_equal(got_images.numpy(), images)
    assert got_labels.tolist() == labels.tolist()
    record = 3073 if dataset == "cifar10" else 3074
    assert (tmp_path / "f.bin").stat().st_size == 7 * record


def test_truncated_file_names_the_leftover_bytes(tmp_path):
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(bytes(3073 * 2 + 100))
    with pytest.raises(DataError, match=r"data_batch_1\.bin.*100 bytes left over"):
        read_records(path)


def test_label_out_of_range_names_the_record(tmp_path):
    blob = bytearray(3073 * 3)
    blob[3073 * 2] = 10  # record 2 has label 10
    path = tmp_path / "bad.bin"
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"bad\.bin: record 2 has label 10"):
        read_records(path)


def test_cifar100_coarse_label_out_of_range(tmp_path):
    blob = bytearray(3074 * 2)
    blob[3074] = 20  # coarse label of record 1
    path = tmp_path / "train.bin"
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="record 1 has label 20"):
        read_records(path, "cifar100")


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.bin: file is empty"):
        read_records(tmp_path / "empty.bin")
    with pytest.raises(DataError, match="no such file"):
        read_records(tmp_path / "nope.bin")


def test_load_split_concatenates_in_official_order(tmp_path):
    folder = tmp_path / CIFAR10.folder
    folder.mkdir()
    for i, name in enumerate(CIFAR10.train_files):
        write_records(folder / name, np.full((2, 32, 32, 3), i, np.uint8), np.array([i, i]))
    write_records(
        folder / "test_batch.bin", np.zeros((3, 32, 32, 3), np.uint8), np.array([1, 2, 3])
    )
    images, labels = load_split(tmp_path, "train")
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert images[:, 0, 0, 0].tolist() == labels.tolist()
    assert load_split(tmp_path, "test")[1].tolist() == [1, 2, 3]


def test_load_split_lists_missing_files(tmp_path):
    folder = tmp_path / CIFAR10.folder
    folder.mkdir()
    write_records(folder / "data_batch_1.bin", np.zeros((1, 32, 32, 3), np.uint8), np.array([0]))
    with pytest.raises(
        DataError, match="missing CIFAR-10 train file.*data_batch_2.bin, data_batch_3.bin"
    ):
        load_split(tmp_path, "train")


def test_load_split_on_empty_folder_says_to_download(tmp_path):
    (tmp_path / CIFAR100.folder).mkdir()
    with pytest.raises(
        DataError, match="no CIFAR-100 data in .*cifarlab download --dataset cifar100"
    ):
        load_split(tmp_path, "test", "cifar100")


def test_data_dir_rule(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "env"))
    assert str(resolve_data_dir("/x/y")) == "/x/y"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("CIFARLAB_DATA")
    assert str(resolve_data_dir(None)).endswith(".cache/cifarlab")
    assert dataset_dir("/d", "cifar100").name == "cifar-100-binary"
