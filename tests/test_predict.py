import json

import numpy as np
import pytest
import torch
from PIL import Image

from cifarlab.cli import main
from cifarlab.data.records import load_split
from cifarlab.predict import load_image
from cifarlab.run.trained import open_run


@pytest.fixture
def images_dir(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "images"
    d.mkdir()
    Image.fromarray(rng.integers(0, 256, (60, 100, 3), dtype=np.uint8)).save(d / "wide.png")
    Image.fromarray(rng.integers(0, 256, (90, 40), dtype=np.uint8), mode="L").save(
        d / "grey.jpg", quality=90
    )
    Image.fromarray(rng.integers(0, 256, (33, 33, 3), dtype=np.uint8)).save(d / "small.bmp")
    frames = [
        Image.fromarray(rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)).convert("P")
        for _ in range(3)
    ]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(rng.integers(0, 256, (64, 64, 4), dtype=np.uint8), mode="RGBA").save(
        d / "alpha.webp", lossless=True
    )
    Image.fromarray(rng.integers(0, 256, (48, 36, 3), dtype=np.uint8)).save(d / "scan.tiff")
    (d / "empty.png").write_bytes(b"")
    (d / "notes.jpg").write_text("not an image at all")
    good = (d / "wide.png").read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 2])
    return d


def test_every_format_and_mode_becomes_32x32_rgb(images_dir):
    from PIL import Image as PilImage

    from cifarlab.predict import IMAGE_FORMATS

    names = ("wide.png", "grey.jpg", "small.bmp", "anim.gif", "alpha.webp", "scan.tiff")
    decoded = set()
    for name in names:
        image = load_image(images_dir / name)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8, name
        with PilImage.open(images_dir / name) as opened:
            decoded.add(opened.format)
    assert {f.upper() for f in IMAGE_FORMATS} == decoded  # every promised format, tested


def test_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)  # fully transparent black
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "clear.png")
    assert (load_image(tmp_path / "clear.png") == 255).all()


def test_centre_square_is_kept(tmp_path):
    wide = np.zeros((32, 96, 3), dtype=np.uint8)
    wide[:, 32:64] = 200  # the centre square is bright, the sides dark
    Image.fromarray(wide).save(tmp_path / "wide.png")
    assert (load_image(tmp_path / "wide.png") == 200).all()


def test_decompression_bomb_is_refused(tmp_path):
    Image.new("L", (8000, 8000)).save(tmp_path / "bomb.png")  # 64 M pixels, a ~60 KB file
    with pytest.raises(ValueError, match="decompression bomb"):
        load_image(tmp_path / "bomb.png")


def test_predict_matches_the_evaluation_pipeline_and_reports_bad_files(
    trained_run, images_dir, capsys
):
    test_images, _ = load_split(trained_run / "synthetic-data", "test")
    Image.fromarray(test_images[3].numpy()).save(
        images_dir / "test3.png"
    )  # a 32x32 image, lossless
    trained = open_run(trained_run)
    with torch.no_grad():
        expected = trained.model(trained.recipe.eval_preprocess()(test_images[3:4])).softmax(1)[0]
    files = [
        "test3.png",
        "wide.png",
        "empty.png",
        "grey.jpg",
        "notes.jpg",
        "truncated.png",
        "anim.gif",
        "alpha.webp",
        "small.bmp",
    ]
    code = main(
        [
            "predict",
            str(trained_run),
            *[str(images_dir / f) for f in files],
            "--top-k",
            "2",
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1  # some files failed
    results = {
        r["file"].rsplit("/", 1)[1]: r
        for r in json.loads(captured.out.strip().splitlines()[-1])["results"]
    }
    assert results["empty.png"]["error"] == "file is empty"
    assert results["notes.jpg"]["error"] == "not an image Pillow can read"
    assert "cannot decode image" in results["truncated.png"]["error"]
    for name in ("wide.png", "grey.jpg", "anim.gif", "alpha.webp", "small.bmp"):
        assert len(results[name]["top"]) == 2
    top = results["test3.png"]["top"][0]
    assert top["index"] == int(expected.argmax()) and top["probability"] == pytest.approx(
        float(expected.max()), rel=1e-5
    )
    assert captured.err.count("cifarlab predict: error: ") == 3
    assert "empty.png: file is empty" in captured.err


def test_predict_all_good_files_exits_zero(trained_run, images_dir, capsys):
    assert main(["predict", str(trained_run), str(images_dir / "wide.png")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{images_dir / 'wide.png'}: ") and line.count("%") == 3
