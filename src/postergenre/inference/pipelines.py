"""The one-call Python API, in the style of Hugging Face's ``pipeline``::

    import postergenre

    pipe = postergenre.pipeline()                # the built-in model, fastest engine
    pipe("poster.jpg", top_k=3)                  # [{"label": "Horror", "score": 0.71}, ...]
    pipe([image, "b.jpg", open("c.jpg", "rb").read()])   # one list per poster

A poster is a PIL image, a path (``str`` or ``Path``) or the bytes of an image file; paths and
bytes are decoded exactly as ``postergenre predict`` decodes files, so the scores are the same.
The posters become the model's input with :func:`~postergenre.data.images.poster_batch`, as
they do for :meth:`~postergenre.modeling.model.PosterGenreModel.predict_proba`. No PyTorch
import here: with the ONNX engine and a cached export, PyTorch is never loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.images import Poster, is_one_poster, poster_batch
from ..errors import UsageError


class PosterPipeline:
    """Genres with scores for posters; made by :func:`pipeline`. ``scorer``: the loaded model
    (a :class:`~postergenre.inference.scorer.Scorer`: its ``genres``, ``decision``, ...)."""

    def __init__(self, scorer, batch_size: int = 8, text=None):
        self.scorer = scorer
        self.batch_size = batch_size
        self.text = text  # a TextReader: the poster's words are read and fused in

    def scores(self, posters: Sequence[Poster]) -> np.ndarray:
        """Scores ``(N, G)`` in [0, 1], one column per genre of ``scorer.genres``."""
        parts = [self.scorer.predict_proba_tensor(poster_batch(posters[i:i + self.batch_size], self.scorer.preprocess))
                 for i in range(0, len(posters), self.batch_size)]
        scores = np.concatenate(parts) if parts else np.zeros((0, len(self.scorer.genres)), dtype=np.float32)
        return self.text.combine(scores, self.read(posters)) if self.text is not None and len(posters) else scores

    def read(self, posters: Poster | Sequence[Poster]) -> str | list[str]:
        """What OCR reads on each poster (``""``: nothing); needs ``pipeline(..., text=True)``."""
        if self.text is None:
            raise UsageError("this pipeline reads no text: make it with pipeline(..., text=True)")
        one = is_one_poster(posters)
        texts = self.text.read([posters] if one else list(posters))
        return texts[0] if one else texts

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
             batch_size: int = 8, text: bool = False) -> PosterPipeline:
    """A callable ``pipe(posters, top_k=3)`` for ``model``: ``"default"`` (built in), a model
    directory, an exported ``.onnx`` file, or a model already loaded (``load_model``/``load_scorer``).
    ``engine``: ``auto`` (ONNX Runtime on CPU, exported once into the cache), ``torch`` or ``onnx``.
    ``text``: also read each poster's words (OCR) and fuse them in (a model directory with a text branch)."""
    from .scorer import as_engine, load_scorer, load_text_reader

    if model is None or isinstance(model, (str, os.PathLike)):
        scorer = load_scorer(model, engine, device=device, cache_dir=cache_dir)
        reader = load_text_reader(model, cache_dir) if text else None
    else:
        if text:
            raise UsageError("pipeline(text=True) needs the model's directory (or 'default'), not a loaded model")
        scorer = as_engine(model, engine, cache_dir)
        reader = None
    return PosterPipeline(scorer, batch_size, reader)
