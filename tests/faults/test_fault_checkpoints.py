"""Hostile and damaged checkpoints: refused in one line, no code run, nothing else touched."""

import os
import shutil

import pytest
import torch

from cifarlab.run.checkpoint import DIGEST_KEY, content_digest, load_checkpoint

from .conftest import SMALL, assert_one_line_error, cli

MARKER = "/tmp/cifarlab-fault-suite-code-ran"


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def _tensor_state(run):
    return load_checkpoint(run / "ckpt-00000008.pt")


def _flip_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _write(path, obj):
    torch.save(obj, path)


def _digested(state):
    """A state with a valid digest: what gets past the digest check to the later ones."""
    return {**state, DIGEST_KEY: content_digest(state)}


def _with(run, **parts):
    return _digested({**_tensor_state(run), **parts})


def _nan_weight(run):
    model = dict(_tensor_state(run)["model"])
    name = next(iter(model))
    model[name] = torch.full_like(model[name], float("nan"))
    return _with(run, model=model)


def _edited_weight(run):
    state = _tensor_state(run)
    name = next(iter(state["model"]))
    state["model"][name] = state["model"][name] + 1.0
    return state


CASES = {
    "pickled code": (lambda run, p: _write(p, {"step": 9, "model": RunsCode()}), "holds Python objects"),
    "a bare tensor": (lambda run, p: _write(p, torch.zeros(3)), "not a cifarlab checkpoint (it holds Tensor)"),
    "a plain state dict": (lambda run, p: _write(p, _tensor_state(run)["model"]), "a dict without a step"),
    "a list": (lambda run, p: _write(p, [1, 2, 3]), "it holds list"),
    "no weights": (lambda run, p: _write(p, _digested({"step": 9})), "no 'model'"),
    "no average": (lambda run, p: _write(p, _digested({"step": 9, "model": _tensor_state(run)["model"]})),
                   "no 'average'"),
    "another network": (lambda run, p: _write(p, _digested({**_tensor_state(run),
                                                            "model": torch.nn.Linear(3, 2).state_dict()})),
                        "do not fit this run's network"),
    "another data set (100 classes)": (
        lambda run, p: _write(p, _digested({**_tensor_state(run),
                                            "model": {**_tensor_state(run)["model"],
                                                      "softmax_linear.weight": torch.zeros(100, 192),
                                                      "softmax_linear.bias": torch.zeros(100)}})), "do not fit"),
    "a weight edited, the digest removed": (
        lambda run, p: _write(p, {k: v for k, v in _edited_weight(run).items() if k != DIGEST_KEY}),
        "has no SHA-256 digest"),
    "a weight edited, the digest set to None": (
        lambda run, p: _write(p, {**_edited_weight(run), DIGEST_KEY: None}), "has no SHA-256 digest"),
    "NaN weights under a valid digest": (lambda run, p: _write(p, _nan_weight(run)), "holds NaN or infinite"),
    "step 10^18": (lambda run, p: _write(p, _with(run, step=10**18)), "step 1000000000000000000 is out of range"),
    "step -5": (lambda run, p: _write(p, _with(run, step=-5)), "step -5 is out of range"),
    "world size 0": (lambda run, p: _write(p, _with(run, world_size=0)), "world_size 0 is not a process count"),
    "one flipped byte": (lambda run, p: (shutil.copy(run / "ckpt-00000008.pt", p), _flip_middle_byte(p)),
                         "damaged (its content no longer matches its SHA-256 digest)"),
    "a forged digest": (lambda run, p: _write(p, {**_tensor_state(run), DIGEST_KEY: "0" * 64}), "damaged"),
    "truncated": (lambda run, p: p.write_bytes((run / "ckpt-00000008.pt").read_bytes()[:100_000]), "not a readable"),
    "empty": (lambda run, p: p.write_bytes(b""), "not a readable"),
    "garbage": (lambda run, p: p.write_bytes(os.urandom(5000)), "not a readable"),
    # a pickle's protocol opcode with a protocol no pickle has (1 in 256 random files begin
    # so): torch warns about it on stderr before failing
    "garbage with a pickle header": (lambda run, p: p.write_bytes(b"\x80\xf8" + os.urandom(5000)),
                                     "not a readable"),
    "a directory": (lambda run, p: p.mkdir(), "not a readable"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_eval_refuses_a_bad_newest_checkpoint_in_one_line(run_copy, case):
    make, message = CASES[case]
    if os.path.exists(MARKER):
        os.remove(MARKER)
    bad = run_copy / "ckpt-00000009.pt"
    make(run_copy, bad)
    before = {p.name: p.stat().st_mtime_ns for p in run_copy.iterdir()}
    done = cli("eval", run_copy)
    line = assert_one_line_error(done, "ckpt-00000009.pt", message)
    assert line.startswith("cifarlab eval: error: ")
    assert not os.path.exists(MARKER), "loading a checkpoint ran code from it"
    after = {p.name: p.stat().st_mtime_ns for p in run_copy.iterdir()}
    assert {k: after[k] for k in before} == before  # nothing the run holds was touched


def test_resume_skips_damaged_checkpoints_and_refuses_when_none_is_intact(run_copy):
    for step in (4, 8):
        _flip_middle_byte(run_copy / f"ckpt-{step:08d}.pt")
    done = cli("train", "--run-dir", run_copy, "--max-steps", 12, "--no-progress")
    assert_one_line_error(done, "none of its 2 checkpoint(s) is intact", "name a new --run-dir")
    assert sorted(p.name for p in run_copy.glob("ckpt-*")) == [
        "ckpt-00000004.pt",
        "ckpt-00000008.pt",
    ]


def test_predict_and_export_refuse_the_same_way(run_copy, tmp_path):
    _flip_middle_byte(run_copy / "ckpt-00000008.pt")
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    assert_one_line_error(cli("predict", run_copy, image), "ckpt-00000008.pt", "damaged")
    assert_one_line_error(cli("export", run_copy), "ckpt-00000008.pt", "damaged")
    assert not (run_copy / "model.onnx").exists()


def test_a_hostile_checkpoint_cannot_resume_training(run_copy):
    if os.path.exists(MARKER):
        os.remove(MARKER)
    for step in (4, 8):
        torch.save({"step": step, "model": RunsCode()}, run_copy / f"ckpt-{step:08d}.pt")
    done = cli("train", *SMALL, "--run-dir", run_copy, "--max-steps", 12)
    assert_one_line_error(done, "is intact")
    assert not os.path.exists(MARKER)


def _newest(run):
    return max(run.glob("ckpt-*.pt"))


def _rewrite_newest(run, change):
    path = _newest(run)
    state = load_checkpoint(path)
    change(state)
    state.pop(DIGEST_KEY)
    torch.save(_digested(state), path)
    for older in run.glob("ckpt-*.pt"):  # only the rewritten one to fall back on
        if older != path:
            older.unlink()


def test_train_refuses_to_continue_from_another_data_sets_checkpoint(run_copy):
    def hundred_classes(state):
        state["model"]["softmax_linear.weight"] = torch.zeros(100, 192)
        state["model"]["softmax_linear.bias"] = torch.zeros(100)

    _rewrite_newest(run_copy, hundred_classes)
    done = cli("train", "--run-dir", run_copy, "--max-steps", 12, "--no-progress")
    assert_one_line_error(done, "do not fit this run's network")


def test_train_refuses_an_optimizer_state_of_other_shapes(tmp_path):
    run = tmp_path / "run"
    done = cli("train", *SMALL, "--recipe", "fast-sgd", "--set", "width=32", "--run-dir", run,
               "--max-steps", 4, "--checkpoint-every", 2)  # fmt: skip
    assert done.returncode == 0, done.stderr

    def wrong_buffer(state):
        buffers = [v for v in state["optimizer"]["state"].values() if "momentum_buffer" in v]
        assert buffers, "the SGD recipe keeps momentum buffers"
        buffers[0]["momentum_buffer"] = torch.zeros(7, 7)

    _rewrite_newest(run, wrong_buffer)
    done = cli("train", "--run-dir", run, "--no-progress")
    assert_one_line_error(done, "optimizer state does not fit this run", "momentum_buffer")


@pytest.mark.parametrize(
    "change, message",
    [(lambda losses: losses.fill_(float("nan")), "hold NaN or -inf"),
     (lambda losses: losses[:-3], "per-example losses are not this training set's")],
    ids=["NaN losses", "the wrong length"],
)  # fmt: skip
def test_train_refuses_an_unusable_hard_example_state(tmp_path, change, message):
    run = tmp_path / "run"
    # float32: precision=auto would add its one timing line to stderr where bfloat16 is native
    done = cli("train", *SMALL, "--recipe", "fast", "--set", "width=32", "--set", "precision=float32",
               "--run-dir", run, "--max-steps", 6, "--checkpoint-every", 2)  # fmt: skip
    assert done.returncode == 0, done.stderr

    def spoil(state):
        state["data"]["example_losses"] = change(state["data"]["example_losses"].clone())

    _rewrite_newest(run, spoil)
    done = cli("train", "--run-dir", run, "--no-progress")
    line = assert_one_line_error(done, "hard-example state is unusable", message)
    assert "process" not in line  # not blamed on the process count
