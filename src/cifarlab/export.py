"""Export a run's averaged weights with the recipe's evaluation preprocessing inside.

A consumer feeds uint8 RGB images [N, 32, 32, 3] (any N) and gets logits [N, classes].
After writing, the file is loaded back (onnxruntime for ONNX, torch.jit for TorchScript)
and its logits on real test images are compared with those of the evaluation path
(`evaluate.predict_logits`: the recipe's preprocessing run batch by batch in PyTorch), an
independent reference: an export whose graph preprocesses differently fails the check.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import CifarlabError
from .files import atomic_writer

MAX_LOGIT_DIFFERENCE = 1e-3  # an export that differs more than this from PyTorch is rejected
DEFAULT_NAMES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
# Files a run directory's owner writes: an export never replaces them.
RUN_FILES = (
    "config.json",
    "status.json",
    "metrics.jsonl",
    ".lock",
    "ckpt-*.pt",
    "events.out.tfevents.*",
)


def classifier_with_preprocessing(preprocess: nn.Module, model: nn.Module) -> nn.Module:
    """uint8 [N, 32, 32, 3] -> logits: the graph that is exported."""
    return nn.Sequential(preprocess, model).eval()


def check_output_path(out: Path, run_dir: Path, fmt: str) -> None:
    """Refuse to write over a run's own files, a folder, or a file we did not make."""
    if out.is_dir():
        raise CifarlabError(f"--out {out}: is a directory; name a file")
    if not out.parent.is_dir():
        raise CifarlabError(f"--out {out}: folder {out.parent} does not exist")
    if out.resolve().parent == run_dir.resolve() and any(out.match(p) for p in RUN_FILES):
        raise CifarlabError(f"--out {out}: is one of the run's own files; name another file")
    if out.exists() and out.resolve() != (run_dir / DEFAULT_NAMES[fmt]).resolve():
        raise CifarlabError(f"--out {out}: exists; remove it first or name another file")


@contextlib.contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _export_onnx(graph: nn.Module, example: torch.Tensor, out: Path) -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise CifarlabError(
            "ONNX export needs onnx and onnxscript: pip install 'cifarlab[export]'"
        ) from None
    batch = torch.export.Dim("batch", min=1)
    # The exporter narrates each pass on stdout, warns about its own internals, and logs one
    # line per torchvision operator it cannot register (torchvision is not needed): quiet.
    with (
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
        _quiet_logger("torch.onnx._internal.exporter._registration"),
    ):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph, (example,), dynamo=True, input_names=["images"], output_names=["logits"],
                                    dynamic_shapes=({0: batch},), verbose=False)  # fmt: skip
    with atomic_writer(out) as f:
        f.write(program.model_proto.SerializeToString())


def _run_onnx(path: Path, images: torch.Tensor) -> torch.Tensor:
    try:
        import onnxruntime
    except ImportError:
        raise CifarlabError(
            "checking the ONNX file needs onnxruntime: pip install 'cifarlab[export]'"
        ) from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])


def _export_torchscript(graph: nn.Module, example: torch.Tensor, out: Path) -> None:
    with warnings.catch_warnings():  # shapes are fixed but the batch: tracing is exact here
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        scripted = torch.jit.trace(graph, example, check_trace=False)
    with atomic_writer(out) as f:
        torch.jit.save(scripted, f)


def _run_torchscript(path: Path, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.jit.load(str(path))(images)


FORMATS = {
    "onnx": (_export_onnx, _run_onnx),
    "torchscript": (_export_torchscript, _run_torchscript),
}


def export_and_check(
    graph: nn.Module, fmt: str, out: Path, images: torch.Tensor, reference: torch.Tensor
) -> dict:
    """Write `graph` (uint8 images -> logits) to `out`, run the file on `images` and compare
    with `reference` logits. A mismatch removes the file and raises."""
    write, run = FORMATS[fmt]
    write(graph, images[:2], out)
    exported = run(out, images)
    difference = (exported - reference).abs().max().item()
    agreement = (exported.argmax(1) == reference.argmax(1)).double().mean().item()
    figures = {"format": fmt, "path": str(out), "images": images.shape[0],
               "max_logit_difference": difference, "argmax_agreement": agreement}  # fmt: skip
    if not difference <= MAX_LOGIT_DIFFERENCE:  # NaN fails too
        out.unlink(missing_ok=True)
        raise CifarlabError(f"{out}: exported logits differ from the PyTorch evaluation's by "
                            f"{difference:.2e} (limit {MAX_LOGIT_DIFFERENCE:g}); the file was removed")  # fmt: skip
    return figures


def export_run(
    run_dir: Path, fmt: str, out: Path | None = None, *, check_images: int = 1000, log=print
) -> dict:
    """Write the export of the run's newest checkpoint and check it; returns the figures."""
    from .data.datasets import load_run_split
    from .evaluate import predict_logits
    from .run.trained import open_run

    run_dir = Path(run_dir)
    trained = open_run(run_dir, device="cpu")
    out = Path(out) if out is not None else run_dir / DEFAULT_NAMES[fmt]
    check_output_path(out, run_dir, fmt)
    images, _ = load_run_split(trained.config.run, run_dir, "test")
    images = images[: max(1, check_images)]
    # The file computes in float32 whatever arithmetic the run trains and evaluates in
    # (fast's bfloat16): it is checked against the same function in PyTorch.
    reference = predict_logits(trained.model, trained.recipe, images, batch_size=128,
                               device=torch.device("cpu"), in_float32=True)  # fmt: skip
    graph = classifier_with_preprocessing(trained.recipe.eval_preprocess(), trained.model)
    figures = export_and_check(graph, fmt, out, images, reference)
    figures["step"] = trained.step
    log(f"exported step {trained.step} to {out} ({out.stat().st_size / 1e6:.1f} MB); "
        f"checked on {images.shape[0]:,} test images: max logit difference "
        f"{figures['max_logit_difference']:.2e}, argmax agreement {figures['argmax_agreement']:.2%}")  # fmt: skip
    return figures
