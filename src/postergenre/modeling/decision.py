"""Decision rules: from genre scores ``(N, G)`` in [0, 1] to predicted genre sets ``(N, G)`` bool.

- ``top_k``: the K highest-scoring genres of each poster (the study's rule, K=3).
- ``thresholds``: every genre whose score passes its own threshold (tuned for F1 on the
  validation split), then at least one genre (the best) and at most K.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError

DECISIONS = ("top_k", "thresholds")


def top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    k = max(1, min(int(k), scores.shape[1]))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    mask = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


@dataclass
class DecisionRule:
    kind: str = "top_k"
    k: int = 3
    thresholds: list[float] | None = field(default=None)

    def __post_init__(self):
        if self.kind not in DECISIONS:
            raise UsageError(f"unknown decision rule {self.kind!r}; choose one of {', '.join(DECISIONS)}")
        if self.k < 1:
            raise UsageError(f"top-k must be at least 1, got {self.k}")
        if self.kind == "thresholds" and self.thresholds is None:
            raise UsageError("this model has no tuned thresholds; use the top_k decision")

    def apply(self, scores: np.ndarray) -> np.ndarray:
        scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
        top = top_k_mask(scores, self.k)
        if self.kind == "top_k":
            return top
        above = scores >= np.asarray(self.thresholds)[None, :]
        # at most K: the best K of those above their thresholds
        mask = top_k_mask(np.where(above, scores, -np.inf), self.k) & above
        none = ~mask.any(1)
        mask[np.flatnonzero(none), scores[none].argmax(1)] = True  # at least one: the best
        return mask

    def describe(self) -> str:
        return f"top-{self.k}" if self.kind == "top_k" else f"per-genre thresholds (1 to {self.k} genres)"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "k": self.k, "thresholds": self.thresholds}


def tune_thresholds(y_true: np.ndarray, scores: np.ndarray, grid: np.ndarray | None = None) -> list[float]:
    """Per-genre threshold maximising that genre's F1 on ``(y_true, scores)``, both ``(N, G)``.

    Genres without positives keep 0.5: there is nothing to tune them on.
    """
    grid = np.linspace(0.02, 0.9, 45) if grid is None else grid
    out = []
    for g in range(y_true.shape[1]):
        t, s = y_true[:, g].astype(bool), scores[:, g]
        if not t.any():
            out.append(0.5)
            continue
        pred = s[None, :] >= grid[:, None]
        tp = (pred & t).sum(1)
        f1 = 2 * tp / np.maximum(pred.sum(1) + t.sum(), 1)
        out.append(float(grid[int(np.argmax(f1))]))
    return out
