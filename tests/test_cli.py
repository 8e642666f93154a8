import json
import subprocess
import sys
import time

import pytest
from conftest import check_bench_report

from cifarlab.cli import build_parser, main
from cifarlab.data.synthetic import make_synthetic


def test_console_script_and_module_list_the_commands():
    for cmd in (["cifarlab", "--help"], [sys.executable, "-m", "cifarlab", "--help"]):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        assert "download" in out and "bench" in out


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"download", "bench"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: cifarlab " + name in capsys.readouterr().out


def test_bad_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["download", "--source", "ftp"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'ftp'" in capsys.readouterr().err


def test_verify_on_data_that_is_not_the_real_set_fails_in_one_line(tmp_path, capsys):
    make_synthetic(tmp_path, train_per_class=2, test_per_class=1)
    assert main(["download", "--verify", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("cifarlab download: error: ") and "md5 mismatch" in err


def test_verify_counts_per_class_on_cifar100(tmp_path, capsys):
    make_synthetic(tmp_path, "cifar100", train_per_class=3, test_per_class=1)
    assert main(["download", "--verify", "--dataset", "cifar100", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "train: 300 images" in out and "test: 100 images" in out
    assert "   99 worm             3" in out


@pytest.mark.parametrize("recipe", ["tutorial", "fast"])
def test_bench_data_times_the_chosen_recipes_pipeline(capsys, recipe):
    started = time.perf_counter()
    assert main(["bench", "data", "--recipe", recipe, "--batch-size", "64", "--seconds", "0.2",
                 "--repeats", "2", "--json"]) == 0  # fmt: skip
    wall = time.perf_counter() - started
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    check_bench_report(last, 2, None, wall)
    assert last["recipe"] == recipe and all(n % 64 == 0 for n in last["run_images"])
    assert all(t >= 0.2 for t in last["run_seconds"])  # each run lasts the asked seconds


def test_train_help_shows_each_recipes_own_defaults(capsys):
    """Derived from RunConfig and each recipe's run_defaults, not written by hand."""
    from cifarlab.cli import recipe_defaults
    from cifarlab.config import build_config

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for field in ("max_steps", "batch_size", "log_every", "summary_every", "checkpoint_every"):
        text = recipe_defaults(field)
        assert text in shown, field
        for recipe in ("tutorial", "fast", "fast-muon", "fast-sgd", "fast95", "fast96"):
            value = getattr(build_config(recipe, {"run_dir": "unused"}).run, field)
            assert f"{value:,}" in text, (field, recipe, text)


@pytest.mark.parametrize(
    "what, extra", [("train", ["--steps", "2", "--warmup-steps", "1"]), ("eval", [])]
)
def test_bench_train_and_eval_report_their_rate_and_warm_up(capsys, what, extra):
    args = [
        "bench",
        what,
        "--recipe",
        "tutorial",
        "--repeats",
        "2",
        "--set",
        "fast_path=false",
        "--json",
    ]
    started = time.perf_counter()
    assert main([*args, *extra]) == 0
    wall = time.perf_counter() - started
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith(f"tutorial {'training step' if what == 'train' else 'evaluation'}")
    assert len([line for line in out if line.startswith("  run ")]) == 2
    result = json.loads(out[-1])
    # train: 2 steps of the tutorial's batch of 128 a run; eval: the 10,000 test-sized images
    check_bench_report(result, 2, 2 * 128 if what == "train" else 10_000, wall)
    assert result["warmup_seconds"] > 0


def test_bench_refuses_an_unknown_recipe_parameter(capsys):
    assert main(["bench", "train", "--set", "nope=1"]) == 1  # as `train` does
    assert "unknown field(s) nope" in capsys.readouterr().err
