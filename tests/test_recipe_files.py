"""Recipes from outside the package (docs/recipes.md): a file, a module, an installed
package's entry point. Each goes through every command as a built-in recipe does, in its
own process as a user runs it, and config.json remembers where its code came from."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image

from cifarlab.data.records import load_split
from cifarlab.run.checkpoint import list_checkpoints, load_checkpoint
from cifarlab.run.trained import open_run

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).parents[1] / "examples" / "fast_mean_max_head.py"
SMALL = ["--synthetic", "--set", "synthetic_train_per_class=20", "--set", "synthetic_test_per_class=5",
         "--batch-size", "25", "--threads", "1", "--no-progress", "--set", "width=16"]  # fmt: skip


def cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "cifarlab", *map(str, args)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})}, **kw)  # fmt: skip


def ok(done):
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    return done


def one_line_error(done, *fragments):
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def _state_parts(path):
    state = load_checkpoint(path)
    return {k: state[k] for k in ("model", "optimizer", "average", "data", "step")}


def _equal(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_a_recipe_file_trains_resumes_after_sigkill_evaluates_predicts_exports(tmp_path):
    recipe = tmp_path / "elsewhere" / "my_recipe.py"  # a copy outside the repository
    recipe.parent.mkdir()
    shutil.copy(EXAMPLE, recipe)
    args = ["train", "--recipe", recipe, *SMALL, "--max-steps", "24", "--checkpoint-every", "3"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    ok(cli(*args, "--run-dir", straight))
    saved = json.loads((straight / "config.json").read_text())
    assert saved["recipe"] == str(recipe) and saved["params"]["head_pool"] == "max+mean"
    assert saved["recipe_source"]["kind"] == "file"
    assert (
        saved["recipe_source"]["sha256"]
        == __import__("hashlib").sha256(recipe.read_bytes()).hexdigest()
    )

    # SIGKILL once the step-9 checkpoint exists (8 steps an epoch: mid-epoch, past a lookahead)
    process = subprocess.Popen([sys.executable, "-m", "cifarlab", *map(str, args), "--run-dir", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (killed / "ckpt-00000009.pt").exists() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # the kill landed: the run had not finished
    assert not (killed / "result.json").exists()
    assert max(step for step, _ in list_checkpoints(killed)) < 24
    resumed = ok(cli(*args, "--run-dir", killed))
    assert "resuming" in resumed.stdout
    assert _equal(
        _state_parts(straight / "ckpt-00000024.pt"), _state_parts(killed / "ckpt-00000024.pt")
    )

    # eval with the recipe's test-time views equals the trainer's final evaluation
    done = ok(cli("eval", straight, "--tta", "--json"))
    evaluated = json.loads(done.stdout.strip().splitlines()[-1])
    result = json.loads((straight / "result.json").read_text())
    assert evaluated["precision_at_1"] == result["precision_at_1"] and result["tta"] is True

    # predict: a lossless 32x32 test image gets the network's own probabilities
    images, _ = load_split(straight / "synthetic-data", "test")
    Image.fromarray(images[0].numpy()).save(tmp_path / "0.png")
    done = ok(cli("predict", straight, tmp_path / "0.png", "--json", "--top-k", "1"))
    top = json.loads(done.stdout.strip().splitlines()[-1])["results"][0]["top"][0]
    trained = open_run(straight)
    # in the recipe's arithmetic, as predict computes it (fast's auto: bfloat16 on some CPUs)
    with torch.no_grad(), trained.recipe.autocast(torch.device("cpu")):
        logits = trained.model(trained.recipe.eval_preprocess()(images[:1]))
    expected = logits.float().softmax(1)[0]
    assert top["index"] == int(expected.argmax())
    assert top["probability"] == pytest.approx(float(expected.max()), rel=1e-5)

    # export to ONNX (the default), checked again here by onnxruntime
    ok(cli("export", straight, "--out", tmp_path / "m.onnx"))
    session = onnxruntime.InferenceSession(
        str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]
    )
    exported = session.run(None, {"images": images.numpy()})[0]
    with torch.no_grad():
        reference = trained.model(trained.recipe.eval_preprocess()(images)).numpy()
    np.testing.assert_allclose(exported, reference, atol=1e-4)

    # bench takes the file too, with the run's FLOPs
    done = ok(cli("bench", "train", "--recipe", recipe, "--set", "width=16", "--batch-size", "25",
                  "--steps", "1", "--warmup-steps", "1", "--repeats", "1", "--json"))  # fmt: skip
    assert json.loads(done.stdout.strip().splitlines()[-1])["step_flops"] > 0

    # the file changes: reading the run warns once and goes on; continuing it is refused
    recipe.write_text(recipe.read_text() + "\n# an edit\n")
    done = ok(cli("eval", straight))
    assert "has changed since" in done.stderr and "warning" in done.stderr
    assert (
        "has changed since" in ok(cli("report", straight)).stderr
    )  # it reads only the run's files
    one_line_error(cli("train", "--run-dir", straight, "--max-steps", "24"), "has changed since",
                   "restore the file")  # fmt: skip
    # the file goes: every command says so in one line
    recipe.unlink()
    one_line_error(cli("eval", straight), str(recipe), "no such file")
    one_line_error(cli("train", "--run-dir", straight), str(recipe), "no such file")
    assert "no such file" in ok(cli("report", straight)).stderr


MODULE = '''
from dataclasses import dataclass
from cifarlab.recipes.fast import FastSGD
from cifarlab.settings import with_defaults

class Narrow(FastSGD):
    """fast-sgd at width 16: a recipe an installed package could ship."""
    name = "narrow"
    Params = with_defaults(FastSGD.Params, "NarrowParams", width=16)
'''


def _package(root: Path, entry_point: bool) -> dict:
    (root / "labrecipes").mkdir(parents=True)
    (root / "labrecipes" / "__init__.py").write_text(MODULE)
    if entry_point:  # what `pip install` of a package declaring the entry point leaves
        info = root / "labrecipes-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: labrecipes\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text("[cifarlab.recipes]\nnarrow = labrecipes:Narrow\n")
    return {"PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.parametrize("how", ["module", "entry point"])
def test_a_recipe_from_a_module_or_an_installed_entry_point(tmp_path, how):
    env = _package(tmp_path / "site", entry_point=how == "entry point")
    spec = "labrecipes:Narrow" if how == "module" else "narrow"
    run = tmp_path / "run"
    ok(cli("train", "--recipe", spec, *SMALL[:-2], "--max-steps", "4", "--run-dir", run, env=env))
    saved = json.loads((run / "config.json").read_text())
    assert saved["recipe"] == spec and saved["params"]["width"] == 16
    assert saved["recipe_source"]["kind"] == ("module" if how == "module" else "entry_point")
    ok(cli("eval", run, env=env))
    if how == "entry point":  # the installed name is listed among the recipes
        assert "narrow" in ok(cli("train", "--help", env=env)).stdout


BAD_FILES = {
    "no recipe": ("x = 1\n", "defines no recipe"),
    "raises on import": ("import math\nmath.sqrt(-1)\n", "raised on import: ValueError: math domain error (line 2)"),
    "a syntax error": ("def broken(:\n", "raised on import: SyntaxError"),
    "two recipes": ("from cifarlab.recipes.fast import FastSGD\nclass A(FastSGD): pass\nclass B(FastSGD): pass\n",
                    "defines 2 recipes (A, B); name one as FILE:NAME"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_recipe_file_that_cannot_serve_is_one_line_and_writes_nothing(tmp_path, case):
    content, message = BAD_FILES[case]
    (tmp_path / "bad.py").write_text(content)
    one_line_error(
        cli("train", "--recipe", tmp_path / "bad.py", *SMALL, "--run-dir", tmp_path / "run"),
        message,
    )
    assert not (tmp_path / "run").exists()


def test_recipe_specs_that_find_nothing(tmp_path):
    one_line_error(
        cli("train", "--recipe", "resnet", *SMALL),
        "unknown recipe 'resnet'",
        "fast-sgd",
        "recipe file",
    )
    one_line_error(cli("train", "--recipe", tmp_path / "none.py", *SMALL), "no such file")
    one_line_error(
        cli("train", "--recipe", "no_such_package.recipes:Fast", *SMALL), "no such module"
    )
    shutil.copy(EXAMPLE, tmp_path / "r.py")
    one_line_error(
        cli("train", "--recipe", f"{tmp_path / 'r.py'}:Nope", *SMALL), "no recipe named 'Nope'"
    )
