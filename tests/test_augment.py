"""Each distortion against a plain per-image NumPy reference written from the spec's definitions."""

import math

import numpy as np
import pytest
import torch

from cifarlab.data import augment as A


def _random_images(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g)


# --- per-image references, float64, HWC, one image at a time -----------------------------------
def ref_crop(img, oy, ox, size=24):
    return img[oy : oy + size, ox : ox + size, :].astype(np.float64)


def ref_flip(img):
    return img[:, ::-1, :]


def ref_brightness(img, delta):
    return img + delta


def ref_contrast(img, factor):
    mean = img.mean(axis=(0, 1), keepdims=True)  # per channel
    return (img - mean) * factor + mean


def ref_standardize(img):
    mean = img.mean()
    std = img.std()
    return (img - mean) / max(std, 1 / math.sqrt(img.size))


def _hwc(t):  # float [B, C, H, W] -> numpy [B, H, W, C]
    return t.permute(0, 2, 3, 1).double().numpy()


def test_crop_and_flip_match_reference():
    images = _random_images()
    g = torch.Generator().manual_seed(1)
    p = A.sample_distortions(16, g)
    got = _hwc(A.crop_and_flip(images, p.offset_y, p.offset_x, p.flip))
    for i in range(16):
        want = ref_crop(images[i].numpy(), int(p.offset_y[i]), int(p.offset_x[i]))
        if p.flip[i]:
            want = ref_flip(want)
        np.testing.assert_array_equal(got[i], want)
    assert p.flip.any() and not p.flip.all()  # both branches exercised


def test_crop_covers_the_corners():
    images = _random_images(4)
    oy = torch.tensor([0, 8, 0, 8])
    ox = torch.tensor([0, 8, 8, 0])
    got = _hwc(A.crop_and_flip(images, oy, ox))
    for i in range(4):
        np.testing.assert_array_equal(got[i], ref_crop(images[i].numpy(), int(oy[i]), int(ox[i])))


def test_brightness_and_contrast_match_reference():
    x = torch.rand(8, 3, 24, 24, dtype=torch.float64) * 255
    delta = torch.linspace(-63, 63, 8, dtype=torch.float64)
    factor = torch.linspace(0.2, 1.8, 8, dtype=torch.float64)
    bright = _hwc(A.adjust_brightness(x, delta))
    contrast = _hwc(A.adjust_contrast(x, factor))
    xs = _hwc(x)
    for i in range(8):
        np.testing.assert_allclose(bright[i], ref_brightness(xs[i], float(delta[i])), rtol=1e-12)
        np.testing.assert_allclose(
            contrast[i], ref_contrast(xs[i], float(factor[i])), rtol=1e-10, atol=1e-9
        )


def test_standardization_matches_reference_including_the_floor():
    x = torch.rand(4, 3, 24, 24, dtype=torch.float64) * 255
    x[1] = 7.0  # a constant image: std 0, so the 1/sqrt(n) floor applies
    x[2, :, :, :] = 100.0
    x[2, 0, 0, 0] = 100.01  # tiny std, below the floor
    got = _hwc(A.per_image_standardization(x))
    for i in range(4):
        np.testing.assert_allclose(got[i], ref_standardize(_hwc(x)[i]), rtol=1e-10, atol=1e-10)
    assert np.all(got[1] == 0)


def test_training_distortions_equal_the_tutorial_sequence():
    # The fused pipeline must equal crop -> flip -> brightness -> contrast -> standardize.
    images = _random_images(32, seed=5)
    got = A.distort_for_training(images, torch.Generator().manual_seed(9))
    p = A.sample_distortions(32, torch.Generator().manual_seed(9))  # the same draws
    assert got.shape == (32, 3, 24, 24) and got.dtype == torch.float32
    for i in range(32):
        img = ref_crop(images[i].numpy(), int(p.offset_y[i]), int(p.offset_x[i]))
        if p.flip[i]:
            img = ref_flip(img)
        img = ref_brightness(img, float(p.brightness_delta[i]))
        img = ref_contrast(img, float(p.contrast_factor[i]))
        img = ref_standardize(img)
        np.testing.assert_allclose(_hwc(got)[i], img, atol=2e-5)


def test_training_distortions_on_constant_images_give_zeros():
    images = torch.full((4, 32, 32, 3), 255, dtype=torch.uint8)
    out = A.distort_for_training(images, torch.Generator().manual_seed(0))
    assert torch.all(out == 0)


def test_eval_inputs_are_the_central_crop_standardized():
    images = _random_images(5, seed=3)
    got = _hwc(A.CentralCropStandardize()(images))
    for i in range(5):
        np.testing.assert_allclose(
            got[i], ref_standardize(ref_crop(images[i].numpy(), 4, 4)), atol=2e-5
        )


def test_parameters_lie_in_the_spec_ranges():
    p = A.sample_distortions(20_000, torch.Generator().manual_seed(0))
    assert p.offset_y.min() == 0 and p.offset_y.max() == 8
    assert p.offset_x.min() == 0 and p.offset_x.max() == 8
    assert 0.48 < p.flip.float().mean() < 0.52
    assert -63 <= p.brightness_delta.min() < -62 and 62 < p.brightness_delta.max() <= 63
    assert 0.2 <= p.contrast_factor.min() < 0.21 and 1.79 < p.contrast_factor.max() <= 1.8


def test_same_seed_same_batches_other_seed_other_batches():
    images = _random_images(64)
    a = A.distort_for_training(images, torch.Generator().manual_seed(42))
    b = A.distort_for_training(images, torch.Generator().manual_seed(42))
    c = A.distort_for_training(images, torch.Generator().manual_seed(43))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_for_the_same_parameters():
    images = _random_images(16)
    p = A.sample_distortions(16, torch.Generator().manual_seed(0))
    cpu = A.crop_and_flip(images, p.offset_y, p.offset_x, p.flip)
    gpu = A.crop_and_flip(images.cuda(), p.offset_y.cuda(), p.offset_x.cuda(), p.flip.cuda())
    assert torch.equal(cpu, gpu.cpu())
