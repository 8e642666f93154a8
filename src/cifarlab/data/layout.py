"""Facts about the CIFAR binary data sets: file names, record layout, checksums, class names.

Every number here comes from the data sets' official description (docs/tutorial.md, "Data").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_SIZE = 32  # pixels, height and width
IMAGE_CHANNELS = 3
IMAGE_BYTES = IMAGE_SIZE * IMAGE_SIZE * IMAGE_CHANNELS  # 3,072: R plane, then G, then B

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

CIFAR100_COARSE_CLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)  # fmt: skip

CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip


@dataclass(frozen=True)
class DatasetInfo:
    name: str  # "cifar10" | "cifar100"
    title: str  # for messages: "CIFAR-10"
    folder: str  # the folder the official archive unpacks to
    label_bytes: int  # bytes before the pixels in each record
    num_classes: int  # of the label the project trains on (CIFAR-100: fine labels)
    num_coarse_classes: int  # CIFAR-100 only; 0 for CIFAR-10
    train_files: tuple[str, ...]  # in official order
    test_files: tuple[str, ...]
    examples: dict  # split -> number of images
    class_names: tuple[str, ...]
    archive_url: str
    archive_name: str
    archive_bytes: int
    archive_md5: str
    file_md5: dict  # official md5 of each extracted file; empty when none is published

    @property
    def record_bytes(self) -> int:
        return self.label_bytes + IMAGE_BYTES

    def split_files(self, split: str) -> tuple[str, ...]:
        if split == "train":
            return self.train_files
        if split == "test":
            return self.test_files
        raise ValueError(f"unknown split {split!r}: expected 'train' or 'test'")


CIFAR10 = DatasetInfo(
    name="cifar10",
    title="CIFAR-10",
    folder="cifar-10-batches-bin",
    label_bytes=1,
    num_classes=10,
    num_coarse_classes=0,
    train_files=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    test_files=("test_batch.bin",),
    examples={"train": 50_000, "test": 10_000},
    class_names=CIFAR10_CLASSES,
    archive_url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    archive_name="cifar-10-binary.tar.gz",
    archive_bytes=170_052_171,
    archive_md5="c32a1d4ab5d03f1284b67883e8d87530",
    file_md5={
        "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
        "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
        "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
        "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
        "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
        "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
    },
)

CIFAR100 = DatasetInfo(
    name="cifar100",
    title="CIFAR-100",
    folder="cifar-100-binary",
    label_bytes=2,  # coarse label byte, then fine label byte
    num_classes=100,
    num_coarse_classes=20,
    train_files=("train.bin",),
    test_files=("test.bin",),
    examples={"train": 50_000, "test": 10_000},
    class_names=CIFAR100_CLASSES,
    archive_url="https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
    archive_name="cifar-100-binary.tar.gz",
    archive_bytes=168_513_733,
    archive_md5="03b5dce01913d631647c71ecec9e9cb8",
    file_md5={},  # not published: the archive md5 vouches for the files
)

DATASETS = {info.name: info for info in (CIFAR10, CIFAR100)}


def dataset_info(name: str | DatasetInfo) -> DatasetInfo:
    """Look up a data set by name ("cifar10", "cifar100"); a DatasetInfo passes through."""
    if isinstance(name, DatasetInfo):
        return name
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}"
        ) from None


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data root every command uses: --data-dir, else $CIFARLAB_DATA, else ~/.cache/cifarlab."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get("CIFARLAB_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "cifarlab"


def dataset_dir(data_dir: str | os.PathLike | None, dataset: str) -> Path:
    """Where a data set's files live under the data root (the official archive's folder name)."""
    return resolve_data_dir(data_dir) / dataset_info(dataset).folder
