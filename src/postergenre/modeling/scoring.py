"""Scoring image files with any scorer (a PyTorch model or an ONNX one), without importing PyTorch."""

from __future__ import annotations

import numpy as np

from ..data.images import decoded_batches


def score_images(model, paths: list, batch_size: int = 32) -> tuple[np.ndarray, dict[int, str]]:
    """Scores ``(N, G)`` of ``model`` (anything with ``genres``, ``preprocess`` and
    ``predict_proba_tensor``) for image files, decoded in a thread pool, and ``{index: error}``
    for the files that cannot be read (their rows stay zero)."""
    scores = np.zeros((len(paths), len(model.genres)), dtype=np.float32)
    errors: dict[int, str] = {}
    for idx, batch, errs in decoded_batches(paths, model.preprocess, batch_size):
        errors.update(errs)
        if batch is not None:
            scores[idx] = model.predict_proba_tensor(batch)
    return scores, errors
