"""Batched augmentation on the tensor's device, and the plain model input it falls back to."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_poster

from postergenre.data.images import Preprocess
from postergenre.training.augment import GpuAugment, to_input

PP = Preprocess((40, 24), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OFF = dict(brightness=0.0, contrast=(1.0, 1.0), saturation=(1.0, 1.0))  # no colour jitter
NO_CROP = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0))
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def posters(n: int = 6, size=(40, 24), seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    genres = [{"Action"}, {"Comedy"}, {"Drama"}, {"Horror"}, {"Action", "Drama"}, set()]
    return torch.from_numpy(np.stack([np.asarray(make_poster(rng, genres[i % 6], size=(size[1], size[0])))
                                      for i in range(n)]))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_to_input_is_normalize_pixels():
    x = posters()
    assert torch.equal(to_input(x, PP), torch.from_numpy(PP.normalize_pixels(x.numpy())))
    mirrored = np.ascontiguousarray(x.numpy()[:, :, ::-1])
    assert (to_input(x, PP, flip=True) - torch.from_numpy(PP.normalize_pixels(mirrored))).abs().max() <= 1e-6


def test_shape_dtype_and_device_are_kept():
    x = posters(5, size=(30, 50))  # not the preprocess size: the output keeps the input's
    out = GpuAugment(PP)(x, seeded())
    assert out.shape == (5, 3, 30, 50) and out.dtype == torch.float32 and out.device == x.device
    assert out.is_contiguous()
    with pytest.raises(ValueError, match="uint8"):
        GpuAugment(PP)(x.float(), seeded())
    with pytest.raises(ValueError):
        GpuAugment(PP, scale=(0.5, 1.5))


def test_identity_parameters_give_the_plain_input():
    x = posters()
    out = GpuAugment(PP, flip=0.0, **NO_CROP, **OFF)(x, seeded())
    assert (out - to_input(x, PP)).abs().max() <= 1e-5


def test_flip_only_mirrors_every_poster():
    x = posters()
    out = GpuAugment(PP, flip=1.0, **NO_CROP, **OFF)(x, seeded())
    assert (out - to_input(x, PP, flip=True)).abs().max() <= 1e-5


def test_same_seed_same_output_and_another_seed_another():
    x, aug = posters(), GpuAugment(PP)
    assert torch.equal(aug(x, seeded(7)), aug(x, seeded(7)))
    assert not torch.equal(aug(x, seeded(7)), aug(x, seeded(8)))
    # The jitter does not shift the draws: the same seed gives the same crops with it off.
    assert torch.equal(aug.params(6, 40, 24, seeded(7)).box, GpuAugment(PP, **OFF).params(6, 40, 24, seeded(7)).box)


def test_crops_are_grid_sample_with_border_padding():
    """The crop and flip resample as grid_sample (bilinear, align_corners=False, border) would."""
    x = posters(8)
    aug = GpuAugment(PP, scale=(0.3, 0.9), ratio=(0.7, 1.4), flip=0.5, **OFF)
    p = aug.params(8, 40, 24, seeded(3))
    top, left, h, w = p.box.unbind(1)
    sign = 1 - 2 * p.flip.double()
    theta = torch.zeros(8, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = sign * w / 24, (2 * left + w) / 24 - 1
    theta[:, 1, 1], theta[:, 1, 2] = h / 40, (2 * top + h) / 40 - 1
    unit = x.permute(0, 3, 1, 2).double() / 255
    grid = F.affine_grid(theta, list(unit.shape), align_corners=False)
    ref = F.grid_sample(unit, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mean, std = torch.tensor(PP.mean).view(1, 3, 1, 1), torch.tensor(PP.std).view(1, 3, 1, 1)
    assert (aug(x, seeded(3)).double() - (ref - mean) / std).abs().max() <= 1e-4


def test_colour_jitter_is_torchvisions():
    """Brightness, contrast, saturation, in that order, as torchvision's functional ops define them."""
    tf = pytest.importorskip("torchvision.transforms.v2.functional")
    x = posters(6)
    aug = GpuAugment(PP, flip=0.0, **NO_CROP, brightness=0.4, contrast=(0.5, 1.5), saturation=(0.2, 1.8))
    p = aug.params(6, 40, 24, seeded(5))
    mean, std = torch.tensor(PP.mean).view(3, 1, 1), torch.tensor(PP.std).view(3, 1, 1)
    out = aug(x, seeded(5))
    for i in range(6):
        img = x[i].permute(2, 0, 1).float() / 255
        img = tf.adjust_brightness(img, float(p.brightness[i]))
        img = tf.adjust_contrast(img, float(p.contrast[i]))
        img = tf.adjust_saturation(img, float(p.saturation[i]))
        assert (out[i] - (img - mean) / std).abs().max() <= 1e-5


def test_draws_stay_in_their_ranges():
    aug = GpuAugment(PP)
    p = aug.params(4000, 384, 256, seeded(1))
    top, left, h, w = p.box.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 384 + 1e-9).all() and (left + w <= 256 + 1e-9).all()
    area, aspect = h * w / (384 * 256), (w / 256) / (h / 384)
    assert area.max() <= 1.0 + 1e-9 and area.min() >= 0.6 / 1.12 - 1e-9  # clamped to the poster: a little under
    inside = (h < 384) & (w < 256)  # not clamped: the drawn area and aspect exactly
    assert area[inside].min() >= 0.6 - 1e-9 and aspect[inside].min() >= 1 / 1.12 - 1e-9 and aspect.max() <= 1.12 + 1e-9
    assert 0.45 < p.flip.double().mean() < 0.55
    assert p.brightness.min() >= 0.85 and p.brightness.max() <= 1.15
    assert p.contrast.min() >= 0.8 and p.saturation.max() <= 1.2


def test_output_statistics_stay_sane():
    x = posters(32, size=(48, 32))
    plain, out = to_input(x, PP), GpuAugment(PP)(x, seeded(2))
    lo = torch.tensor([(0 - m) / s for m, s in zip(PP.mean, PP.std)]).view(1, 3, 1, 1)
    hi = torch.tensor([(1 - m) / s for m, s in zip(PP.mean, PP.std)]).view(1, 3, 1, 1)
    assert torch.isfinite(out).all() and (out >= lo - 1e-5).all() and (out <= hi + 1e-5).all()
    assert not torch.allclose(out, plain)  # it does augment
    # Per channel, the batch's mean and spread move a little, not far.
    assert (out.mean(dim=(0, 2, 3)) - plain.mean(dim=(0, 2, 3))).abs().max() < 0.25
    ratio = out.std(dim=(0, 2, 3)) / plain.std(dim=(0, 2, 3))
    assert (ratio > 0.7).all() and (ratio < 1.3).all()


@CUDA
def test_cuda_draws_and_computes_as_the_cpu_does():
    x = posters(8)
    aug = GpuAugment(PP)
    on_gpu = aug(x.cuda(), seeded(4))
    assert on_gpu.device.type == "cuda"
    assert (on_gpu.cpu() - aug(x, seeded(4))).abs().max() <= 1e-4
    assert (to_input(x.cuda(), PP).cpu() - to_input(x, PP)).abs().max() <= 1e-6
    with pytest.raises(ValueError, match="CPU generator"):
        aug(x.cuda(), torch.Generator(device="cuda"))
