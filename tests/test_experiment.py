"""`cifarlab experiment`: seeds as ordinary runs, a kill that costs only the interrupted
seed's steps since its checkpoint, statistics that agree with an independent computation,
and refusals in one line. Everything runs as a user runs it, in its own process."""

import functools
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time

import pytest
import torch
from scipy import stats

from cifarlab.experiment.results import seeds_for_power, summary
from cifarlab.experiment.runner import settle
from cifarlab.experiment.spec import load_experiment
from cifarlab.machine import cpu_kind
from cifarlab.run.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint


@functools.cache
def float32_arithmetic(width: int) -> str:
    """What a float32 run of fast-sgd at this width on one thread records as its arithmetic
    here: settled as the run settles it, in a process of its own (the pool, batch norm and
    GELU by the fused kernel for the shapes where it was timed faster here, the verdicts kept
    in the kernel cache, which the runs then read)."""
    code = ("import torch; torch.set_num_threads(1); from cifarlab.config import build_config; "
            f"r = build_config('fast-sgd', {{'width': {width}}}).recipe; "
            "cpu = torch.device('cpu'); r.prepare_device(cpu); print(r.arithmetic(cpu))")  # fmt: skip
    said = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return said.stdout.strip().splitlines()[-1]


pytestmark = pytest.mark.slow

TINY = ["--recipe", "fast-sgd", "--synthetic", "--set", "synthetic_train_per_class=12",
        "--set", "synthetic_test_per_class=6", "--batch-size", "20", "--set", "width=16",
        "--threads", "1", "--checkpoint-every", "2"]  # fmt: skip


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "cifarlab", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def ok(done):
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    return done


def last_json(done):
    return json.loads(done.stdout.strip().splitlines()[-1])


def one_line_error(done, *fragments):
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1, (done.returncode, done.stderr[-3000:])
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_a_killed_experiment_reruns_to_the_same_results_retraining_nothing_finished(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = ["experiment", "run", "--seeds", "0-2", *TINY, "--max-steps", "12"]
    ok(cli(*args[:2], straight, *args[2:]))
    # Kill the experiment (SIGKILL: no chance to clean up) once seed 1 wrote its step-4
    # checkpoint: seed 0 is finished, seed 1 interrupted, seed 2 not started.
    process = subprocess.Popen([sys.executable, "-m", "cifarlab", *args[:2], str(killed), *args[2:]],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wait_for(killed / "seed-1" / "ckpt-00000004.pt", process)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    seed0 = (killed / "seed-0" / "result.json").stat().st_mtime_ns
    assert not (killed / "seed-1" / "result.json").exists() and not (killed / "seed-2").exists()
    # The orphaned trainer of seed 1 was told to stop (it checkpoints first): the rerun waits for it.
    rerun = ok(cli(*args[:2], killed, *args[2:]))
    assert "seed 0: finished before, skipped" in rerun.stdout
    assert (killed / "seed-0" / "result.json").stat().st_mtime_ns == seed0  # not retrained
    assert "resuming" in (killed / "seed-1.log").read_text()  # from its checkpoint
    history = json.loads((killed / "seed-1" / "result.json").read_text())["history"]
    resumed_at = history[1]["from_step"]
    assert 4 <= resumed_at < 12
    a, b = (
        last_json(ok(cli("experiment", "show", straight, "--json"))),
        last_json(ok(cli("experiment", "show", killed, "--json"))),
    )
    assert [s["accuracy"] for s in a["seeds"]] == [s["accuracy"] for s in b["seeds"]]
    assert [s["flops"] for s in a["seeds"]] == [s["flops"] for s in b["seeds"]]
    x, y = (load_checkpoint(d / "seed-1" / "ckpt-00000012.pt") for d in (straight, killed))
    for part in ("model", "average"):  # bit-identical where the kill landed
        assert all(torch.equal(x[part][k], y[part][k]) for k in x[part])

    # show: the figures agree with an independent computation from the seeds' result.json
    accuracy = [
        json.loads((straight / f"seed-{s}" / "result.json").read_text())["precision_at_1"]
        for s in range(3)
    ]
    assert a["n"] == 3 and a["mean"] == pytest.approx(statistics.mean(accuracy))
    assert a["std"] == pytest.approx(statistics.stdev(accuracy))
    half = stats.t.ppf(0.975, 2) * statistics.stdev(accuracy) / math.sqrt(3)
    assert a["ci95"] == pytest.approx(
        [statistics.mean(accuracy) - half, statistics.mean(accuracy) + half]
    )
    assert (a["min"], a["max"]) == (min(accuracy), max(accuracy))
    assert all(s["finished"] and s["seconds"] > 0 and s["flops"] > 0 for s in a["seeds"])
    # where each seed trained: one machine and arithmetic for all; the killed seed resumed
    assert len(a["setups"]) == 1 and a["setups"] == b["setups"]
    assert [s["resumed_at"] for s in b["seeds"]] == [[], [resumed_at], []]
    # each seed is an ordinary run directory: eval works on it
    assert (
        last_json(ok(cli("eval", straight / "seed-2", "--tta", "--json")))["precision_at_1"]
        == accuracy[2]
    )

    # the same experiment asked with another configuration is refused, naming the field
    one_line_error(
        cli(*args[:2], straight, *args[2:-1], "16"),
        "holds another experiment",
        "max_steps (saved 12, asked 16)",
    )


def test_plan_writes_commands_any_scheduler_runs_and_show_reads_what_finished(tmp_path):
    exp = tmp_path / "exp"
    done = ok(cli("experiment", "plan", exp, "--seeds", "3-5", *TINY, "--max-steps", "4"))
    lines = (exp / "commands.txt").read_text().splitlines()
    assert len(lines) == 3 and "commands.txt" in done.stdout
    assert all(
        f"--seed {s}" in line and str(exp.resolve() / f"seed-{s}") in line
        for s, line in zip((3, 4, 5), lines, strict=True)
    )
    # what a scheduler does: run a line as it stands, from another directory
    for line in lines[:2]:
        words = shlex.split(line)
        assert words[0] == "cifarlab"
        ok(
            subprocess.run(
                [sys.executable, "-m", "cifarlab", *words[1:]],
                capture_output=True,
                text=True,
                cwd="/",
            )
        )
    shown = ok(cli("experiment", "show", exp, "--json"))
    result = last_json(shown)
    assert result["n"] == 2 and result["unfinished"] == [5]
    assert [s["finished"] for s in result["seeds"]] == [True, True, False]
    assert "| 5 | | | | | not started |" in shown.stdout
    one_line_error(
        cli("experiment", "plan", exp, "--seeds", "0", *TINY, "--budget", "1"),
        "--budget times this machine",
    )


def test_compare_tells_a_real_difference_from_none(tmp_path):
    """5 steps against 50 of the same recipe on synthetic data (about 9% against 81%): B is
    better, p < 0.01. Two seed sets of one configuration: the interval contains 0."""
    short, long_, again = tmp_path / "short", tmp_path / "long", tmp_path / "again"
    common = ["--recipe", "fast-sgd", "--set", "width=32", "--synthetic", "--set",
              "synthetic_train_per_class=30", "--set", "synthetic_test_per_class=30",
              "--batch-size", "60", "--threads", "1", "--checkpoint-every", "1000"]  # fmt: skip
    for exp, seeds, steps in ((short, "0-3", 5), (long_, "0-3", 50), (again, "4-7", 5)):
        ok(
            cli(
                "experiment",
                "run",
                exp,
                "--seeds",
                seeds,
                *common,
                "--max-steps",
                steps,
                "--jobs",
                2,
            )
        )
    png = tmp_path / "c.png"
    result = last_json(ok(cli("experiment", "compare", short, long_, "--json", "--png", png)))
    assert result["difference"] > 0 and result["p_value"] < 0.01 and result["ci95"][0] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    same = last_json(ok(cli("experiment", "compare", short, again, "--json", "--png", png)))
    assert same["ci95"][0] <= 0 <= same["ci95"][1] and same["p_value"] > 0.05
    assert same["n_a"] == same["n_b"] == 4
    # each side names where its seeds trained: here both on this machine, in float32
    assert (
        result["setups_a"]
        == result["setups_b"]
        == [f"{cpu_kind()}, 1 thread; {float32_arithmetic(32)}"]
    )

    # Welch's test, computed here from its formula, agrees with compare's
    a, b = (
        [s["accuracy"] for s in last_json(ok(cli("experiment", "show", d, "--json")))["seeds"]]
        for d in (short, long_)
    )
    va, vb = statistics.variance(a) / 4, statistics.variance(b) / 4
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 3)
    t = (statistics.mean(b) - statistics.mean(a)) / math.sqrt(va + vb)
    assert result["p_value"] == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9)
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert result["ci95"] == pytest.approx(
        [t * math.sqrt(va + vb) - half, t * math.sqrt(va + vb) + half]
    )


def test_the_seeds_for_power_reach_80_percent_by_simulation():
    """The noncentral-t answer, checked by drawing experiments of that many seeds."""
    import numpy as np

    n = seeds_for_power(0.1, 0.15, 0.15)
    rng = np.random.default_rng(0)
    hits = [stats.ttest_ind(rng.normal(0.1, 0.15, n), rng.normal(0, 0.15, n), equal_var=False).pvalue < 0.05
            for _ in range(4000)]  # fmt: skip
    assert 0.78 <= np.mean(hits) <= 0.84
    fewer = [stats.ttest_ind(rng.normal(0.1, 0.15, n - 3), rng.normal(0, 0.15, n - 3), equal_var=False).pvalue < 0.05
             for _ in range(4000)]  # fmt: skip
    assert np.mean(fewer) < 0.8
    assert seeds_for_power(0.0, 0.1, 0.1) is None
    assert summary([0.5])["ci95"] is None and summary([])["n"] == 0


def test_bad_input_is_one_line_and_changes_nothing(tmp_path):
    one_line_error(
        cli("experiment", "run", tmp_path / "e", "--seeds", "0-5,3-8", *TINY), "overlap at seed 3"
    )
    one_line_error(cli("experiment", "run", tmp_path / "e", "--seeds", "5-2", *TINY), "empty range")
    one_line_error(
        cli("experiment", "run", tmp_path / "e", "--seeds", "x", *TINY), "expected ranges"
    )
    one_line_error(
        cli("experiment", "run", tmp_path / "e", "--seeds", "0", "--seed", "1", *TINY), "--seed"
    )
    one_line_error(
        cli("experiment", "run", tmp_path / "e", "--seeds", "0", "--recipe", tmp_path / "none.py"),
        "no such file",
    )
    assert not (tmp_path / "e").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    one_line_error(
        cli("experiment", "run", other, "--seeds", "0", *TINY), "not an experiment directory"
    )
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    # an experiment with no finished seed cannot be compared
    ok(cli("experiment", "plan", tmp_path / "planned", "--seeds", "0-1", *TINY))
    one_line_error(
        cli("experiment", "compare", tmp_path / "planned", tmp_path / "planned"),
        "0 finished seed(s)",
    )
    one_line_error(cli("experiment", "show", tmp_path / "missing"), "no such experiment directory")


def as_from_a_terminal():
    """In the child: Ctrl-C's default disposition, as a command typed at a terminal has it
    (a test run started in the background, `nohup ... &`, inherits SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_experiment(args):
    return subprocess.Popen([sys.executable, "-m", "cifarlab", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_from_a_terminal)  # fmt: skip


def wait_for(path, process):
    deadline = time.monotonic() + 300
    while not path.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_stops_the_running_seed_at_a_checkpoint_and_the_rerun_goes_on(tmp_path, signum):
    """The experiment's process is the one a scheduler or a terminal signals; it passes the
    signal on to the trainer (started in its own session) while waiting for it to end."""
    exp = tmp_path / "exp"
    args = ["experiment", "run", exp, "--seeds", "0-1", *TINY, "--max-steps", "60"]
    process = start_experiment(args)
    wait_for(exp / "seed-0" / "ckpt-00000002.pt", process)
    process.send_signal(signum)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, err
    status = json.loads((exp / "seed-0" / "status.json").read_text())
    assert status["state"] == "interrupted" and 2 <= status["step"] < 60  # a checkpoint at its step
    assert f"stopped by {signum.name} ({int(signum)}); rerun the same command to go on" in err
    assert f"seed 0: stopped at step {status['step']}, checkpoint written" in out
    assert not (exp / "seed-1").exists()  # no new seed started after the signal
    rerun = ok(cli(*args))
    assert f"resuming {exp.resolve() / 'seed-0'}" in (exp / "seed-0.log").read_text()
    assert "n 2, mean" in rerun.stdout


def test_a_program_calling_the_experiment_keeps_its_own_ctrl_c(tmp_path):
    """`cifarlab.cli.main([...])` from a program: Ctrl-C is still a KeyboardInterrupt for
    the caller (as for training called that way), raised after the trainer checkpointed."""
    exp = tmp_path / "exp"
    args = ["experiment", "run", str(exp), "--seeds", "0", *TINY, "--max-steps", "60"]
    program = ("import sys\nfrom cifarlab.cli import main\ntry:\n    main(sys.argv[1:])\n"
               "except KeyboardInterrupt:\n    sys.exit(7)\n")  # fmt: skip
    process = subprocess.Popen([sys.executable, "-c", program, *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_terminal)  # fmt: skip
    wait_for(exp / "seed-0" / "ckpt-00000002.pt", process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 7, (out[-2000:], err[-2000:])
    status = json.loads((exp / "seed-0" / "status.json").read_text())
    assert status["state"] == "interrupted" and 2 <= status["step"] < 60


def test_a_trainer_stopped_by_its_own_signal_is_reported_stopped_not_failed(tmp_path):
    """Ctrl-C sent to one seed's trainer (by its pid, say, to free the cores): the seed stops
    at a checkpoint, the others go on, and the experiment says to rerun, not that it failed."""
    exp = tmp_path / "exp"
    args = ["experiment", "run", exp, "--seeds", "0-1", *TINY, "--max-steps", "60"]
    process = start_experiment(args)
    wait_for(exp / "seed-0" / "ckpt-00000002.pt", process)
    trainer = int((exp / "seed-0" / ".lock").read_text().split()[1])  # "process PID on HOST ..."
    os.kill(trainer, signal.SIGINT)
    out, err = process.communicate(timeout=300)
    step = json.loads((exp / "seed-0" / "status.json").read_text())["step"]
    assert f"seed 0: stopped at step {step}, checkpoint written" in out, out
    assert "seed 1: " in out and (exp / "seed-1" / "result.json").exists()  # the next seed ran
    assert "failed" not in out + err
    assert process.returncode == 1
    assert err.strip() == ("cifarlab experiment: seed(s) 0 stopped at a checkpoint; rerun the "
                           "same command to go on")  # fmt: skip
    assert "n 2, mean" in ok(cli(*args)).stdout


def test_a_seed_signalled_after_writing_its_result_counts_as_finished(tmp_path):
    """A watcher that sends SIGTERM the moment result.json appears can catch the trainer as
    it exits: the seed finished, so it is reported with its accuracy, neither stopped nor
    failed; a seed signalled before its result stays unfinished."""
    exp = tmp_path / "exp"
    ok(cli("experiment", "run", exp, "--seeds", "0", *TINY, "--max-steps", "4"))
    experiment = load_experiment(exp)
    accuracy = json.loads((exp / "seed-0" / "result.json").read_text())["precision_at_1"]
    for code in (-signal.SIGTERM, 128 + signal.SIGTERM, 128 + signal.SIGINT):
        counted, line = settle(experiment, 0, code)
        assert counted == 0 and line.startswith(f"seed 0: {accuracy:.2%} in "), (code, line)
    counted, line = settle(experiment, 1, -signal.SIGTERM)
    assert counted == -signal.SIGTERM and line.startswith("seed 1: stopped in start-up"), line


def test_failed_and_stopped_seeds_are_both_named_in_the_error(tmp_path):
    """One seed stopped by a signal to its trainer, the next failing: the one error line says
    which failed and which a rerun will continue."""
    exp = tmp_path / "exp"
    args = ["experiment", "run", exp, "--seeds", "0-1", *TINY, "--max-steps", "60"]
    ok(cli("experiment", "plan", *args[2:]))
    (exp / "seed-1").mkdir()  # checkpoints without their config: the trainer refuses to start
    (exp / "seed-1" / "ckpt-00000002.pt").write_bytes(b"not a checkpoint")
    process = start_experiment(args)
    wait_for(exp / "seed-0" / "ckpt-00000002.pt", process)
    os.kill(int((exp / "seed-0" / ".lock").read_text().split()[1]), signal.SIGINT)
    out, err = process.communicate(timeout=300)
    step = json.loads((exp / "seed-0" / "status.json").read_text())["step"]
    assert f"seed 0: stopped at step {step}, checkpoint written" in out, out
    assert "seed 1: failed (exit 1): cifarlab train: error: " in out and "no config.json" in out
    assert process.returncode == 1
    assert err.strip() == (f"cifarlab experiment: error: seed(s) 1 failed, see {exp}/seed-N.log; "
                           "seed(s) 0 stopped at a checkpoint, a rerun goes on from it")  # fmt: skip


def test_show_names_where_each_seed_trained_and_a_run_moved_to_another_machine(tmp_path):
    """A run continued on another machine (here: its checkpoint's history says so, as it
    would after copying the run directory) says so when it continues, records both in its
    result, and `show` keeps the two setups apart."""
    exp = tmp_path / "exp"
    args = ["experiment", "run", exp, "--seeds", "0-1", *TINY, "--max-steps", "12"]
    ok(cli(*args))
    first = json.loads((exp / "seed-0" / "result.json").read_text())
    assert first["history"] == [{"from_step": 0, "ran_on": f"{cpu_kind()}, 1 thread",
                                 "arithmetic": float32_arithmetic(16)}]  # fmt: skip
    # seed 0 back to step 8, as if trained that far on another machine in bfloat16
    run = exp / "seed-0"
    state = load_checkpoint(run / "ckpt-00000008.pt")
    elsewhere = {"from_step": 0, "ran_on": "Other CPU (family 6 model 1; avx2), 2 threads",
                 "arithmetic": "bfloat16"}  # fmt: skip
    save_checkpoint(run, 8, {**state, "history": [elsewhere]}, keep=100)
    for step, path in list_checkpoints(run):
        if step > 8:
            path.unlink()
    (run / "result.json").unlink()
    rerun = ok(cli(*args))
    log = (exp / "seed-0.log").read_text()
    assert (f"steps 0-8 ran on {elsewhere['ran_on']} in bfloat16; from step 8 on: {cpu_kind()}, "
            "1 thread in float32") in log  # fmt: skip
    history = json.loads((run / "result.json").read_text())["history"]
    assert history == [elsewhere, {**first["history"][0], "from_step": 8}]
    shown = last_json(ok(cli("experiment", "show", exp, "--json")))
    here = f"{cpu_kind()}, 1 thread; {float32_arithmetic(16)}"
    assert shown["setups"] == [f"{elsewhere['ran_on']}; bfloat16", here]
    assert [s["setups"] for s in shown["seeds"]] == [shown["setups"], [here]]
    assert [s["resumed_at"] for s in shown["seeds"]] == [[8], []]
    assert "| A, B | finished, resumed at step 8 |" in rerun.stdout
    assert "the seeds trained on 2 machines or arithmetics" in rerun.stdout


def test_new_seeds_compute_what_the_first_did_after_a_recipe_default_changes(tmp_path):
    # `fast` defaults to precision=auto now; its experiments begun before trained in float32.
    # Rewrite a fresh experiment's record as such an older one would read, once with the
    # field recorded and once from before the setting existed: either way a rerun of the
    # experiment's own command (or of no command at all) pins float32 and says so.
    narrow = ["--recipe", "fast", *TINY[2:], "--set", "width=16", "--max-steps", "2"]
    for case in ("recorded", "before the setting"):
        exp = tmp_path / case.replace(" ", "-")
        ok(cli("experiment", "plan", exp, "--seeds", "0", *narrow))
        spec = json.loads((exp / "experiment.json").read_text())
        assert spec["fields"]["precision"] == "auto" and "precision=auto" not in spec["train_args"]
        if case == "recorded":
            spec["fields"]["precision"] = "float32"
        else:
            del spec["fields"]["precision"]
        (exp / "experiment.json").write_text(json.dumps(spec))
        for again in ([], narrow):
            done = ok(cli("experiment", "plan", exp, "--seeds", "1", *again))
            command = (exp / "commands.txt").read_text().split()
            assert "precision=float32" in command, command
            assert "keeps precision=float32, what its seeds computed" in done.stderr
        # asked for explicitly, the new default is another experiment: refused, named
        one_line_error(cli("experiment", "plan", exp, "--seeds", "1", *narrow,
                           "--set", "precision=auto"),  # fmt: skip
                       "precision (saved 'float32', asked 'auto')")  # fmt: skip
    # and the seed the runner starts trains in float32 (its saved configuration says so)
    exp = tmp_path / "recorded"
    ok(cli("experiment", "run", exp, "--seeds", "1"))
    config = json.loads((exp / "seed-1" / "config.json").read_text())
    assert config["params"]["precision"] == "float32"
