"""Reading an experiment's seeds, and the statistics `show` and `compare` print.

The distributions come from scipy.stats: Student's t for a mean's interval, Welch's test
for a difference of means, the noncentral t for the seeds a difference needs."""

from __future__ import annotations

import math
import re
from pathlib import Path

from ..errors import ConfigError
from ..run.result import read_result
from ..run.status import read_status, trainer_alive

POWER = 0.8


def seed_result(run_dir: Path) -> dict | None:
    """{accuracy, seconds, flops, ..., setups, resumed_at} of a finished run directory, else
    None. `setups`: where and in what arithmetic it trained, one per kind of command."""
    record = read_result(run_dir)
    try:
        return {"accuracy": float(record["precision_at_1"]), "seconds": float(record["seconds"]),
                "flops": float(record["training_flops"]), "step": int(record["step"]),
                "tta": bool(record.get("tta", False)), **_where_trained(record)}  # fmt: skip
    except (ValueError, KeyError, TypeError):  # no record (None), or not one of ours
        return None


def _where_trained(record: dict) -> dict:
    """The distinct "machine; arithmetic" of the commands that trained a run, and the steps
    it was resumed at. Results written before the history was kept name only the CPU."""
    history = record.get("history")
    if not history:
        threads = f", {record['threads']} threads" if record.get("threads") else ""
        return {"setups": [f"{record.get('cpu', 'machine not recorded')}{threads}; "
                           "arithmetic not recorded"], "resumed_at": []}  # fmt: skip
    setups = []
    for entry in history:
        setup = f"{entry['ran_on']}; {entry['arithmetic']}"
        if setup not in setups:
            setups.append(setup)
    return {"setups": setups, "resumed_at": [int(entry["from_step"]) for entry in history[1:]]}


def seed_state(run_dir: Path) -> str:
    """What an unfinished seed is doing: not started, running, stopped at step N, ..."""
    status = read_status(run_dir)
    if status is None:
        return "not started" if not Path(run_dir).exists() else "starting"
    state, step = status.get("state"), status.get("step")
    if state == "running" and not trainer_alive(status):
        state = "killed"
    return f"{state} at step {step}" if step is not None else str(state)


def collect(exp_dir: Path) -> list[dict]:
    """One row per seed the experiment names or holds: seed, finished, and its figures."""
    from .spec import load_experiment, seed_dir

    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise ConfigError(f"{exp_dir}: no such experiment directory")
    experiment = load_experiment(exp_dir)
    seeds = set(experiment.seeds if experiment else [])
    for path in exp_dir.glob("seed-*"):
        match = re.fullmatch(r"seed-(\d+)", path.name)
        if match and path.is_dir():
            seeds.add(int(match.group(1)))
    if experiment is None and not seeds:
        raise ConfigError(
            f"{exp_dir}: not an experiment directory (no experiment.json, no seed-N runs)"
        )
    rows = []
    for seed in sorted(seeds):
        result = seed_result(seed_dir(exp_dir, seed))
        if result is not None:
            rows.append({"seed": seed, "finished": True, **result})
        else:
            rows.append({"seed": seed, "finished": False, "accuracy": None, "seconds": None,
                         "flops": None, "state": seed_state(seed_dir(exp_dir, seed))})  # fmt: skip
    return rows


def summary(values: list[float]) -> dict:
    """n, mean, std (n - 1), min, max and the 95% t-interval of the mean."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None, "ci95": None}
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    ci = None
    if n > 1:
        if std == 0:
            ci = [mean, mean]
        else:
            low, high = stats.t.interval(0.95, n - 1, loc=mean, scale=std / math.sqrt(n))
            ci = [float(low), float(high)]
    return {"n": n, "mean": mean, "std": std, "min": min(values), "max": max(values), "ci95": ci}


def setups_of(finished: list[dict]) -> list[str]:
    """Every "machine; arithmetic" these finished seeds trained on, in order of appearance."""
    return list(dict.fromkeys(setup for r in finished for setup in r["setups"]))


def show(exp_dir: Path) -> dict:
    rows = collect(exp_dir)
    finished = [r for r in rows if r["finished"]]
    out = summary([r["accuracy"] for r in finished])
    out["seeds"] = rows
    out["unfinished"] = [r["seed"] for r in rows if not r["finished"]]
    out["median_seconds"] = _median([r["seconds"] for r in finished])
    flops = {r["flops"] for r in finished}
    out["flops"] = flops.pop() if len(flops) == 1 else None
    # Every machine and arithmetic the finished seeds trained on: more than one, and their
    # seconds measure different machines (and their accuracies, possibly, other arithmetic).
    out["setups"] = setups_of(finished)
    return out


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def seeds_for_power(
    difference: float, std_a: float, std_b: float, power: float = POWER
) -> int | None:
    """Seeds per side for a two-sided Welch test at 5% to detect `difference` with `power`,
    assuming the two sides' observed spreads (the noncentral t distribution). None when the
    difference is 0 (no number of seeds detects it)."""
    from scipy import stats

    if difference == 0 or not math.isfinite(difference):
        return None
    variance = std_a**2 + std_b**2
    if variance == 0:
        return 2
    for n in range(2, 1_000_001):
        df = (variance / n) ** 2 / ((std_a**2 / n) ** 2 / (n - 1) + (std_b**2 / n) ** 2 / (n - 1))
        noncentrality = abs(difference) / math.sqrt(variance / n)
        critical = stats.t.ppf(0.975, df)
        reached = stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(
            -critical, df, noncentrality
        )
        if reached >= power:
            return n
    return None


def compare(exp_a: Path, exp_b: Path) -> dict:
    """B minus A: the difference of mean accuracies, its 95% interval, Welch's p-value, and
    the seeds each side would need to detect a difference of the observed size."""
    from scipy import stats

    sides, setups = {}, {}
    for name, path in (("a", exp_a), ("b", exp_b)):
        finished = [r for r in collect(path) if r["finished"]]
        if len(finished) < 2:
            raise ConfigError(
                f"{path}: {len(finished)} finished seed(s); a comparison needs at least 2 a side"
            )
        sides[name] = [r["accuracy"] for r in finished]
        setups[name] = setups_of(finished)
    a, b = sides["a"], sides["b"]
    sa, sb = summary(a), summary(b)
    difference = sb["mean"] - sa["mean"]
    if sa["std"] == 0 and sb["std"] == 0:
        p_value = 1.0 if difference == 0 else 0.0
        ci = [difference, difference]
    else:
        test = stats.ttest_ind(b, a, equal_var=False)
        low, high = test.confidence_interval(0.95)
        p_value, ci = float(test.pvalue), [float(low), float(high)]
    return {"a": str(exp_a), "b": str(exp_b), "n_a": len(a), "n_b": len(b),
            "mean_a": sa["mean"], "mean_b": sb["mean"], "std_a": sa["std"], "std_b": sb["std"],
            "ci95_a": sa["ci95"], "ci95_b": sb["ci95"], "values_a": a, "values_b": b,
            "setups_a": setups["a"], "setups_b": setups["b"],
            "difference": difference, "ci95": ci, "p_value": p_value,
            "seeds_for_power": seeds_for_power(difference, sa["std"], sb["std"])}  # fmt: skip
