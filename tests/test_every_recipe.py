"""Every built-in recipe through every command, on the synthetic set: train, continue from a
checkpoint to the same weights as a straight run, eval (with the recipe's test-time views),
predict, export to ONNX checked by onnxruntime, and both benchmarks."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import torch
from conftest import check_bench_report
from PIL import Image

from cifarlab.cli import main
from cifarlab.recipes import recipe_names
from cifarlab.run.checkpoint import load_checkpoint

BUILT_IN = ["tutorial", "fast", "fast-muon", "fast-sgd", "fast95", "fast96"]
SMALL = ["--synthetic", "--set", "synthetic_train_per_class=12", "--set", "synthetic_test_per_class=4",
         "--batch-size", "24", "--threads", "1", "--no-progress"]  # fmt: skip
NARROW = {"tutorial": [], "fast": ["--set", "width=32"], "fast-muon": ["--set", "width=32"],
          "fast-sgd": ["--set", "width=32"], "fast95": ["--set", "width=32"],
          "fast96": ["--set", "width=32"]}  # fmt: skip


def test_the_list_is_every_built_in_recipe():
    from cifarlab.recipes import _BUILTIN

    assert set(BUILT_IN) <= set(recipe_names())
    assert _BUILTIN == set(BUILT_IN)  # the package's own (tests and files may add others)


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("recipe", BUILT_IN)
def test_a_recipe_trains_resumes_evaluates_predicts_exports_and_benchmarks(
    recipe, tmp_path, capsys
):
    args = [
        *SMALL,
        "--recipe",
        recipe,
        *NARROW[recipe],
        "--max-steps",
        "8",
        "--checkpoint-every",
        "4",
    ]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", *args, "--run-dir", str(straight), "--json"]) == 0
    trained = _last_json(capsys)
    assert trained["step"] == 8 and 0 <= trained["precision_at_1"] <= 1

    # Continue from the step-4 checkpoint: the same weights, averages and optimizer state.
    resumed.mkdir()
    shutil.copy(straight / "config.json", resumed / "config.json")
    shutil.copy(straight / "ckpt-00000004.pt", resumed / "ckpt-00000004.pt")
    assert main(["train", "--run-dir", str(resumed), "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().out
    a, b = (load_checkpoint(run / "ckpt-00000008.pt") for run in (straight, resumed))
    for part in ("model", "average"):
        for name, tensor in (a[part] or {}).items():
            if isinstance(tensor, torch.Tensor):
                assert torch.equal(tensor, b[part][name]), f"{recipe}: {part}/{name}"
    for index, buffers in a["optimizer"]["state"].items():
        for key, value in buffers.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b["optimizer"]["state"][index][key]), (recipe, key)
    assert a["data"]["epoch"] == b["data"]["epoch"]

    assert main(["eval", str(straight), "--tta", "--json"]) == 0
    evaluated = _last_json(capsys)
    assert evaluated["step"] == 8 and evaluated["examples"] == 40

    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(
        image
    )
    assert main(["predict", str(straight), str(image), "--top-k", "2", "--json"]) == 0
    top = _last_json(capsys)["results"][0]["top"]
    classes = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    assert [t["class"] for t in top] == [classes[t["index"]] for t in top] and len(top) == 2
    assert 1 >= top[0]["probability"] >= top[1]["probability"] > 0

    out = tmp_path / "model.onnx"
    assert main(["export", str(straight), "--out", str(out), "--check-images", "40"]) == 0
    assert "argmax agreement 100.00%" in capsys.readouterr().out and out.stat().st_size > 0

    for what, extra in (("train", ["--steps", "2", "--warmup-steps", "1"]), ("eval", [])):
        bench = ["bench", what, "--recipe", recipe, *NARROW[recipe], "--batch-size", "16",
                 "--repeats", "1", "--json", *extra]  # fmt: skip
        started = time.perf_counter()
        assert main(bench) == 0, what
        report = _last_json(capsys)
        check_bench_report(
            report, 1, 2 * 16 if what == "train" else 10_000, time.perf_counter() - started
        )
