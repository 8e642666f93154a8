"""Classify people's own image files with a trained run.

Each file: decoded by Pillow (first frame of an animation), transparency composited onto
white, converted to RGB, centre-cropped to a square, resized to 32x32, then the run's
recipe's evaluation preprocessing, as for the test set.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .recipes import Recipe

# What the README and `predict --help` promise (tests decode one file of each, test_docs
# checks the README says the same); Pillow reads more, which are not promised.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WebP", "TIFF")
MAX_PIXELS = 40_000_000  # refuse larger images: a decompression bomb, not a photo to classify
MAX_FILE_BYTES = 100 * 1024 * 1024


def load_image(path: str | os.PathLike) -> np.ndarray:
    """-> uint8 [32, 32, 3]. Raises ValueError with a one-line reason for unusable files."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ValueError("no such file")
    size = path.stat().st_size
    if size == 0:
        raise ValueError("file is empty")
    if size > MAX_FILE_BYTES:
        raise ValueError(f"file is {size:,} bytes, over the {MAX_FILE_BYTES:,} limit")
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise ValueError(
                        f"{image.width}x{image.height} pixels is over the {MAX_PIXELS:,} limit (decompression bomb?)"
                    )
                image.seek(0)
                rgb = _to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise ValueError("not an image Pillow can read") from None
    except (OSError, SyntaxError) as e:  # truncated or corrupt data
        raise ValueError(f"cannot decode image ({e})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return _square_32(rgb)


def _to_8_bits(image):
    """High bit depth single-channel images ('I;16*', 'I', 'F') scaled to 8 bits, not
    clipped: Pillow's convert('RGB') clips them, so a 16-bit grey image came out almost
    white and a float one almost black. 16-bit (and 32-bit integer images holding 16-bit
    values, as 16-bit PNGs decode) divide by 257; floats in [0, 1] multiply by 255, floats in
    [0, 255] stay; anything else is refused rather than guessed."""
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"{image.mode} image holds NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if image.mode == "F":
        if low < 0 or high > 255:
            raise ValueError(f"float image values span {low:g}..{high:g}, not 0..1 or 0..255")
        scaled = values * 255 if high <= 1 else values
    else:
        if low < 0 or high > 65535:
            raise ValueError(f"{image.mode} image values span {low:g}..{high:g}, not 0..65535")
        scaled = values / 257
    return Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L")


def _to_rgb(image):
    from PIL import Image

    if image.mode in ("F", "I") or image.mode.startswith("I;16"):
        image = _to_8_bits(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _square_32(image) -> np.ndarray:
    from PIL import Image

    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((32, 32), Image.Resampling.BICUBIC), dtype=np.uint8)


@torch.no_grad()
def predict_files(
    model: nn.Module,
    recipe: Recipe,
    paths: list[str],
    class_names: tuple[str, ...],
    *,
    top_k: int = 3,
    device="cpu",
) -> list[dict]:
    """One dict per file, in order: {"file", "top": [{"class", "index", "probability"}]} or
    {"file", "error"}. A bad file does not stop the others."""
    results: list[dict] = []
    images, slots = [], []
    for path in paths:
        try:
            images.append(load_image(path))
            slots.append(len(results))
            results.append({"file": str(path)})
        except ValueError as e:
            results.append({"file": str(path), "error": str(e)})
    if images:
        model.eval()
        batch = torch.from_numpy(np.stack(images)).to(device)  # uint8 [N, 32, 32, 3]
        with recipe.autocast(batch.device):
            logits = model(recipe.eval_preprocess().to(device)(batch))
        probabilities = logits.float().softmax(dim=1).cpu()
        top = probabilities.topk(min(top_k, len(class_names)), dim=1)
        for slot, values, indices in zip(slots, top.values, top.indices, strict=True):
            results[slot]["top"] = [
                {"class": class_names[int(i)], "index": int(i), "probability": float(v)}
                for v, i in zip(values, indices, strict=True)
            ]
    return results
