"""torchrun + DistributedDataParallel on the CPU (gloo), as a user starts it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from cifarlab.cli import main
from cifarlab.config import build_config
from cifarlab.data.datasets import load_run_split
from cifarlab.errors import ConfigError
from cifarlab.models.tutorial import TutorialNet
from cifarlab.run.checkpoint import list_checkpoints, load_checkpoint
from cifarlab.run.config_file import load_config
from cifarlab.train.distributed import per_rank_batch_size

pytestmark = pytest.mark.slow

DATA = [
    "--synthetic",
    "--set",
    "synthetic_train_per_class=20",
    "--set",
    "synthetic_test_per_class=5",
    "--no-progress",
]


def _run(command):
    """Run to completion; on failure, fail the test showing what the processes said."""
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, (
        f"exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    )
    return done.stdout


def _torchrun(*args, nproc=2):
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    return [torchrun, "--standalone", f"--nproc-per-node={nproc}", "-m", "cifarlab", "train", *args]


def test_two_processes_write_one_set_of_checkpoints_and_logs(tmp_path, capsys):
    run = tmp_path / "run"
    out = _run(_torchrun(*DATA, "--run-dir", str(run), "--max-steps", "20", "--batch-size", "16",
                         "--checkpoint-every", "10", "--summary-every", "10"))  # fmt: skip
    assert out.count("training tutorial on CIFAR-10 (synthetic)") == 1  # rank 0 alone speaks
    assert "batch 32 (2 x 16)" in out and "precision @ 1 = " in out
    assert [s for s, _ in list_checkpoints(run)] == [10, 20]
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) >= 3
    assert load_checkpoint(run / "ckpt-00000020.pt")["world_size"] == 2
    # Continuing with another process count would change the global batch: refused clearly.
    assert main(["train", "--run-dir", str(run), "--max-steps", "30", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "cannot continue" in err and "with 1 process(es)" in err and "--global-batch-size" in err


def test_two_ranks_of_16_equal_one_process_of_32(tmp_path):
    # Same examples, same distortions, gradients averaged: the same weights up to float rounding.
    common = [*DATA, "--max-steps", "6", "--checkpoint-every", "6"]
    _run(_torchrun(*common, "--run-dir", str(tmp_path / "two"), "--batch-size", "16"))
    subprocess.run([sys.executable, "-m", "cifarlab", "train", *common, "--run-dir", str(tmp_path / "one"),
                    "--batch-size", "32", "--threads", "1"], check=True, capture_output=True)  # fmt: skip
    two = load_checkpoint(tmp_path / "two" / "ckpt-00000006.pt")
    one = load_checkpoint(tmp_path / "one" / "ckpt-00000006.pt")
    torch.manual_seed(0)
    initial = TutorialNet().state_dict()
    # Rounding differs (two sums of 16 against one of 32) and grows from step to step where a
    # ReLU or a max-pool's choice flips on the tiny synthetic images: on EPYC Zen 4 the two
    # agree to 4e-6 of the training's movement after one step, 0.5% after six. So each
    # tensor's difference is measured against how far training moved it; a wrong shard or an
    # unaveraged gradient differs by the order of the movement itself.
    for kind in ("model", "average"):
        for name, w in one[kind].items():
            moved = (w - initial[name]).norm()
            assert (two[kind][name] - w).norm() < 0.02 * moved, (kind, name)
    assert not torch.allclose(
        initial["local3.weight"], one["model"]["local3.weight"]
    )  # it did train


def test_hard_example_selection_on_two_ranks_gathers_and_resumes_exactly(tmp_path):
    """Each rank records its half of a batch's losses and all-gathers the rest, so both
    hold the whole table (one process's would have no gaps either) and draw the same
    selected epochs; a two-rank run continued from a checkpoint ends where it would have.
    The whitening bias freezes mid-run, so DDP also trains past that switch."""
    common = [*DATA, "--recipe", "fast-sgd", "--set", "width=16", "--set", "hard_keep=0.5",
              "--set", "hard_from_epoch=1", "--batch-size", "16", "--checkpoint-every", "8",
              "--set", "keep_checkpoints=5",
              "--set", "whiten_bias_epochs=1"]  # frozen from step 6: DDP gets its zero gradient  # fmt: skip
    straight, split = tmp_path / "straight", tmp_path / "split"
    _run(_torchrun(*common, "--run-dir", str(straight), "--max-steps", "16"))
    end = load_checkpoint(straight / "ckpt-00000016.pt")
    # 200 examples, 6 steps of 32 an epoch: epoch 0 saw 192, gathered from both ranks.
    assert torch.isfinite(end["data"]["example_losses"]).sum() >= 192
    assert end["data"]["order"] is not None  # step 16 is inside the second selected epoch
    split.mkdir()
    (split / "ckpt-00000008.pt").write_bytes((straight / "ckpt-00000008.pt").read_bytes())
    (split / "config.json").write_text(
        (straight / "config.json").read_text().replace(str(straight), str(split))
    )
    _run(_torchrun(*common, "--run-dir", str(split), "--max-steps", "16"))
    again = load_checkpoint(split / "ckpt-00000016.pt")
    assert torch.equal(again["data"]["example_losses"], end["data"]["example_losses"])
    for name, w in end["model"].items():
        assert torch.equal(again["model"][name], w), name


def test_a_proxy_chooses_the_same_batch_on_two_ranks_as_in_one_process(tmp_path):
    """Each rank scores the whole global draw with its own copy of the proxy and trains on
    its half of the chosen batch (recipes/proxy.py's `shard`): the proxies, and so the
    chosen batches, stay identical to one process's, bit for bit."""
    common = [*DATA, "--recipe", "fast", "--set", "width=16", "--set", "hard_keep=1",
              "--set", "proxy_keep=0.5", "--set", "proxy_width=16", "--set", "precision=float32",
              "--max-steps", "6", "--checkpoint-every", "6"]  # fmt: skip
    out = _run(_torchrun(*common, "--run-dir", str(tmp_path / "two"), "--batch-size", "16"))
    assert "batch 32 (2 x 16, chosen from 64 candidates)" in out
    subprocess.run([sys.executable, "-m", "cifarlab", "train", *common, "--run-dir", str(tmp_path / "one"),
                    "--batch-size", "32", "--threads", "1"], check=True, capture_output=True)  # fmt: skip
    two = load_checkpoint(tmp_path / "two" / "ckpt-00000006.pt")
    one = load_checkpoint(tmp_path / "one" / "ckpt-00000006.pt")
    for name, w in one["selector"]["model"].items():
        assert torch.equal(two["selector"]["model"][name], w), name
    # The networks themselves differ by more than rounding, with or without a proxy: each
    # rank's BatchNorm normalizes by its own half of the batch. That they trained:
    config = load_config(tmp_path / "two")
    images, _ = load_run_split(config.run, tmp_path / "two", "train")
    torch.manual_seed(config.run.seed)
    initial = config.recipe.build_model(10, images).state_dict()
    assert not torch.equal(two["model"]["head.weight"], initial["head.weight"])


def test_a_stopped_two_process_run_resumes_from_its_checkpoint(tmp_path):
    run = tmp_path / "run"
    args = [*DATA, "--run-dir", str(run), "--batch-size", "16", "--checkpoint-every", "5"]
    process = subprocess.Popen(
        _torchrun(*args, "--max-steps", "100000"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 180
    while not (run / "ckpt-00000005.pt").exists():
        assert process.poll() is None and time.time() < deadline, process.communicate()[0]
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)  # what a scheduler sends; torchrun forwards it to the ranks
    out, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    stopped = list_checkpoints(run)[-1][0]
    assert stopped >= 5 and "stopped by signal" in out
    resumed = subprocess.run(
        _torchrun(*args, "--max-steps", str(stopped + 4)),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"resuming {run} from ckpt-{stopped:08d}.pt (step {stopped})" in resumed
    assert list_checkpoints(run)[-1][0] == stopped + 4


def test_a_signal_to_rank_0_alone_stops_both_ranks_at_the_same_step(tmp_path):
    # Regression: ranks agreed on stopping only on finite-check steps but each acted on its
    # own flag, so rank 0, signalled alone between checks, stopped while rank 1 went on into
    # the next all-reduce (an error with gloo, a hang with NCCL). Now every rank acts on the
    # agreed value only: both stop at the next agreement step, with one checkpoint there.
    run = tmp_path / "run"
    args = [*DATA, "--run-dir", str(run), "--batch-size", "16", "--checkpoint-every", "1",
            "--set", "check_finite_every=5", "--max-steps", "100000"]  # fmt: skip
    process = subprocess.Popen(
        _torchrun(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 180
    while not (run / "ckpt-00000003.pt").exists():
        assert process.poll() is None and time.time() < deadline, process.communicate()[0]
        time.sleep(0.05)
    rank0 = json.loads((run / "status.json").read_text())["pid"]  # rank 0 writes the status
    os.kill(rank0, signal.SIGTERM)
    out, _ = process.communicate(timeout=120)
    stopped = list_checkpoints(run)[-1][0]
    assert f"stopped by signal {int(signal.SIGTERM)} at step {stopped}" in out, out
    assert stopped % 5 == 0  # an agreement step
    assert out.count(f"cifarlab train: interrupted at step {stopped}") == 2, out  # both ranks
    assert "Connection closed" not in out and "gloo" not in out.lower(), out
    resumed = subprocess.run(
        _torchrun(*args[:-1], str(stopped + 2)), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert list_checkpoints(run)[-1][0] == stopped + 2


def test_a_global_batch_must_divide_among_the_processes():
    config = build_config("tutorial", {"global_batch_size": 256})
    assert per_rank_batch_size(config.run, 2) == 128 and per_rank_batch_size(config.run, 4) == 64
    with pytest.raises(ConfigError, match="global batch 256 does not divide among 3 processes"):
        per_rank_batch_size(config.run, 3)


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on a machine without CUDA"
)
def test_cuda_asked_without_cuda_is_a_one_line_error(tmp_path, capsys):
    assert main(["train", *DATA, "--run-dir", str(tmp_path / "r"), "--device", "cuda"]) == 1
    assert "--device cuda: CUDA is not available on this machine" in capsys.readouterr().err
