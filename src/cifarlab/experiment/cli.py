"""`cifarlab experiment run | plan | show | compare`: the subcommands' flags and printing."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ..errors import ConfigError


def experiment_parser(commands) -> None:
    from ..cli import add_train_flags, at_least

    p = commands.add_parser("experiment", help="one configuration over many seeds: run, plan, show, compare",
                            description="Train a configuration over seeds, each seed an ordinary run directory "
                                        "in EXP_DIR, and judge it with its uncertainty (docs/experiments.md).")  # fmt: skip
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    for name, help_text in (("run", "train the seeds here, one after another (or --jobs at once)"),
                            ("plan", "write one self-contained `cifarlab train` command per seed, for any scheduler")):  # fmt: skip
        r = what.add_parser(name, help=help_text,
                            description=f"{help_text}. Every `cifarlab train` flag is accepted and given to each "
                                        "seed's run, except --seed and --run-dir (from --seeds and EXP_DIR).")  # fmt: skip
        r.add_argument("exp_dir", metavar="EXP_DIR")
        r.add_argument("--seeds", required=True, help="seeds, e.g. 0-9 or 0-4,10-14")
        if name == "run":
            r.add_argument("--jobs", type=at_least(1), default=1,
                           help="seeds trained at once, the cores divided between them (default 1)")  # fmt: skip
        else:
            r.add_argument("--out", help="the commands file (default EXP_DIR/commands.txt)")
        add_train_flags(r)
        r.set_defaults(run=_cmd_run if name == "run" else _cmd_plan)
    s = what.add_parser("show", help="per seed accuracy, time and FLOPs; mean, std, 95%% interval")
    s.add_argument("exp_dir", metavar="EXP_DIR")
    s.add_argument("--json", action="store_true", help="print the summary as one JSON line last")
    s.set_defaults(run=_cmd_show)
    c = what.add_parser(
        "compare", help="B against A: difference of means, 95%% interval, Welch's p, a PNG"
    )
    c.add_argument("exp_a", metavar="A")
    c.add_argument("exp_b", metavar="B")
    c.add_argument("--png", help="the picture (default compare-A-vs-B.png here)")
    c.add_argument("--json", action="store_true", help="print the comparison as one JSON line last")
    c.set_defaults(run=_cmd_compare)


def _set_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    return repr(value) if isinstance(value, float) else str(value)


def asked_in(train_args: list[str]) -> dict:
    """The fields a saved experiment's seed command sets (`--recipe R --set K=V ...`)."""
    from ..config import parse_set

    recipe = train_args[train_args.index("--recipe") + 1] if "--recipe" in train_args else None
    sets = [train_args[i + 1] for i, flag in enumerate(train_args[:-1]) if flag == "--set"]
    return {**({"recipe": recipe} if recipe else {}), **parse_set(sets)}


def defaults_moved(saved: dict, now: dict, asked: dict) -> dict:
    """{field: saved value} for the fields the user did not set whose value the same command
    gives differently now: a recipe's default changed (fast's precision became auto) after
    the experiment began. Only within the same recipe; a field `now` lacks is left to
    check_same_experiment to name."""
    if saved.get("recipe") != now.get("recipe"):
        return {}
    return {name: saved[name] for name in saved
            if name not in asked and name in now and saved[name] != now[name]}  # fmt: skip


def _resolve(args: argparse.Namespace, for_plan: bool):
    """(Experiment, seeds asked): the configuration checked in full here, before any seed
    runs, and EXP_DIR created or checked to hold this same experiment."""
    from ..cli import asked_train_fields, fit_budget
    from ..config import DEFAULT_RECIPE, build_config, settings_added_since
    from .spec import claim, identity, load_experiment, parse_seeds, seed_dir

    if for_plan and args.budget is not None:
        raise ConfigError("--budget times this machine; a plan runs elsewhere: give --max-steps")
    seeds = parse_seeds(args.seeds)
    exp_dir = Path(args.exp_dir)
    saved = load_experiment(exp_dir)
    asked = asked_train_fields(args)
    for name in ("seed", "run_dir"):  # from a flag, --set or --config alike
        if name in asked:
            raise ConfigError(f"{name} (--{name.replace('_', '-')}): an experiment's seeds come from "
                              "--seeds and their run directories from EXP_DIR")  # fmt: skip
    if saved is not None and not asked and args.budget is None:
        asked = asked_in(saved.train_args)  # the experiment's own command, continued
    recipe = asked.get("recipe") or DEFAULT_RECIPE
    first = {**asked, "seed": seeds[0], "run_dir": str(seed_dir(exp_dir, seeds[0]))}
    config = build_config(recipe, first)
    if args.budget is not None:
        if "max_steps" in asked:
            raise ConfigError("--budget and --max-steps both set the run's length: give one")
        if saved is not None:  # timed once, when the experiment began: every seed runs as long
            from ..train.budget import chosen_fields

            asked.update({name: saved.fields.get(name) for name in chosen_fields(config, asked)})
            config = build_config(recipe, {**first, **asked})
        else:
            config = fit_budget(config, asked, args.budget)
    added: dict = {}
    if saved is not None:
        now = identity(config)
        added = {k: v for k, v in settings_added_since(recipe, saved.fields).items() if k in now}
        kept = defaults_moved({**added, **saved.fields}, now, asked)
        if kept:  # new seeds compute what the saved ones did, not the recipe's new defaults
            asked.update(kept)
            config = build_config(recipe, {**first, **asked})
            print(f"cifarlab experiment: {exp_dir} keeps "
                  f"{', '.join(f'{k}={_set_value(v)}' for k, v in kept.items())}, what its seeds "
                  "computed (the recipe's default has changed since they began)", file=sys.stderr)  # fmt: skip
    train_args = ["--recipe", config.recipe_spec]
    for name in sorted(asked):
        if name not in ("recipe", "seed", "run_dir"):
            train_args += ["--set", f"{name}={_set_value(config.get(name))}"]
    return claim(exp_dir, config.recipe_spec, identity(config), train_args, seeds, added), seeds


def _cmd_run(args: argparse.Namespace) -> int:
    from .runner import SeedsStopped, default_threads, run_seeds, stopped_at_checkpoint

    experiment, seeds = _resolve(args, for_plan=False)
    print(f"experiment {experiment.exp_dir}: {experiment.recipe}, seeds {args.seeds}, "
          f"{args.jobs} at a time", flush=True)  # fmt: skip
    try:
        codes = run_seeds(experiment, seeds, jobs=args.jobs, threads=default_threads(args.jobs),
                          say=lambda line: print(line, flush=True), take_ctrl_c=args.as_command)  # fmt: skip
    except SeedsStopped as e:
        print(f"cifarlab experiment: {e}", file=sys.stderr)
        return 128 + e.signum
    stopped = sorted(seed for seed, code in codes.items()
                     if code != 0 and stopped_at_checkpoint(experiment, seed) is not None)  # fmt: skip
    failed = sorted(seed for seed, code in codes.items() if code != 0 and seed not in stopped)
    _print_show(experiment.exp_dir, as_json=False)
    if stopped and not failed:  # a signal sent to a trainer itself, not to us
        print(f"cifarlab experiment: seed(s) {', '.join(map(str, stopped))} stopped at a "
              "checkpoint; rerun the same command to go on", file=sys.stderr)  # fmt: skip
        return 1
    if failed:  # seeds stopped by their own trainers' signals named too
        also = (f"; seed(s) {', '.join(map(str, stopped))} stopped at a checkpoint, a rerun goes "
                "on from it") if stopped else ""  # fmt: skip
        print(f"cifarlab experiment: error: seed(s) {', '.join(map(str, failed))} failed, "
              f"see {experiment.exp_dir}/seed-N.log{also}", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    experiment, seeds = _resolve(args, for_plan=True)
    out = Path(args.out) if args.out else experiment.exp_dir / "commands.txt"
    lines = [experiment.shell_command(seed) for seed in seeds]
    from ..files import atomic_write

    atomic_write(out, "\n".join(lines) + "\n")
    print(f"wrote {len(lines)} command(s) to {out}; run them anywhere the data is (docs/experiments.md), "
          f"then: cifarlab experiment show {shlex.quote(str(experiment.exp_dir))}")  # fmt: skip
    return 0


def _print_show(exp_dir: Path, as_json: bool) -> dict:
    from .results import show

    out = show(exp_dir)
    letters = {setup: chr(ord("A") + i) if i < 26 else str(i + 1)
               for i, setup in enumerate(out["setups"])}  # fmt: skip
    print(f"{exp_dir}")
    print("| seed | accuracy | seconds | training FLOPs | ran on | state |\n"
          "|---:|---:|---:|---:|---|---|")  # fmt: skip
    for r in out["seeds"]:
        if r["finished"]:
            where = ", ".join(letters[setup] for setup in r["setups"])
            resumed = ", ".join(map(str, r["resumed_at"]))
            state = f"finished, resumed at step {resumed}" if resumed else "finished"
            print(f"| {r['seed']} | {r['accuracy']:.2%} | {r['seconds']:.0f} | {r['flops']:.3g} "
                  f"| {where} | {state} |")  # fmt: skip
        else:
            print(f"| {r['seed']} | | | | | {r['state']} |")
    for setup, letter in letters.items():
        print(f"{letter}: {setup}")
    if len(letters) > 1:
        print(f"the seeds trained on {len(letters)} machines or arithmetics (A-{letter}): "
              "their seconds are not one machine's, and the median mixes them")  # fmt: skip
    if out["n"]:
        line = f"n {out['n']}, mean {out['mean']:.2%}"
        if out["n"] > 1:
            low, high = out["ci95"]
            line += f" (95% interval {low:.2%} to {high:.2%}), std {100 * out['std']:.2f} points"
        line += (
            f", min {out['min']:.2%}, max {out['max']:.2%}; median {out['median_seconds']:.0f} s"
        )
        print(line)
    else:
        print("no finished seed yet")
    if out["unfinished"]:
        print(f"unfinished (not counted): seed(s) {', '.join(map(str, out['unfinished']))}")
    if as_json:
        print(json.dumps(out))
    return out


def _cmd_show(args: argparse.Namespace) -> int:
    _print_show(Path(args.exp_dir), args.json)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .plot import plot_comparison
    from .results import compare

    a, b = Path(args.exp_a), Path(args.exp_b)
    result = compare(a, b)
    names = (a.resolve().name, b.resolve().name)
    png = Path(args.png) if args.png else Path(f"compare-{names[0]}-vs-{names[1]}.png")
    plot_comparison(result, png, names)
    low, high = result["ci95"]
    for side, path in (("a", a), ("b", b)):
        print(f"{side.upper()} {path}: n {result[f'n_{side}']}, mean {result[f'mean_{side}']:.2%}; "
              f"trained on {' | '.join(result[f'setups_{side}'])}")  # fmt: skip
    print(f"B - A: {100 * result['difference']:+.2f} points, 95% interval [{100 * low:+.2f}, {100 * high:+.2f}], "
          f"Welch's p = {result['p_value']:.3g}")  # fmt: skip
    need = result["seeds_for_power"]
    print(
        f"seeds a side to detect a difference this large at 80% power: {need if need else 'none would'}"
    )
    print(f"wrote {png}")
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if not k.startswith("values_")}))
    return 0
