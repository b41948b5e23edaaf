"""Multi-label metrics (scikit-learn), including the study's "accuracy" as micro recall@3.

All functions take ``y_true`` ``(N, G)`` 0/1, ``scores`` ``(N, G)`` in [0, 1] and, where a
decision is involved, ``predicted`` ``(N, G)`` bool.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    hamming_loss,
)

from .decision import top_k_mask


def micro_recall_at_k(y_true: np.ndarray, scores: np.ndarray, k: int = 3) -> float:
    """True genres found in the top k / all true genres (our reading of the study's accuracy)."""
    hits = (top_k_mask(scores, k) & (y_true > 0)).sum()
    return float(hits / max(int((y_true > 0).sum()), 1))


def precision_at_k(y_true: np.ndarray, scores: np.ndarray, k: int = 3) -> float:
    """Mean over posters of (true genres in the top k) / k."""
    return float(((top_k_mask(scores, k) & (y_true > 0)).sum(1) / k).mean())


def recall_at_k(y_true: np.ndarray, scores: np.ndarray, k: int = 3) -> float:
    """Mean over posters of (true genres in the top k) / (true genres of the poster)."""
    t = y_true > 0
    has = t.sum(1) > 0
    per = (top_k_mask(scores, k) & t).sum(1)[has] / t.sum(1)[has]
    return float(per.mean()) if len(per) else 0.0


def macro_average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Mean AP over the genres that have at least one positive."""
    cols = np.flatnonzero((y_true > 0).any(0))
    if len(cols) == 0:
        return 0.0
    return float(average_precision_score(y_true[:, cols], scores[:, cols], average="macro"))


def expected_calibration_error(y_true: np.ndarray, scores: np.ndarray, n_bins: int = 15) -> float:
    """ECE over every poster x genre score: sum over equal-width bins of [0, 1] of
    |mean score - fraction of positives| weighted by the bin's share of all N*G scores.

    Bin b holds scores in [b/n, (b+1)/n); a score of exactly 1.0 goes in the last bin.
    """
    y = (np.asarray(y_true) > 0).ravel().astype(np.float64)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0:
        return 0.0
    bins = np.clip((s * n_bins).astype(int), 0, n_bins - 1)
    # |sum of scores - sum of labels| in a bin is n_b * |mean score - mean label|.
    gap = np.abs(np.bincount(bins, s, n_bins) - np.bincount(bins, y, n_bins))
    return float(gap.sum() / s.size)


def brier_score(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Mean over every poster x genre of (score - label)^2; 0 is perfect, 0.25 is always 0.5."""
    # numpy rather than sklearn's brier_score_loss, which is fussy about single-class input.
    y = (np.asarray(y_true) > 0).ravel().astype(np.float64)
    s = np.asarray(scores, dtype=np.float64).ravel()
    return float(np.mean((s - y) ** 2)) if s.size else 0.0


def evaluate(y_true: np.ndarray, scores: np.ndarray, predicted: np.ndarray, genres: list[str]) -> dict:
    """All the project's metrics as plain data (the JSON of ``postergenre evaluate``)."""
    y_true = (np.asarray(y_true) > 0).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    predicted = np.asarray(predicted).astype(int)
    support = y_true.sum(0)
    f1_each = f1_score(y_true, predicted, average=None, zero_division=0)
    per_genre = {}
    for g, name in enumerate(genres):
        ap = float(average_precision_score(y_true[:, g], scores[:, g])) if support[g] else None
        per_genre[name] = {"AP": ap, "F1": float(f1_each[g]), "support": int(support[g])}
    judged = support > 0
    return {
        "n_posters": int(len(y_true)),
        "micro_recall_at_3": micro_recall_at_k(y_true, scores, 3),
        "precision_at_3": precision_at_k(y_true, scores, 3),
        "recall_at_3": recall_at_k(y_true, scores, 3),
        "mAP": macro_average_precision(y_true, scores),
        "micro_f1": float(f1_score(y_true, predicted, average="micro", zero_division=0)),
        # Macro F1 over the genres present here: an absent genre has no F1 to average.
        "macro_f1": float(np.mean(f1_each[judged])) if judged.any() else 0.0,
        "samples_f1": float(f1_score(y_true, predicted, average="samples", zero_division=0)),
        "hamming_loss": float(hamming_loss(y_true, predicted)),
        "subset_accuracy": float(accuracy_score(y_true, predicted)),
        # Calibration: are the scores probabilities? (0 is perfect for both)
        "ece": expected_calibration_error(y_true, scores),
        "brier": brier_score(y_true, scores),
        "per_genre": per_genre,
    }


SUMMARY_KEYS = ["micro_recall_at_3", "precision_at_3", "recall_at_3", "mAP", "micro_f1", "macro_f1",
                "samples_f1", "hamming_loss", "subset_accuracy", "ece", "brier"]
