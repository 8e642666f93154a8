"""Bad flags and configuration files: refused before anything is written, in one line."""

import pytest

from .conftest import SMALL, assert_one_line_error, assert_usage_error, cli

USAGE = [  # (arguments, words the parser's one error line must hold)
    (["train", "--batch-size", "0"], ["--batch-size", "at least 1, got 0"]),
    (["train", "--max-steps", "-5"], ["--max-steps", "at least 1"]),
    (["train", "--threads", "-2"], ["--threads", "at least 1"]),
    (["train", "--seed", "1.5"], ["--seed", "expected an integer"]),
    (["train", "--checkpoint-every", "0"], ["--checkpoint-every"]),
    (["train", "--log-every", "x"], ["--log-every"]),
    (["train", "--dataset", "mnist"], ["--dataset", "invalid choice"]),
    (["eval", "RUN", "--batch-size", "0"], ["--batch-size"]),
    (["eval", "RUN", "--interval-secs", "-1"], ["--interval-secs", "positive"]),
    (["eval", "RUN", "--interval-secs", "nan"], ["--interval-secs"]),
    (["predict", "RUN", "x.png", "--top-k", "0"], ["--top-k", "at least 1"]),
    (["export", "RUN", "--check-images", "0"], ["--check-images"]),
    (["export", "RUN", "--format", "tflite"], ["--format"]),
    (["bench", "data", "--batch-size", "0"], ["--batch-size"]),
    (["bench", "data", "--seconds", "0"], ["--seconds"]),
    (["bench", "data", "--repeats", "0"], ["--repeats"]),
    (["download", "--source", "ftp"], ["--source"]),
    (["train", "--budget", "1e9"], ["--budget", "at most 10080 minutes (a week)"]),  # never a hang
    (["train", "--budget", "0"], ["--budget", "positive"]),
    (["train", "--budget", "inf"], ["--budget"]),
]


@pytest.mark.parametrize("args, words", USAGE, ids=[" ".join(a) for a, _ in USAGE])
def test_flags_outside_their_range_are_usage_errors(args, words):
    assert_usage_error(cli(*args), *words)


CONFIG = [  # (extra train arguments, words of the one error line)
    (["--set", "learning_rate=0"], ["learning_rate must be above 0, got 0"]),
    (["--set", "momentum=-0.9"], ["momentum must be at least 0"]),
    (["--set", "epochs_per_decay=0"], ["epochs_per_decay must be above 0"]),
    (["--set", "ema_decay=1"], ["ema_decay must be below 1"]),
    (["--set", "keep_checkpoints=0"], ["keep_checkpoints must be at least 1"]),
    (["--set", "eval_batch_size=-1"], ["eval_batch_size must be at least 1"]),
    (["--set", "global_batch_size=-4"], ["global_batch_size must be at least 0"]),
    (["--set", "max_steps=ten"], ["max_steps=ten: expected an integer"]),
    (["--set", "learning_rate"], ["expected key=value"]),
    (["--set", "lr=0.1"], ["unknown field(s) lr", "valid: ", "learning_rate"]),
    (["--set", "dataset=mnist"], ["dataset is 'mnist', not one of cifar10, cifar100"]),
    # Absurd but finite rates overflowed float32 mid-step (an internal error): refused now.
    (["--recipe", "fast", "--set", "bias_lr_scale=1e300"], ["bias_lr_scale must be at most 1e+06"]),
    (["--recipe", "fast", "--set", "muon_lr=1e300"], ["muon_lr must be at most 1e+06"]),
    (["--recipe", "fast", "--set", "weight_decay=1e300"], ["weight_decay must be at most 1e+06"]),
    # 8-pixel crops left a 0x0 map (or 1x1 at batch 1, which BatchNorm cannot train on).
    (["--recipe", "fast", "--set", "small_size=8"], ["small_size must be at least 17, got 8"]),
    (["--device", "gpu"], ["--device gpu: not a device"]),
    (["--device", "cuda:banana"], ["--device cuda:banana"]),
    (["--device", "tpu"], ["--device tpu"]),
]


@pytest.mark.parametrize("extra, words", CONFIG, ids=[" ".join(a) for a, _ in CONFIG])
def test_configuration_values_are_one_line_errors_and_write_nothing(tmp_path, extra, words):
    run = tmp_path / "run"
    assert_one_line_error(cli("train", *SMALL, "--run-dir", run, *extra), *words)
    assert not (run / "config.json").exists() and not list(run.glob("ckpt-*"))


TOML = {
    "a float for an integer": (b"max_steps = 1.5\n", "max_steps=1.5: expected an integer"),
    "a string for a number": (b'learning_rate = "fast"\n', "learning_rate=fast: expected a number"),
    "a table": (b"[run]\nmax_steps = 3\n", "tables are not fields"),
    "broken syntax": (b"max_steps = [", "not valid TOML"),
    "binary": (bytes(range(256)) * 4, "not valid TOML"),
    "an unknown name": (b"learning_rat = 0.1\n", "unknown field(s) learning_rat"),
}


@pytest.mark.parametrize("case", list(TOML))
def test_toml_files_that_are_not_configurations(tmp_path, case):
    content, message = TOML[case]
    (tmp_path / "c.toml").write_bytes(content)
    done = cli("train", *SMALL, "--run-dir", tmp_path / "run", "--config", tmp_path / "c.toml")
    assert_one_line_error(done, message)
    assert not (tmp_path / "run" / "config.json").exists()


def test_device_names_are_checked_by_every_command(small_run, tmp_path):
    for args in (
        ["eval", small_run],
        ["predict", small_run, tmp_path / "x.png"],
        ["bench", "data"],
    ):
        assert_one_line_error(cli(*args, "--device", "gpu"), "--device gpu: not a device")


def test_config_paths_that_are_not_files(tmp_path):
    assert_one_line_error(cli("train", "--config", tmp_path), "is a directory")
    assert_one_line_error(cli("train", "--config", tmp_path / "none.toml"), "no such config file")


def test_a_run_dir_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("mine")
    assert_one_line_error(
        cli("train", *SMALL, "--run-dir", tmp_path / "file"), "exists and is not a directory"
    )
    assert (tmp_path / "file").read_text() == "mine"


def test_commands_on_folders_that_are_not_runs(tmp_path):
    for command in (["eval"], ["export"], ["predict"]):
        args = [*command, tmp_path] + (["x.png"] if command == ["predict"] else [])
        assert_one_line_error(cli(*args), "not a cifarlab run directory")
    assert_one_line_error(cli("eval", tmp_path / "missing"), "no such run directory")
    assert_one_line_error(cli("report", tmp_path), "no metrics.jsonl")
