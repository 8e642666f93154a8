"""People's own images: odd depths and modes are scaled properly or refused by name."""

import numpy as np
import pytest
from PIL import Image

from cifarlab.predict import load_image

from .conftest import cli


def _grey_ramp(dtype, top):
    return (np.linspace(0, top, 48 * 48).reshape(48, 48)).astype(dtype)


def test_16_bit_grey_keeps_its_brightness(tmp_path):
    # Regression: a 16-bit grey PNG came out almost white (values clipped at 255).
    Image.fromarray(_grey_ramp(np.uint16, 65535)).save(tmp_path / "g.png")
    Image.fromarray(_grey_ramp(np.uint8, 255)).save(tmp_path / "g8.png")
    deep, shallow = load_image(tmp_path / "g.png"), load_image(tmp_path / "g8.png")
    assert np.abs(deep.astype(int) - shallow.astype(int)).max() <= 1


def test_float_images_in_0_1_are_scaled_not_blackened(tmp_path):
    # Regression: a float TIFF came out almost black (0..1 read as 0..1 out of 255).
    Image.fromarray(_grey_ramp(np.float32, 1.0), mode="F").save(tmp_path / "f.tiff")
    Image.fromarray(_grey_ramp(np.uint8, 255)).save(tmp_path / "g8.png")
    assert (
        np.abs(
            load_image(tmp_path / "f.tiff").astype(int)
            - load_image(tmp_path / "g8.png").astype(int)
        ).max()
        <= 1
    )


@pytest.mark.parametrize(
    "values, message",
    [
        (np.full((8, 8), -3.0, np.float32), "not 0..1 or 0..255"),
        (np.full((8, 8), 1e6, np.float32), "not 0..1 or 0..255"),
        (np.full((8, 8), np.nan, np.float32), "NaN"),
    ],
)
def test_float_images_out_of_any_known_range_are_refused(tmp_path, values, message):
    Image.fromarray(values, mode="F").save(tmp_path / "x.tiff")
    with pytest.raises(ValueError, match=message):
        load_image(tmp_path / "x.tiff")


def test_other_modes_become_rgb(tmp_path):
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    Image.new("1", (40, 40), 1).save(tmp_path / "bits.png")
    Image.new("LA", (40, 40), (10, 0)).save(tmp_path / "la.png")  # fully transparent: white
    assert load_image(tmp_path / "cmyk.jpg").shape == (32, 32, 3)
    assert (load_image(tmp_path / "bits.png") == 255).all()
    assert (load_image(tmp_path / "la.png") == 255).all()


def test_predict_reports_each_bad_file_and_goes_on(small_run, tmp_path):
    Image.fromarray(np.full((8, 8), np.nan, np.float32), mode="F").save(tmp_path / "nan.tiff")
    Image.new("RGB", (50, 50), (200, 10, 10)).save(tmp_path / "red.png")
    (tmp_path / "dir.png").mkdir()
    done = cli("predict", small_run, tmp_path / "nan.tiff", tmp_path / "red.png", tmp_path / "dir.png",
               tmp_path / "missing.png")  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.count("cifarlab predict: error: ") == 3
    assert "red.png: " in done.stdout
