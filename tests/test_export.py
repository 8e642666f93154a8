import numpy as np
import onnxruntime
import pytest
import torch

from cifarlab.cli import main
from cifarlab.data.records import load_split
from cifarlab.run.trained import open_run


def _reference(run):
    trained = open_run(run)
    images, _ = load_split(run / "synthetic-data", "test")
    with torch.no_grad():
        return images, trained.model(trained.recipe.eval_preprocess()(images))


def test_onnx_export_is_checked_and_runs_any_batch_size(trained_run, tmp_path, capfd):
    out = tmp_path / "model.onnx"
    assert main(["export", str(trained_run), "--format", "onnx", "--out", str(out)]) == 0
    printed = capfd.readouterr()
    assert "max logit difference" in printed.out and "argmax agreement 100.00%" in printed.out
    assert "torchvision" not in printed.err  # the exporter's noise about what it skips
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


def test_the_check_fails_when_the_exported_preprocessing_differs(trained_run, tmp_path):
    # Regression: export once checked its graph against its own hand-written copy of the
    # preprocessing, so a wrong copy would have passed. The reference is the eval path.
    from cifarlab.errors import CifarlabError
    from cifarlab.evaluate import predict_logits
    from cifarlab.export import classifier_with_preprocessing, export_and_check

    trained = open_run(trained_run)
    images, _ = load_split(trained_run / "synthetic-data", "test")
    reference = predict_logits(trained.model, trained.recipe, images, batch_size=32,
                               device=torch.device("cpu"))  # fmt: skip

    class CropWithoutStandardizing(torch.nn.Module):
        def forward(self, x):
            return x[:, 4:28, 4:28, :].permute(0, 3, 1, 2).float() / 255

    for fmt in ("onnx", "torchscript"):
        good = classifier_with_preprocessing(trained.recipe.eval_preprocess(), trained.model)
        figures = export_and_check(good, fmt, tmp_path / f"good.{fmt}", images, reference)
        assert figures["argmax_agreement"] == 1.0 and figures["max_logit_difference"] < 1e-4
        bad = classifier_with_preprocessing(CropWithoutStandardizing(), trained.model)
        out = tmp_path / f"bad.{fmt}"
        with pytest.raises(CifarlabError, match="differ from the PyTorch evaluation"):
            export_and_check(bad, fmt, out, images, reference)
        assert not out.exists()  # a failed export leaves nothing to be used by mistake


def test_export_never_overwrites_the_runs_files_or_other_files(trained_run, tmp_path, capsys):
    # Regression: `export --out RUN/config.json` once replaced the run's own config.
    before = {p.name: p.read_bytes() for p in trained_run.iterdir() if p.is_file()}
    for target in ("config.json", "ckpt-00000060.pt", "metrics.jsonl"):
        assert main(["export", str(trained_run), "--out", str(trained_run / target)]) == 1
        assert "is one of the run's own files" in capsys.readouterr().err
    (tmp_path / "mine.onnx").write_bytes(b"precious")
    assert main(["export", str(trained_run), "--out", str(tmp_path / "mine.onnx")]) == 1
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "mine.onnx").read_bytes() == b"precious"
    assert main(["export", str(trained_run), "--out", str(tmp_path / "missing" / "m.onnx")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(trained_run), "--out", str(tmp_path)]) == 1
    assert "is a directory" in capsys.readouterr().err
    after = {p.name: p.read_bytes() for p in trained_run.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k in before} == before
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind
