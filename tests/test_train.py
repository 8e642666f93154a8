"""End-to-end training on the synthetic set: real processes, real files, real signals."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import trivial_accuracy
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifarlab.cli import main
from cifarlab.run.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

pytestmark = pytest.mark.slow

SMALL = ["--synthetic", "--set", "synthetic_train_per_class=20", "--set", "synthetic_test_per_class=5",
         "--batch-size", "16", "--threads", "1", "--no-progress"]  # fmt: skip


def _cli(*args):
    return [sys.executable, "-m", "cifarlab", "train", *args]


def _wait_for(predicate, process, timeout=120):
    deadline = time.time() + timeout
    while not predicate():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_short_synthetic_run_learns(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--synthetic", "--run-dir", str(run), "--max-steps", "150", "--batch-size", "64",
                 "--set", "synthetic_train_per_class=60", "--set", "synthetic_test_per_class=20",
                 "--summary-every", "50", "--no-progress", "--json"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "step 10, loss = " in out and "examples/sec; " in out and "sec/batch)" in out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["examples"] == 200 and result["step"] == 150
    # Chance is 0.1; classifiers that learn no shapes reach about 0.5 on this set.
    assert trivial_accuracy(run / "synthetic-data") < 0.6 < 0.75 < result["precision_at_1"]
    saved = json.loads((run / "config.json").read_text())
    assert saved["run"]["max_steps"] == 150 and saved["run"]["batch_size"] == 64
    assert saved["recipe"] == "tutorial" and saved["params"]["learning_rate"] == 0.1
    # eval on the saved run agrees with the end-of-training figure
    assert main(["eval", str(run), "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["precision_at_1"] == result["precision_at_1"] and again["step"] == 150
    assert again["examples"] == 200 and again["loss"] == pytest.approx(result["loss"], rel=1e-5)
    # metrics.jsonl holds the scalars, including the final evaluation
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == [50, 100, 150]
    assert any(
        r["kind"] == "eval" and r["eval/precision_at_1"] == result["precision_at_1"]
        for r in records
    )


def test_tensorboard_files_hold_the_tutorial_summaries(tmp_path):
    run = tmp_path / "run"
    assert (
        main(["train", *SMALL, "--run-dir", str(run), "--max-steps", "20", "--summary-every", "10"])
        == 0
    )
    events = EventAccumulator(str(run), size_guidance={"histograms": 0, "images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("learning_rate", "examples_per_sec", "loss/total_loss", "loss/total_loss (raw)",
                "loss/cross_entropy", "loss/cross_entropy (raw)", "loss/weight_loss/local3.weight",
                "conv1/sparsity", "local4/sparsity", "eval/precision_at_1"):  # fmt: skip
        assert tag in tags["scalars"], tag
    for tag in ("conv1/activations", "local3/activations", "softmax_linear/activations",
                "weights/conv1.weight", "gradients/local4.weight"):  # fmt: skip
        assert tag in tags["histograms"], tag
    assert "distorted_inputs" in tags["images"]
    assert tags["graph"]  # the network's graph, as the original wrote
    assert [e.step for e in events.Scalars("learning_rate")] == [10, 20]
    assert events.Scalars("learning_rate")[0].value == pytest.approx(0.1)


def test_sigkill_then_restart_is_bit_identical(tmp_path):
    args = [*SMALL, "--max-steps", "24", "--checkpoint-every", "4"]
    straight = tmp_path / "straight"
    subprocess.run(_cli(*args, "--run-dir", str(straight)), check=True, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _cli(*args, "--run-dir", str(killed)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    _wait_for(lambda: (killed / "ckpt-00000008.pt").exists(), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert latest_checkpoint(killed).name != "ckpt-00000024.pt"
    restarted = subprocess.run(
        _cli(*args, "--run-dir", str(killed)), check=True, capture_output=True, text=True
    )
    assert "resuming" in restarted.stdout

    a = load_checkpoint(straight / "ckpt-00000024.pt")
    b = load_checkpoint(killed / "ckpt-00000024.pt")
    for part in ("model", "average"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}/{name} differs"
    assert (
        a["data"]["epoch"] == b["data"]["epoch"]
        and a["data"]["step_in_epoch"] == b["data"]["step_in_epoch"]
    )


def test_sigterm_writes_a_checkpoint_at_the_current_step_and_exits(tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen(_cli(*SMALL, "--run-dir", str(run), "--max-steps", "100000", "--checkpoint-every", "5"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    _wait_for(lambda: (run / "ckpt-00000005.pt").exists(), process)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    step = list_checkpoints(run)[-1][0]
    assert step >= 5 and f"stopped by signal {int(signal.SIGTERM)} at step {step}" in out
    assert load_checkpoint(latest_checkpoint(run))["step"] == step


def test_ctrl_c_reaches_a_program_that_trains_in_process(tmp_path):
    """A program calling the trainer (pytest, a notebook) keeps its Ctrl-C: no handler of
    ours swallows it, and KeyboardInterrupt reaches the caller; the command itself still
    checkpoints and stops on SIGINT (the SIGTERM test above, and this one's second half)."""
    run = tmp_path / "run"
    host = f"""
import os, signal, sys, threading, time
from pathlib import Path
from cifarlab.cli import main
run = Path({str(run)!r})
def interrupt():
    while not list(run.glob("ckpt-*.pt")):  # any checkpoint: training is under way
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGINT)
# What an interactive program has (a job started in the background inherits SIGINT ignored).
signal.signal(signal.SIGINT, signal.default_int_handler)
threading.Thread(target=interrupt, daemon=True).start()
try:
    main(["train", *{SMALL!r}, "--run-dir", str(run), "--max-steps", "100000",
          "--checkpoint-every", "5", "--set", "learning_rate=0.01"])
except KeyboardInterrupt:
    print("the host got its KeyboardInterrupt")
    sys.exit(3)
print("training swallowed the interrupt")
"""
    hosted = subprocess.run(
        [sys.executable, "-c", host], capture_output=True, text=True, timeout=300
    )
    assert hosted.returncode == 3, hosted.stdout + hosted.stderr
    assert "the host got its KeyboardInterrupt" in hosted.stdout

    command = subprocess.Popen(_cli(*SMALL, "--run-dir", str(tmp_path / "cmd"), "--max-steps",
                                    "100000", "--checkpoint-every", "5"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    _wait_for(lambda: (tmp_path / "cmd" / "ckpt-00000005.pt").exists(), command)
    command.send_signal(signal.SIGINT)
    out, _ = command.communicate(timeout=60)
    assert command.returncode == 128 + signal.SIGINT, out
    assert f"stopped by signal {int(signal.SIGINT)} at step" in out


def test_divergence_stops_with_the_tutorial_message_and_keeps_good_checkpoints(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", *SMALL, "--run-dir", str(run), "--max-steps", "50", "--checkpoint-every", "1",
                 "--set", "learning_rate=1e6"])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "cifarlab train: error: Model diverged with loss = " in err  # NaN or Inf
    bad_step = int(err.rsplit("at step ", 1)[1].split()[0])
    steps = [s for s, _ in list_checkpoints(run)]
    assert steps and max(steps) == bad_step - 1  # nothing saved from the diverged step
    assert not (run / f"ckpt-{bad_step:08d}.pt").exists()


def test_restart_checks_the_configuration(tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            ["train", *SMALL, "--run-dir", str(run), "--max-steps", "6", "--checkpoint-every", "3"]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                *SMALL,
                "--run-dir",
                str(run),
                "--max-steps",
                "6",
                "--seed",
                "3",
                "--set",
                "learning_rate=0.05",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert (
        "different configuration: learning_rate (saved 0.1, asked 0.05), seed (saved 0, asked 3)"
        in err
    )
    assert "name a new --run-dir" in err
    # Raising --max-steps continues the run, and flags left out keep the saved values.
    assert main(["train", "--run-dir", str(run), "--max-steps", "9", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "from ckpt-00000006.pt (step 6)" in out
    assert [s for s, _ in list_checkpoints(run)] == [3, 6, 9]
    assert json.loads((run / "config.json").read_text())["run"]["max_steps"] == 9


def test_bad_config_values_are_one_line_errors(tmp_path, capsys):
    assert (
        main(["train", "--synthetic", "--run-dir", str(tmp_path / "r"), "--set", "learning_rat=1"])
        == 1
    )
    assert "unknown field(s) learning_rat" in capsys.readouterr().err
    assert (
        main(["train", "--synthetic", "--run-dir", str(tmp_path / "r"), "--set", "max_steps=ten"])
        == 1
    )
    assert "max_steps=ten: expected an integer" in capsys.readouterr().err
    assert (
        main(["train", "--synthetic", "--run-dir", str(tmp_path / "r"), "--set", "batch_size=0"])
        == 1
    )
    assert "batch_size must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # a flag's limit is checked by the parser
        main(["train", "--synthetic", "--run-dir", str(tmp_path / "r"), "--batch-size", "0"])
    assert usage.value.code == 2 and "must be at least 1, got 0" in capsys.readouterr().err
    (tmp_path / "c.toml").write_text("max_steps = [")
    assert main(["train", "--config", str(tmp_path / "c.toml")]) == 1
    assert "not valid TOML" in capsys.readouterr().err


def test_config_file_and_set(tmp_path, capsys):
    (tmp_path / "c.toml").write_text("max_steps = 4\nlearning_rate = 0.05\nsynthetic = true\n")
    run = tmp_path / "r"
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--run-dir", str(run), "--set", "learning_rate=0.02",
                 "--set", "synthetic_train_per_class=20", "--batch-size", "16", "--no-progress"]) == 0  # fmt: skip
    saved = json.loads((run / "config.json").read_text())
    assert saved["run"]["max_steps"] == 4 and saved["params"]["learning_rate"] == 0.02
    assert saved["run"]["synthetic"] is True


def test_cifar100_trains_with_100_logits(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--synthetic", "--dataset", "cifar100", "--run-dir", str(run), "--max-steps", "3",
                 "--batch-size", "16", "--set", "synthetic_train_per_class=2", "--set", "synthetic_test_per_class=1",
                 "--no-progress", "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["examples"] == 100 and result["step"] == 3
    state = load_checkpoint(latest_checkpoint(run))
    assert state["model"]["softmax_linear.weight"].shape == (100, 192)
    assert main(["eval", str(run), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["per_class"]) == 100
