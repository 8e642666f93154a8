"""The run directory: configuration files old and new, ownership, damaged checkpoints."""

import json
import subprocess
import sys
import time

import pytest
import torch

from cifarlab.cli import main
from cifarlab.config import build_config, config_from_dict
from cifarlab.errors import ConfigError
from cifarlab.run.checkpoint import DIGEST_KEY, list_checkpoints, load_checkpoint
from cifarlab.run.config_file import load_config
from cifarlab.run.lock import RunLock

SMALL = ["--synthetic", "--set", "synthetic_train_per_class=20", "--set", "synthetic_test_per_class=5",
         "--batch-size", "16", "--threads", "1", "--no-progress"]  # fmt: skip

# config.json exactly as the version before recipe modules wrote it (one flat object).
FLAT_CONFIG = {
    "recipe": "tutorial", "model": "tutorial", "dataset": "cifar10", "augment": "tutorial",
    "synthetic": True, "synthetic_train_per_class": 20, "synthetic_test_per_class": 5,
    "data_dir": None, "run_dir": None, "device": "auto", "threads": 1, "max_steps": 8,
    "batch_size": 16, "global_batch_size": 0, "seed": 0, "learning_rate": 0.1, "momentum": 0.0,
    "lr_decay_factor": 0.1, "epochs_per_decay": 350.0, "ema_decay": 0.9999,
    "loss_average_decay": 0.9, "log_every": 10, "summary_every": 100, "checkpoint_every": 4,
    "keep_checkpoints": 5, "eval_batch_size": 128, "check_finite_every": 1,
}  # fmt: skip


def _as_previous_version(run, step):
    """Rewrite a run directory into the previous version's files: flat config.json, and a
    checkpoint with the average under "ema", the global RNG state, no digest."""
    (run / "config.json").write_text(json.dumps({**FLAT_CONFIG, "run_dir": str(run)}, indent=2))
    path = run / f"ckpt-{step:08d}.pt"
    state = load_checkpoint(path)
    state["ema"] = state.pop("average")
    del state[DIGEST_KEY]
    state["torch_rng"] = torch.get_rng_state()
    state["config"] = {**FLAT_CONFIG, "run_dir": str(run)}
    torch.save(state, path)


@pytest.mark.slow
def test_a_run_written_by_the_previous_version_evaluates_and_resumes(tmp_path, capsys, monkeypatch):
    straight, old = tmp_path / "straight", tmp_path / "old"
    for run in (straight, old):
        assert (
            main(
                [
                    "train",
                    *SMALL,
                    "--run-dir",
                    str(run),
                    "--max-steps",
                    "8",
                    "--checkpoint-every",
                    "4",
                ]
            )
            == 0
        )
    for step in (4, 8):
        (old / f"ckpt-{step:08d}.pt").unlink() if step == 8 else _as_previous_version(old, step)
    assert load_config(old).get("learning_rate") == 0.1
    # Its checkpoint has no digest: refused until the user says to trust it.
    assert main(["eval", str(old), "--json"]) == 1
    assert "has no SHA-256 digest" in capsys.readouterr().err
    monkeypatch.setenv("CIFARLAB_TRUST_UNDIGESTED", "1")
    assert main(["eval", str(old), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 4
    assert main(["train", "--run-dir", str(old), "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().out
    a, b = load_checkpoint(straight / "ckpt-00000008.pt"), load_checkpoint(old / "ckpt-00000008.pt")
    for part in ("model", "average"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert json.loads((old / "config.json").read_text())["format"] == 2  # saved anew


def test_config_files_that_are_not_configurations_are_one_line_errors(tmp_path):
    for text, message in (("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object"),
                          (json.dumps({**FLAT_CONFIG, "dataset": "mnist"}), "dataset is 'mnist'"),
                          (json.dumps({**FLAT_CONFIG, "model": "resnet"}), "model 'resnet' is not recipe"),
                          (json.dumps({"format": 2, "recipe": "tutorial"}), "not a cifarlab run configuration")):  # fmt: skip
        (tmp_path / "config.json").write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(tmp_path)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"max_steps": 1.5}, "max_steps=1.5: expected an integer"),
        ({"batch_size": True}, "batch_size=True: expected an integer"),
        ({"learning_rate": "fast"}, "learning_rate=fast: expected a number"),
        ({"epochs_per_decay": 0}, "epochs_per_decay must be above 0"),
        ({"momentum": -0.5}, "momentum must be at least 0"),
        ({"ema_decay": 1.0}, "ema_decay must be below 1"),
        ({"threads": -1}, "threads must be at least 0"),
        (
            {"checkpoint_every": 0, "log_every": -3},
            "log_every must be at least 1, got -3; checkpoint_every",
        ),
        ({"learning_rate": float("nan")}, "learning_rate must be a finite number"),
        ({"synthetic": "maybe"}, "synthetic=maybe: expected true or false"),
        ({"learning_rat": 1}, "unknown field.*learning_rat.*valid: .*learning_rate"),
    ],
)
def test_each_bad_value_is_named_with_what_is_valid(values, message):
    with pytest.raises(ConfigError, match=message):
        build_config("tutorial", values)


def test_set_strings_are_converted_and_flat_dicts_round_trip():
    config = build_config(
        "tutorial", {"max_steps": "1_000", "learning_rate": "0.05", "synthetic": "yes"}
    )
    assert (
        config.run.max_steps == 1000
        and config.params.learning_rate == 0.05
        and config.run.synthetic
    )
    assert config_from_dict(json.loads(json.dumps(config.to_dict())), "x") == config


@pytest.mark.slow
def test_a_second_trainer_on_the_same_run_directory_is_refused(tmp_path):
    # Regression: two trainers once shared a run directory, overwrote each other's
    # checkpoints and mixed their metrics, and both exited 0.
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "cifarlab", "train", *SMALL, "--run-dir", str(run),
                              "--max-steps", "100000"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.time() + 120
    while not (run / "status.json").exists():
        assert first.poll() is None and time.time() < deadline, first.communicate()[0]
        time.sleep(0.05)
    second = subprocess.run([sys.executable, "-m", "cifarlab", "train", *SMALL, "--run-dir", str(run),
                             "--max-steps", "100000", "--seed", "5"], capture_output=True, text=True)  # fmt: skip
    first.kill()  # SIGKILL: the lock dies with its holder
    first.wait()
    assert second.returncode == 1
    assert second.stderr.count("\n") == 1
    assert (
        f"is in use by process {first.pid} on " in second.stderr
        and "cifarlab train" in second.stderr
    )
    # A stale lock file from the killed trainer does not block the restart.
    assert (run / ".lock").exists()
    again = subprocess.run([sys.executable, "-m", "cifarlab", "train", "--run-dir", str(run), "--max-steps",
                            str(max([4, *[s for s, _ in list_checkpoints(run)]]) + 2), "--no-progress"],
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 0, again.stderr


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(Exception, match="is in use by process"):
            RunLock(tmp_path).acquire()
    RunLock(tmp_path).acquire().release()  # released on exit


@pytest.mark.slow
def test_a_damaged_checkpoint_is_refused_and_resume_falls_back_to_an_intact_one(tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            ["train", *SMALL, "--run-dir", str(run), "--max-steps", "8", "--checkpoint-every", "4"]
        )
        == 0
    )
    newest = run / "ckpt-00000008.pt"
    data = bytearray(newest.read_bytes())
    # Flip one byte in the middle of the file: inside local3.weight's storage (2304 x 384
    # floats, most of the file), which torch.load alone reads without complaint.
    data[len(data) // 2] ^= 0x40
    newest.write_bytes(bytes(data))
    assert main(["eval", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ckpt-00000008.pt: " in err
    assert "damaged (its content no longer matches its SHA-256 digest)" in err
    assert main(["train", "--run-dir", str(run), "--max-steps", "8", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "skipping" in out and "ckpt-00000008.pt" in out
    assert "resuming" in out and "from ckpt-00000004.pt (step 4)" in out
    assert load_checkpoint(newest)["step"] == 8  # rewritten whole
