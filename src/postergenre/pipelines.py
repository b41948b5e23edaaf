"""The one-call Python API, in the style of Hugging Face's ``pipeline``::

    import postergenre

    pipe = postergenre.pipeline()                # the built-in model, fastest engine
    pipe("poster.jpg", top_k=3)                  # [{"label": "Horror", "score": 0.71}, ...]
    pipe([image, "b.jpg", open("c.jpg", "rb").read()])   # one list per poster

A poster is a PIL image, a path (``str`` or ``Path``) or the bytes of an image file; paths and
bytes are decoded exactly as ``postergenre predict`` decodes files, so the scores are the same.
:func:`poster_batch` (the model's input batch for any such posters) also serves
:meth:`~postergenre.model.PosterGenreModel.predict_proba`. No PyTorch import here: with the
ONNX engine and a cached export, PyTorch is never loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageOps

from .errors import UsageError
from .images import Preprocess, _to_rgb

Poster = Any  # PIL.Image.Image | str | os.PathLike | bytes


def is_one_poster(posters: Any) -> bool:
    """A single poster rather than a sequence of them (a ``str`` path is one poster)."""
    return isinstance(posters, (Image.Image, str, os.PathLike, bytes, bytearray, memoryview))


def poster_pixels(poster: Poster, preprocess: Preprocess) -> np.ndarray:
    """One poster resized for the model, ``(H, W, 3)`` uint8; ImageLoadError naming a path
    that cannot be read, UsageError for something that is not a poster at all."""
    if isinstance(poster, Image.Image):
        upright = ImageOps.exif_transpose(poster)  # as a file's orientation tag is applied when it is decoded
        return np.array(preprocess.resize(_to_rgb(upright)), dtype=np.uint8)
    if isinstance(poster, (str, os.PathLike)):
        return preprocess.load_pixels(Path(poster))
    if isinstance(poster, (bytes, bytearray, memoryview)):
        return preprocess.load_pixels(bytes(poster))
    raise UsageError(f"cannot read a poster from a {type(poster).__name__}: give a PIL image, a path or the file's bytes")


def poster_batch(posters: Sequence[Poster], preprocess: Preprocess) -> np.ndarray:
    """The model's input for ``posters``: ``(B, 3, H, W)`` float32, normalised."""
    if not len(posters):
        raise UsageError("no posters given")
    return preprocess.normalize_pixels(np.stack([poster_pixels(p, preprocess) for p in posters]))


class PosterPipeline:
    """Genres with scores for posters; made by :func:`pipeline`. ``scorer``: the loaded model
    (a :class:`~postergenre.inference.Scorer`: its ``genres``, ``decision``, ...)."""

    def __init__(self, scorer, batch_size: int = 8):
        self.scorer = scorer
        self.batch_size = batch_size

    def scores(self, posters: Sequence[Poster]) -> np.ndarray:
        """Scores ``(N, G)`` in [0, 1], one column per genre of ``scorer.genres``."""
        parts = [self.scorer.predict_proba_tensor(poster_batch(posters[i:i + self.batch_size], self.scorer.preprocess))
                 for i in range(0, len(posters), self.batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.scorer.genres)), dtype=np.float32)

    def __call__(self, posters: Poster | Sequence[Poster], top_k: int | None = 3) -> list:
        """``[{"label": genre, "score": s}, ...]`` best first for one poster, or a list of such
        lists for a list of posters. ``top_k``: how many genres (``None``: all of them)."""
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise UsageError(f"top_k must be a whole number from 1 or None (all genres), not {top_k!r}")
        one = is_one_poster(posters)
        batch = [posters] if one else list(posters)
        genres = self.scorer.genres
        out = []
        for row in self.scores(batch):
            order = np.argsort(-row, kind="stable")[:top_k]
            out.append([{"label": genres[g], "score": float(row[g])} for g in order])
        return out[0] if one else out


def pipeline(model: Any = "default", engine: str = "auto", *, device: str = "cpu", cache_dir: str | Path | None = None,
             batch_size: int = 8) -> PosterPipeline:
    """A callable ``pipe(posters, top_k=3)`` for ``model``: ``"default"`` (built in), a model
    directory, an exported ``.onnx`` file, or a model already loaded (``load_model``/``load_scorer``).
    ``engine``: ``auto`` (ONNX Runtime on CPU, exported once into the cache), ``torch`` or ``onnx``."""
    from .inference import as_engine, load_scorer

    if model is None or isinstance(model, (str, os.PathLike)):
        scorer = load_scorer(model, engine, device=device, cache_dir=cache_dir)
    else:
        scorer = as_engine(model, engine, cache_dir)
    return PosterPipeline(scorer, batch_size)
