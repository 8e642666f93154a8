"""The tutorial's native CPU kernels: built once per machine and toolchain, by one process
at a time, never blocked by a build killed halfway; conv2's route chosen by timing and
cached beside the build; oneDNN serving, correctly, wherever the Fourier route may not."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cifarlab.models.tutorial import TutorialNet
from cifarlab.models.tutorial_cpu import build, conv2_choice

BUILDS_HERE = bool(shutil.which("c++") and shutil.which("ninja"))
needs_build = pytest.mark.skipif(not BUILDS_HERE, reason="no C++ compiler or ninja")
LOAD = "from cifarlab.models.tutorial_cpu import build; assert build.kernels() is not None"


@pytest.fixture
def fresh_choice(monkeypatch, tmp_path):
    """conv2_choice's per-process answers forgotten, its cache in tmp_path."""
    monkeypatch.setattr(conv2_choice, "_unavailable", None)
    monkeypatch.setattr(conv2_choice, "_timed", None)
    monkeypatch.setattr(conv2_choice, "_said", set())
    monkeypatch.setenv("CIFARLAB_KERNEL_CACHE", str(tmp_path))
    monkeypatch.delenv("CIFARLAB_FFT_CONV", raising=False)


def test_the_cache_key_changes_with_what_changes_the_build(monkeypatch):
    key = build.cache_key()
    assert key == build.cache_key()  # stable
    monkeypatch.setattr(torch, "__version__", "2.99.0")
    other_torch = build.cache_key()
    monkeypatch.undo()
    monkeypatch.setattr(build, "FLAGS", [*build.FLAGS, "-DSOMETHING"])
    other_flags = build.cache_key()
    monkeypatch.undo()
    monkeypatch.setenv("CXX", "a-compiler-that-is-not-there")
    other_compiler = build.cache_key()
    assert len({key, other_torch, other_flags, other_compiler}) == 4


def _start(code: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, start_new_session=True)  # fmt: skip


@needs_build
def test_two_checkouts_of_the_same_code_share_one_build(tmp_path):
    """A copy of the package elsewhere (the snapshot an experiment runs from, beside the
    working tree) loads the entry the first built, instead of rebuilding it in turn."""
    cache = tmp_path / "cache"
    env = {**os.environ, "CIFARLAB_KERNEL_CACHE": str(cache), "CIFARLAB_NATIVE": "1"}
    first = subprocess.run([sys.executable, "-c", LOAD], env=env, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert first.returncode == 0 and "building cifarlab's native CPU kernels" in first.stderr
    (entry,) = [p for p in cache.iterdir() if p.is_dir() and p.name.startswith("cifarlab_native_")]
    library = entry / f"{entry.name}.so"
    built = library.stat().st_mtime_ns

    copy = tmp_path / "checkout"
    shutil.copytree(Path(build.__file__).parents[3] / "cifarlab", copy / "cifarlab",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    code = LOAD + f"; assert build.SOURCE.is_relative_to({str(copy)!r})"
    second = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(copy)},
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert library.stat().st_mtime_ns == built, "the second checkout rebuilt the entry"


@needs_build
def test_a_build_killed_halfway_never_blocks_the_next_one_which_one_process_does(tmp_path):
    env = {**os.environ, "CIFARLAB_KERNEL_CACHE": str(tmp_path), "CIFARLAB_NATIVE": "1"}
    first = _start(LOAD, env)
    entry = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the compiler is at work
        entries = [p for p in tmp_path.iterdir() if p.is_dir()]
        if entries and (entries[0] / "build.ninja").exists():
            entry = entries[0]
            break
        time.sleep(0.2)
    assert entry is not None, "the build never started"
    time.sleep(2)
    os.killpg(first.pid, signal.SIGKILL)  # the builder, ninja and the compiler
    first.wait()
    assert not (entry / f"{entry.name}.so").exists(), "killed before the build finished"
    (entry / "lock").touch()  # what PyTorch's builder leaves when killed holding its baton

    # Two processes at once, as two ranks of a torchrun job: one builds, the other waits
    # and loads its result; neither hangs on what the killed build left.
    second, third = _start(LOAD, env), _start(LOAD, env)
    outputs = [p.communicate(timeout=300)[1] for p in (second, third)]
    assert [p.returncode for p in (second, third)] == [0, 0], outputs
    assert sum("building cifarlab's native CPU kernels" in o for o in outputs) == 1, outputs
    assert (entry / f"{entry.name}.so").exists()


def test_oneDNN_serves_correctly_where_nnpack_is_unavailable(monkeypatch, fresh_choice, capfd):
    monkeypatch.setattr(torch.backends.nnpack, "is_available", lambda: False)
    assert not conv2_choice.by_fourier()
    assert "conv2 runs on oneDNN: NNPACK is not available" in capfd.readouterr().err
    torch.manual_seed(0)
    reference, fast = TutorialNet(10, fast=False), TutorialNet(10, fast=True)
    fast.load_state_dict(reference.state_dict())
    fast = fast.to(memory_format=torch.channels_last)
    x, labels = torch.randn(16, 3, 24, 24), torch.randint(0, 10, (16,))
    losses = [F.cross_entropy(net(x), labels) for net in (reference, fast)]
    for loss in losses:
        loss.backward()
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    for (name, want), got in zip(reference.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-5, msg=name)
    assert not conv2_choice.by_fourier()
    assert capfd.readouterr().err == ""  # said once


def test_a_torch_outside_the_tested_window_keeps_oneDNN(monkeypatch, fresh_choice, capfd):
    if build.kernels() is None:
        pytest.skip("no native kernels here")
    monkeypatch.setattr(torch, "__version__", "2.99.0")
    assert not conv2_choice.by_fourier()
    assert "tested with torch 2.13 only (this is 2.99.0)" in capfd.readouterr().err


@needs_build
def test_the_faster_route_is_chosen_and_the_verdict_cached(monkeypatch, fresh_choice, tmp_path):
    if conv2_choice.route_available():
        pytest.skip(conv2_choice.route_available())
    verdict = conv2_choice.timed_verdict()  # measured for real on this machine
    assert verdict["fourier"] == (verdict["fourier_ms"] < verdict["onednn_ms"])
    cached = build.entry() / conv2_choice.CHOICE_FILE
    assert cached.is_relative_to(tmp_path) and json.loads(cached.read_text()) == verdict
    monkeypatch.setattr(conv2_choice, "_time_both", lambda: pytest.fail("timed twice"))
    assert conv2_choice.timed_verdict() == verdict  # from the cache
    assert conv2_choice.by_fourier() == verdict["fourier"]
    # A machine where the Fourier transform is slower never runs it.
    cached.unlink()
    monkeypatch.setattr(conv2_choice, "_timed", None)
    monkeypatch.setattr(conv2_choice, "_time_both", lambda: (5.0, 3.0))
    assert not conv2_choice.by_fourier()
    x, weight = torch.randn(2, 64, 12, 12), torch.randn(64, 64, 5, 5)
    from cifarlab.models.tutorial_cpu import fft_conv

    assert not fft_conv.fft_conv_serves(x, weight, 2)


@needs_build
def test_a_fresh_process_times_conv2_without_waiting_on_itself(tmp_path):
    """The timing takes the build's lock and then runs the kernels, which a fresh process
    has yet to load under that same lock: it must not wait on itself."""
    assert build.kernels() is not None  # built (or loaded) here: copied into tmp_path below
    shutil.copytree(build.entry(), tmp_path / build.entry().name)
    (tmp_path / build.entry().name / conv2_choice.CHOICE_FILE).unlink(missing_ok=True)
    env = {**os.environ, "CIFARLAB_KERNEL_CACHE": str(tmp_path)}
    env.pop("CIFARLAB_FFT_CONV", None)
    code = ("from cifarlab.models.tutorial_cpu import conv2_choice; "
            "print(conv2_choice.timed_verdict()['fourier'])")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in ("True", "False")
    assert "building" not in done.stderr  # loaded from the copied entry
    assert (tmp_path / build.entry().name / conv2_choice.CHOICE_FILE).is_file()


def test_without_a_compiler_the_warning_is_given_and_the_network_still_runs(tmp_path):
    """Nothing on PATH: no compiler, no ninja. One warning naming why, then PyTorch's ops."""
    code = ("import torch; from cifarlab.models.tutorial import TutorialNet; "
            "from cifarlab.models.tutorial_cpu import build; "
            "net = TutorialNet(10, fast=True); print(net(torch.randn(2, 3, 24, 24)).shape); "
            "print(build.kernels())")  # fmt: skip
    env = {"HOME": str(tmp_path), "PATH": str(tmp_path / "empty"),
           "CIFARLAB_KERNEL_CACHE": str(tmp_path / "cache")}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "native kernels unavailable" in done.stderr and "no C++ compiler" in done.stderr
    assert done.stderr.count("native kernels unavailable") == 1
    assert "building" not in done.stderr
    assert done.stdout.split() == ["torch.Size([2,", "10])", "None"]
