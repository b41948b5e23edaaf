"""Augmentation as one batched op on the tensor's device, and the plain model input (issue 28).

End-to-end training holds the decoded posters (uint8, :mod:`postergenre.data.pixel_cache`) on
the GPU; a per-poster transform on the CPU would starve it. :class:`GpuAugment` turns a batch of
uint8 posters ``(B, H, W, 3)`` into the normalised input ``(B, 3, H, W)`` with, per poster, a
random resized crop, a horizontal flip and colour jitter (brightness, contrast, saturation), as a
handful of batched kernels wherever the tensor is. :func:`to_input` is the same input without
augmentation (evaluation, and the study's recipe, which has none).

The random numbers come from the caller's CPU generator and are turned into crop coordinates on
the CPU, then moved to the device: the same seed gives the same crops and colours on CPU and CUDA.
Those moves never wait for the device (see :func:`_on`), so the next batch is prepared while the
GPU still runs the last step.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..data.images import Preprocess

# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma), so the jitter means what its ColorJitter means.
GREY = (0.2989, 0.587, 0.114)


class Params(NamedTuple):
    """One batch's random draws (CPU, float64): crop boxes in source pixels, and per-poster factors."""

    box: torch.Tensor  # (B, 4): top, left, height, width
    flip: torch.Tensor  # (B,) bool
    brightness: torch.Tensor  # (B,) multiplier
    contrast: torch.Tensor  # (B,) blend factor with the poster's mean grey
    saturation: torch.Tensor  # (B,) blend factor with the poster in grey


def to_input(x: torch.Tensor, preprocess: Preprocess, flip: bool = False) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` -> float32 ``(B, 3, H, W)`` normalised, on ``x``'s device, mirrored
    with ``flip``: the same float32 operations as ``preprocess.normalize_pixels``, in the same order."""
    img = _unit(_checked(x))
    return _normalize(img.flip(-1) if flip else img, preprocess)


class GpuAugment:
    """``aug(x, generator)``: uint8 ``(B, H, W, 3)`` on any device -> float32 ``(B, 3, H, W)``,
    augmented per poster and normalised with ``preprocess``'s mean and std; the size is kept.

    - crop: a box of ``scale`` of the poster's area with aspect ratio in ``ratio`` *relative to the
      poster's own* (drawn log-uniformly; 1 keeps the poster's proportions), clamped to the poster,
      at a random position, resized back to the full size (bilinear);
    - ``flip``: the probability of a horizontal mirror;
    - brightness ``x * U(1-b, 1+b)``, then contrast (blend with the poster's mean grey, factor in
      ``contrast``), then saturation (blend with the poster in grey, factor in ``saturation``), each
      clamped to [0, 1] as torchvision's ColorJitter does (in a fixed order, where it shuffles).
    """

    def __init__(self, preprocess: Preprocess, scale=(0.6, 1.0), ratio=(1 / 1.12, 1.12), flip: float = 0.5,
                 brightness: float = 0.15, contrast=(0.8, 1.2), saturation=(0.8, 1.2)):
        if not (0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1] and 0 <= flip <= 1 and 0 <= brightness < 1
                and 0 <= contrast[0] <= contrast[1] and 0 <= saturation[0] <= saturation[1]):
            raise ValueError(f"augmentation out of range: scale={scale} ratio={ratio} flip={flip} "
                             f"brightness={brightness} contrast={contrast} saturation={saturation}")
        self.preprocess, self.flip, self.brightness = preprocess, float(flip), float(brightness)
        self.scale, self.ratio = tuple(map(float, scale)), tuple(map(float, ratio))
        self.contrast, self.saturation = tuple(map(float, contrast)), tuple(map(float, saturation))

    def params(self, batch: int, height: int, width: int, generator: torch.Generator | None = None) -> Params:
        """The draws for a batch, from ``generator`` (a CPU one). Always the same eight numbers per
        poster, whatever is switched off, so a seed gives the same crops with or without jitter."""
        if generator is not None and generator.device.type != "cpu":
            raise ValueError("GpuAugment draws on the CPU (the same parameters on every device): give a CPU generator")
        u = torch.rand((batch, 8), generator=generator, dtype=torch.float64)
        area = self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 0]
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(lo + (hi - lo) * u[:, 1])  # log-uniform: r and 1/r equally likely, as torchvision
        h = (area / aspect).sqrt().clamp(max=1.0) * height
        w = (area * aspect).sqrt().clamp(max=1.0) * width
        top, left = (height - h) * u[:, 2], (width - w) * u[:, 3]

        def between(bounds, v):
            return bounds[0] + (bounds[1] - bounds[0]) * v

        return Params(torch.stack([top, left, h, w], 1), u[:, 4] < self.flip,
                      between((1 - self.brightness, 1 + self.brightness), u[:, 5]),
                      between(self.contrast, u[:, 6]), between(self.saturation, u[:, 7]))

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b, height, width, _ = _checked(x).shape
        p = self.params(b, height, width, generator)
        rows = _taps(p.box[:, 0], p.box[:, 2], height)
        cols = _taps(p.box[:, 1], p.box[:, 3], width)
        cols = tuple(torch.where(p.flip[:, None], t.flip(-1), t) for t in cols)  # mirror: read the columns backwards
        img = _resample(_resample(_unit(x), 2, rows), 3, cols)
        return _normalize(self._jitter(img, p), self.preprocess)

    def _jitter(self, img: torch.Tensor, p: Params) -> torch.Tensor:
        # In place on our own resampled copy. An op that cannot change anything is skipped: less
        # work, and the identity stays exact.
        def factor(t):
            return _on(t.to(torch.float32), img.device).view(-1, 1, 1, 1)

        if self.brightness:
            img.mul_(factor(p.brightness)).clamp_(0, 1)
        if self.contrast != (1.0, 1.0):
            _blend_(img, _grey(img).mean(dim=(1, 2, 3), keepdim=True), factor(p.contrast))
        if self.saturation != (1.0, 1.0):
            _blend_(img, _grey(img), factor(p.saturation))
        return img


def _on(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor on ``device``, without a stream sync: a blocking copy would wait, every
    batch, for all the kernels queued before it. From pageable memory CUDA stages the data before
    the call returns, so the CPU tensor may go at once."""
    return t.to(device, non_blocking=True)


def _checked(x: torch.Tensor) -> torch.Tensor:
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 posters (B, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    return x


def _unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [0, 1], contiguous (the permute is made on the 1-byte pixels)."""
    return x.permute(0, 3, 1, 2).contiguous().to(torch.float32).div_(255)


def _normalize(img: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    mean = _on(torch.tensor(preprocess.mean, dtype=torch.float32), img.device).view(1, 3, 1, 1)
    std = _on(torch.tensor(preprocess.std, dtype=torch.float32), img.device).view(1, 3, 1, 1)
    return img.sub_(mean).div_(std)


def _taps(start: torch.Tensor, length: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear taps along one axis, on the CPU in float64: for each poster and output pixel, the
    two source pixels and the weight of the second, ``(B, size)`` each.

    Output pixel ``j``'s centre falls at ``start + (j + 0.5) * length / size`` in the source, whose
    pixel ``i`` has its centre at ``i + 0.5`` (grid_sample's ``align_corners=False``); positions
    are clamped to the edge pixels (its ``padding_mode="border"``). In float64 a full-size box
    lands exactly on the pixel centres, so no crop and a plain flip give the pixels back exactly
    (grid_sample's float32 coordinates miss them by up to 1e-4 after normalisation).
    """
    j = torch.arange(size, dtype=torch.float64)
    src = (start[:, None] + (j + 0.5) * (length / size)[:, None] - 0.5).clamp(0, size - 1)
    first = src.floor()
    return first.long(), (first.long() + 1).clamp(max=size - 1), src - first


def _resample(img: torch.Tensor, dim: int, taps: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Resize along ``dim`` (2: rows, 3: columns) with per-poster taps: two gathers and a lerp.
    Separable, so cheap; no antialiasing is needed, as a crop is only ever enlarged."""
    shape = [img.shape[0], 1, 1, 1]
    shape[dim] = -1
    first, second, weight = (_on(t, img.device).view(shape) for t in (taps[0], taps[1], taps[2].to(torch.float32)))
    size = list(img.shape)
    size[dim] = first.shape[dim]
    a, b = img.gather(dim, first.expand(size)), img.gather(dim, second.expand(size))
    return torch.lerp(a, b, weight)  # weight 0 gives a exactly


def _grey(img: torch.Tensor) -> torch.Tensor:
    r, g, b = img.unbind(1)
    return (GREY[0] * r + GREY[1] * g + GREY[2] * b).unsqueeze(1)


def _blend_(img: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``img = factor * img + (1 - factor) * other``, clamped, in place: torchvision's blend, same order."""
    return img.mul_(factor).add_(other * (1 - factor)).clamp_(0, 1)
