"""Why a genre scored what it did: Grad-CAM heatmaps over the poster (``grad-cam`` package).

The heatmap is taken at the backbone's last convolution (the deepest spatial map; the registry
does not need to name it) for the chosen genre's logit, and laid over the poster at its own size.
Needs the PyTorch model (ONNX Runtime computes no gradients).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .errors import UsageError
from .model import PosterGenreModel


def last_conv(module: nn.Module) -> nn.Module:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UsageError("this backbone has no convolution to explain (e.g. 'pixels')")
    return convs[-1]


def gradcam(model: PosterGenreModel, image: Image.Image, genre: str) -> tuple[np.ndarray, float]:
    """Heatmap ``(H, W)`` in [0, 1] at the poster's size (1 = drove the score most) and the genre's score."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if genre not in model.genres:
        raise UsageError(f"unknown genre {genre!r}; the model knows: {', '.join(model.genres)}")
    g = model.genres.index(genre)
    model = model.cpu().eval()
    x = model.preprocess(image).unsqueeze(0)
    with torch.no_grad():
        score = float(torch.sigmoid(model(x))[0, g])
    with GradCAM(model=model, target_layers=[last_conv(model.backbone)]) as cam:
        heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(g)])[0]
    heat = np.asarray(Image.fromarray(np.uint8(np.clip(heat, 0, 1) * 255)).resize(image.size, Image.BILINEAR), dtype=np.float32) / 255.0
    return heat, score


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The poster with the heatmap blended over it (jet colour map: red = strongest)."""
    from matplotlib import colormaps

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    colour = colormaps["jet"](heat)[..., :3]
    return Image.fromarray(np.uint8(np.clip((1 - alpha) * rgb + alpha * colour, 0, 1) * 255))


def explain_png(model: PosterGenreModel, image: Image.Image, genre: str) -> tuple[bytes, float]:
    """PNG bytes of the overlay and the genre's score."""
    heat, score = gradcam(model, image, genre)
    buf = io.BytesIO()
    overlay(image, heat).save(buf, format="PNG")
    return buf.getvalue(), score


def explain_poster(model: str | Path | None, poster: str | Path, genre: str) -> tuple[bytes, float]:
    """``postergenre explain`` as one call: :func:`explain_png` for the poster file ``poster``
    under the model directory ``model`` (``None``/"default": the built-in model)."""
    from .images import load_rgb
    from .model import load_model

    return explain_png(load_model(model), load_rgb(poster), genre)
