"""Export a run's averaged weights with the evaluation preprocessing inside the graph.

A consumer feeds uint8 RGB images [N, 32, 32, 3] (any N) and gets logits [N, classes].
After writing, the file is loaded back (onnxruntime for ONNX, torch.jit for TorchScript)
and its logits on real test images are compared with the PyTorch pipeline's.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch
from torch import nn

from .data.augment import CROP_SIZE, inputs
from .errors import CifarlabError

MAX_LOGIT_DIFFERENCE = 1e-3  # an export that differs more than this from PyTorch is rejected


class ClassifierWithPreprocessing(nn.Module):
    """uint8 [N, 32, 32, 3] -> logits: central crop, standardization, then the network."""

    def __init__(self, model: nn.Module, crop: int = CROP_SIZE) -> None:
        super().__init__()
        self.model = model.eval()
        self.crop = crop

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        start = (images.shape[1] - self.crop) // 2
        x = (
            images[:, start : start + self.crop, start : start + self.crop, :]
            .permute(0, 3, 1, 2)
            .float()
        )
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(1, 2, 3), keepdim=True)
        floor = 1.0 / float(x[0].numel()) ** 0.5
        return self.model((x - mean) / var.sqrt().clamp_min(floor))


def _export_onnx(wrapper: nn.Module, example: torch.Tensor, out: Path) -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise CifarlabError(
            "ONNX export needs onnx and onnxscript: pip install 'cifarlab[export]'"
        ) from None
    batch = torch.export.Dim("batch", min=1)
    # The exporter narrates each pass on stdout and warns about its own internals: keep quiet.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapper, (example,), dynamo=True, input_names=["images"], output_names=["logits"],
                                    dynamic_shapes=({0: batch},), verbose=False)  # fmt: skip
    tmp = out.with_name(f".{out.name}.tmp")
    program.save(str(tmp))
    tmp.replace(out)


def _run_onnx(path: Path, images: torch.Tensor) -> torch.Tensor:
    try:
        import onnxruntime
    except ImportError:
        raise CifarlabError(
            "checking the ONNX file needs onnxruntime: pip install 'cifarlab[export]'"
        ) from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])


def export_run(
    run_dir: Path, fmt: str, out: Path | None = None, *, check_images: int = 1000, log=print
) -> dict:
    """Write the export and check it; returns the check's figures."""
    from .data.datasets import load_run_split
    from .evaluate import load_run_model

    model, config, state = load_run_model(run_dir, device="cpu")
    wrapper = ClassifierWithPreprocessing(model)
    images, _ = load_run_split(config, Path(run_dir), "test")
    images = images[: max(1, check_images)]
    out = out or Path(run_dir) / ("model.onnx" if fmt == "onnx" else "model.torchscript.pt")
    if fmt == "onnx":
        _export_onnx(wrapper, images[:2], out)
        exported = _run_onnx(out, images)
    else:
        with warnings.catch_warnings():  # shapes are fixed but the batch: tracing is exact here
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            scripted = torch.jit.trace(wrapper, images[:2], check_trace=False)
        tmp = out.with_name(f".{out.name}.tmp")
        scripted.save(str(tmp))
        tmp.replace(out)
        with torch.no_grad():
            exported = torch.jit.load(str(out))(images)
    with torch.no_grad():
        reference = model(inputs(images))  # the PyTorch evaluation pipeline
    difference = (exported - reference).abs().max().item()
    agreement = (exported.argmax(1) == reference.argmax(1)).double().mean().item()
    figures = {"format": fmt, "path": str(out), "step": int(state["step"]), "images": images.shape[0],
               "max_logit_difference": difference, "argmax_agreement": agreement}  # fmt: skip
    log(f"exported step {figures['step']} to {out} ({out.stat().st_size / 1e6:.1f} MB); "
        f"checked on {images.shape[0]:,} test images: max logit difference {difference:.2e}, "
        f"argmax agreement {agreement:.2%}")  # fmt: skip
    if difference > MAX_LOGIT_DIFFERENCE:
        raise CifarlabError(
            f"{out}: exported logits differ from PyTorch's by {difference:.2e} (limit {MAX_LOGIT_DIFFERENCE:g})"
        )
    return figures
