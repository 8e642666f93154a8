"""Split the installed CIFAR-10 into three folders of at most 62 MB, for machines that take
files 64 MiB at a time (benchmarks/gpu_check.sh joins them and verifies the md5s).

    python benchmarks/split_data.py data/parts
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from cifarlab.data.layout import CIFAR10, dataset_dir
from cifarlab.data.sources import MANIFEST, verify_folder

PARTS = (
    ("data_batch_1.bin", "data_batch_2.bin"),
    ("data_batch_3.bin", "data_batch_4.bin"),
    ("data_batch_5.bin", "test_batch.bin", MANIFEST, "batches.meta.txt"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default="data/parts", help="default data/parts")
    out = Path(parser.parse_args().out)
    folder = dataset_dir(None, "cifar10")
    verify_folder(CIFAR10, folder)  # only verified data leaves this machine
    for number, names in enumerate(PARTS, 1):
        part = out / str(number)
        part.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy2(folder / name, part / name)
        size = sum(p.stat().st_size for p in part.iterdir())
        print(f"{part}: {', '.join(names)} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
