"""Why a genre scored what it did: Grad-CAM heatmaps over the poster (``grad-cam`` package).

The heatmap is taken at the backbone's last convolution (the deepest spatial map; the registry
does not need to name it) for the chosen genre's logit, and laid over the poster at its own size
(at most :data:`MAX_OVERLAY_SIDE` pixels a side).
Needs the PyTorch model (ONNX Runtime computes no gradients).

Two pictures: the plain overlay at the poster's size (the web page lays it over its own copy of
the poster and draws its legend in HTML) and the annotated one that ``postergenre explain``
writes, with the genre, its score and a low..high colour legend in a strip under the poster. That
score is the image's, the one Grad-CAM explains and the command prints (it reads no words; the web
page, which can, shows its bar's fused score and says the heatmap explains the image's part).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import UnknownName, UsageError

if TYPE_CHECKING:  # PyTorch is imported where it is used: the API checks a genre without it
    from torch import nn

    from ..modeling.model import PosterGenreModel

# Perceptually uniform and sequential (dark = little, bright = much); the page's legend copies it.
COLORMAP = "inferno"
# Image formats by file suffix; PIL encodes all three.
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
MIN_ANNOTATED_WIDTH = 360  # px: narrower posters are enlarged so the caption stays readable
# px, the longest side of an overlay: the heatmap is only 12x8 cells, and a 144-megapixel poster's
# overlay at full size would take ~5 GB of float arrays (`serve --max-pixels` lets such posters in)
MAX_OVERLAY_SIDE = 2048


def last_conv(module: nn.Module) -> nn.Module:
    from torch import nn

    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UsageError("this backbone has no convolution to explain (e.g. 'pixels')")
    return convs[-1]


def genre_key(name: str) -> str:
    """How a genre is compared: case, spaces, ``-`` and ``_`` ignored (``Sci-Fi`` = ``sci_fi`` = ``SCIFI``)."""
    return "".join(c for c in name.casefold() if c.isalnum())


def resolve_genre(genres: list[str], name: str) -> str:
    """The model's spelling of ``name`` (``action`` -> ``Action``, ``sci_fi`` -> ``Sci-Fi``): the one
    lookup behind ``postergenre explain --genre`` and ``/api/explain``; UnknownName listing them otherwise."""
    if name in genres:
        return name
    found = [g for g in genres if genre_key(g) == genre_key(name)]
    if len(found) == 1:
        return found[0]
    raise UnknownName(f"unknown genre {name!r}; choose one of: {', '.join(genres)}")


def gradcam(model: PosterGenreModel, image: Image.Image, genre: str,
            size: tuple[int, int] | None = None) -> tuple[np.ndarray, float]:
    """Heatmap ``(H, W)`` in [0, 1] at ``size`` (width, height; default the poster's), 1 = drove the
    score most, and the genre's score."""
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    g = model.genres.index(resolve_genre(model.genres, genre))
    model = model.cpu().eval()
    x = model.preprocess(image).unsqueeze(0)
    with torch.no_grad():
        score = float(torch.sigmoid(model(x))[0, g])
    with GradCAM(model=model, target_layers=[last_conv(model.backbone)]) as cam:
        heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(g)])[0]
    heat = np.asarray(Image.fromarray(np.uint8(np.clip(heat, 0, 1) * 255)).resize(size or image.size, Image.BILINEAR), dtype=np.float32) / 255.0
    return heat, score


def overlay(image: Image.Image, heat: np.ndarray, alpha: tuple[float, float] = (0.15, 0.6)) -> Image.Image:
    """The poster with the heatmap blended over it. The opacity grows with the heat (from
    ``alpha[0]`` to ``alpha[1]``), so regions that did not matter keep the poster readable."""
    from matplotlib import colormaps

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    colour = colormaps[COLORMAP](heat)[..., :3]
    a = (alpha[0] + (alpha[1] - alpha[0]) * heat)[..., None]
    return Image.fromarray(np.uint8(np.clip((1 - a) * rgb + a * colour, 0, 1) * 255))


def _font(size: int, bold: bool = False) -> ImageFont.ImageFont:
    """DejaVu Sans, which matplotlib ships (so every install has it), else PIL's own font."""
    import matplotlib

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)
    except OSError:
        return ImageFont.load_default(size)


def annotate(picture: Image.Image, genre: str, score: float) -> Image.Image:
    """``picture`` above a white strip: the genre and its score, then the colour legend (low..high)."""
    from matplotlib import colormaps

    if picture.width < MIN_ANNOTATED_WIDTH:
        picture = picture.resize((MIN_ANNOTATED_WIDTH, round(picture.height * MIN_ANNOTATED_WIDTH / picture.width)), Image.LANCZOS)
    w, unit = picture.width, max(14, picture.width // 26)  # the text size follows the picture's width
    pad = unit // 2
    canvas = Image.new("RGB", (w, picture.height + 3 * unit + 2 * pad), "white")
    canvas.paste(picture, (0, 0))
    draw, small = ImageDraw.Draw(canvas), _font(round(unit * 0.8))
    y = picture.height + pad
    draw.text((pad, y), f"{genre}: score {score:.2f}", fill=(29, 29, 34), font=_font(unit, bold=True))
    y += round(unit * 1.5)
    x0 = pad + round(draw.textlength("low", font=small)) + pad
    x1 = w - pad - round(draw.textlength("high", font=small)) - pad
    ramp = np.uint8(colormaps[COLORMAP](np.linspace(0, 1, max(x1 - x0, 1)))[None, :, :3] * 255)
    canvas.paste(Image.fromarray(ramp).resize((max(x1 - x0, 1), unit)), (x0, y))
    draw.text((pad, y), "low", fill=(102, 102, 102), font=small)
    draw.text((x1 + pad, y), "high", fill=(102, 102, 102), font=small)
    return canvas


def explain_image(model: PosterGenreModel, image: Image.Image, genre: str, annotated: bool = False) -> tuple[Image.Image, float]:
    """The overlay (``annotated``: with the caption and legend under it) at the poster's size (at
    most :data:`MAX_OVERLAY_SIDE` a side, same aspect) and the genre's score (of the whole poster)."""
    shown = image
    if max(image.size) > MAX_OVERLAY_SIDE:
        f = MAX_OVERLAY_SIDE / max(image.size)
        shown = image.resize((max(1, round(image.width * f)), max(1, round(image.height * f))), Image.BILINEAR, reducing_gap=3.0)
    heat, score = gradcam(model, image, genre, size=shown.size)
    picture = overlay(shown, heat)
    return (annotate(picture, resolve_genre(model.genres, genre), score) if annotated else picture), score


def explain_png(model: PosterGenreModel, image: Image.Image, genre: str, annotated: bool = False) -> tuple[bytes, float]:
    """PNG bytes of :func:`explain_image` and the genre's score."""
    picture, score = explain_image(model, image, genre, annotated)
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue(), score


def image_format(out_path: str | Path) -> str:
    """PIL's format name for ``out_path``'s suffix; a :class:`UsageError` naming the file otherwise."""
    suffix = Path(out_path).suffix.lower()
    if suffix not in FORMATS:
        kind = f"a {suffix} file" if suffix else "a file without a suffix"
        raise UsageError(f"{out_path}: cannot write the explanation as {kind}; name it .png, .jpg, .jpeg or .webp")
    return FORMATS[suffix]


def save_explanation(model: PosterGenreModel | str | Path | None, poster: str | Path | Image.Image, genre: str,
                     out_path: str | Path) -> tuple[str, float]:
    """Write the annotated explanation of ``genre`` for ``poster`` (a file or an image) to
    ``out_path``, encoded as its suffix says (.png, .jpg/.jpeg, .webp); return the genre as the
    model spells it and its score.

    ``model``: a loaded model, or a model directory (``None``/"default": the built-in model).
    Raises :class:`UsageError` for another suffix or an unknown genre (before any work),
    :class:`~postergenre.errors.ImageLoadError` for an unreadable poster and
    :class:`~postergenre.errors.OutputError` when the file cannot be written.
    """
    from .._io import atomic_bytes, writing
    from ..data.images import load_rgb
    from ..modeling.model import PosterGenreModel, load_model

    fmt = image_format(out_path)  # a wrong name fails at once, not after the Grad-CAM pass
    model = model if isinstance(model, PosterGenreModel) else load_model(model)
    resolve_genre(model.genres, genre)
    picture, score = explain_image(model, poster if isinstance(poster, Image.Image) else load_rgb(poster), genre, annotated=True)
    buf = io.BytesIO()
    picture.save(buf, format=fmt, **({"quality": 92} if fmt in ("JPEG", "WEBP") else {}))
    with writing(out_path):
        atomic_bytes(out_path, buf.getvalue())
    return resolve_genre(model.genres, genre), score


def explain_poster(model: str | Path | None, poster: str | Path, genre: str) -> tuple[bytes, float]:
    """``postergenre explain`` as one call: the annotated PNG for the poster file ``poster``
    under the model directory ``model`` (``None``/"default": the built-in model)."""
    from ..data.images import load_rgb
    from ..modeling.model import load_model

    return explain_png(load_model(model), load_rgb(poster), genre, annotated=True)
