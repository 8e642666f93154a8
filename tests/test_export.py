import numpy as np
import onnxruntime
import pytest
import torch

from cifarlab.cli import main
from cifarlab.data.augment import inputs
from cifarlab.data.records import load_split
from cifarlab.evaluate import load_run_model


def _reference(run):
    model, _, _ = load_run_model(run)
    images, _ = load_split(run / "synthetic-data", "test")
    with torch.no_grad():
        return images, model.eval()(inputs(images))


def test_onnx_export_is_checked_and_runs_any_batch_size(trained_run, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", str(trained_run), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "max logit difference" in printed and "argmax agreement 100.00%" in printed
    images, reference = _reference(trained_run)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    for n in (1, 5, 70):  # dynamic batch
        logits = session.run(["logits"], {"images": images[:n].numpy()})[0]
        np.testing.assert_allclose(logits, reference[:n].numpy(), atol=1e-4)


def test_torchscript_export(trained_run, tmp_path):
    out = tmp_path / "model.pt"
    assert main(["export", str(trained_run), "--format", "torchscript", "--out", str(out)]) == 0
    images, reference = _reference(trained_run)
    loaded = torch.jit.load(str(out))
    with torch.no_grad():
        torch.testing.assert_close(loaded(images[:9]), reference[:9], atol=1e-4, rtol=1e-4)


def test_export_of_a_directory_without_a_run(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 1
    assert "not a cifarlab run directory" in capsys.readouterr().err


@pytest.mark.parametrize("n", [3])
def test_exported_preprocessing_is_the_evaluation_transform(trained_run, n):
    from cifarlab.export import ClassifierWithPreprocessing

    model, _, _ = load_run_model(trained_run)
    images = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(
            ClassifierWithPreprocessing(model)(images),
            model.eval()(inputs(images)),
            atol=1e-5,
            rtol=1e-5,
        )
