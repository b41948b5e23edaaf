"""Per-genre calibration of logits, so that sigmoid scores read as probabilities.

A :class:`Calibration` maps the model's logits ``z`` ``(B, G)`` to ``z * scale + bias`` (one
``scale`` and ``bias`` per genre); it is a mul and an add, so it rides along in the ONNX graph.
``scale > 0`` always, so the order of posters within a genre (AP, thresholds' ranking) is kept.

Fitted on the validation part's logits and 0/1 labels:

- :func:`fit_platt`: Platt scaling, ``sigmoid(a * z + b)`` per genre;
- :func:`fit_temperature`: one temperature per genre, ``sigmoid(z / T)`` (bias 0);
- :func:`fit_isotonic`: isotonic regression per genre, for measurement only (a step function
  is awkward in the ONNX graph);
- :func:`compare_calibrators`: cross-validated ECE / Brier / BCE of each, to choose one.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit as _sigmoid  # overflow-free sigmoid
from torch import nn

from .metrics import brier_score, expected_calibration_error

KINDS = ("identity", "temperature", "platt")


class Calibration(nn.Module):
    """Per-genre affine map of logits: ``(B, G) -> (B, G)``, ``logits * scale + bias``.

    ``scale`` and ``bias`` are ``(G,)`` float32 buffers (saved in the state dict, exported to
    ONNX as constants). The default is the identity: scale 1, bias 0.
    """

    def __init__(self, n_genres: int, kind: str = "identity", scale=None, bias=None):
        super().__init__()
        scale = torch.ones(n_genres) if scale is None else torch.as_tensor(scale, dtype=torch.float32)
        bias = torch.zeros(n_genres) if bias is None else torch.as_tensor(bias, dtype=torch.float32)
        _check(kind, scale, bias, n_genres)
        self.kind = kind
        self.register_buffer("scale", scale.detach().clone().float())
        self.register_buffer("bias", bias.detach().clone().float())

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits * self.scale + self.bias

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``(N, G)`` in [0, 1] from raw logits ``(N, G)``, in numpy."""
        scale, bias = (v.detach().double().cpu().numpy() for v in (self.scale, self.bias))
        return _sigmoid(np.asarray(logits, dtype=np.float64) * scale + bias)

    def to_dict(self) -> dict:
        """``{"kind", "scale", "bias"}`` with plain float lists (JSON-ready)."""
        return {"kind": self.kind, "scale": [float(v) for v in self.scale], "bias": [float(v) for v in self.bias]}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on a malformed or unsafe dict."""
        try:
            kind = d["kind"]
            scale, bias = torch.tensor(d["scale"], dtype=torch.float32), torch.tensor(d["bias"], dtype=torch.float32)
            n = len(scale)  # TypeError for a scalar
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad calibration dict: {exc!r}") from exc
        return cls(n, kind, scale, bias)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, n_genres={len(self.scale)}"


def _check(kind: str, scale: torch.Tensor, bias: torch.Tensor, n: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"calibration kind {kind!r} is not one of {KINDS}")
    if scale.shape != (n,) or bias.shape != (n,):
        raise ValueError(f"calibration scale {tuple(scale.shape)} / bias {tuple(bias.shape)}: expected ({n},)")
    if not (torch.isfinite(scale).all() and torch.isfinite(bias).all()):
        raise ValueError("calibration parameters must be finite")
    if not (scale > 0).all():  # a non-positive scale would reverse or erase the ranking of a genre
        raise ValueError("calibration scale must be > 0 for every genre")


def _inputs(logits, y) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    t = (np.asarray(y) > 0).astype(np.float64)
    if z.ndim != 2 or z.shape != t.shape or len(z) == 0:
        raise ValueError(f"logits {z.shape} and labels {t.shape} must be the same (N, G), N > 0")
    if not np.isfinite(z).all():
        raise ValueError("logits must be finite")
    return z, t


def _platt_targets(t: np.ndarray) -> np.ndarray:
    """Platt's (1999) smoothed targets: (n+ + 1)/(n+ + 2) and 1/(n- + 2), per genre.

    They keep a genre whose positives are all ranked first (or absent) from driving the fit
    to infinite slope or bias: with no positives the target is 1/(N + 2), not 0.
    """
    pos, neg = t.sum(0), (1 - t).sum(0)
    return np.where(t > 0, (pos + 1) / (pos + 2), 1 / (neg + 2))


def _fit_affine(logits, y, with_bias: bool, l2: float, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Minimise, for all genres at once (they are independent), the summed BCE of
    ``sigmoid(exp(s) * z + b)`` against Platt targets plus ``l2 / 2 * (s^2 + b^2)``.

    ``exp(s)`` keeps the scale positive; the L2 term pulls toward the identity (scale 1, bias 0)
    with the weight of ``l2`` posters' worth of loss, so it only matters for nearly empty genres.
    """
    z, t = _inputs(logits, y)
    z, t = torch.from_numpy(z), torch.from_numpy(_platt_targets(t))
    log_a = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=with_bias)
    opt = torch.optim.LBFGS([log_a, b] if with_bias else [log_a], lr=1.0, max_iter=max_iter,
                            tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        bce = F.binary_cross_entropy_with_logits(z * log_a.exp() + b, t, reduction="sum")
        loss = (bce + 0.5 * l2 * (log_a.square().sum() + b.square().sum())) / len(z)  # per poster: well scaled
        loss.backward()
        return loss

    opt.step(closure)
    return log_a.detach().exp().numpy(), b.detach().numpy()


def fit_platt(logits: np.ndarray, y: np.ndarray, l2: float = 1.0, max_iter: int = 200) -> Calibration:
    """Platt scaling per genre: ``p = sigmoid(a * z + b)``, ``a > 0``.

    ``logits`` ``(N, G)`` raw model logits (not probabilities) of the validation posters,
    ``y`` ``(N, G)`` their 0/1 genres; ``l2`` is the pull toward ``a = 1, b = 0`` in posters.
    """
    a, b = _fit_affine(logits, y, with_bias=True, l2=l2, max_iter=max_iter)
    return Calibration(len(a), "platt", a, b)


def fit_temperature(logits: np.ndarray, y: np.ndarray, l2: float = 1.0, max_iter: int = 200) -> Calibration:
    """One temperature ``T`` per genre: ``p = sigmoid(z / T)``; stored as ``scale = 1 / T``, bias 0.

    Same inputs as :func:`fit_platt`. It can fix over/under-confidence but not a shifted base rate.
    """
    a, b = _fit_affine(logits, y, with_bias=False, l2=l2, max_iter=max_iter)
    return Calibration(len(a), "temperature", a, b)


def fit_isotonic(logits: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Isotonic regression of the 0/1 labels on ``sigmoid(logits)``, per genre (measurement only).

    Returns a function: raw logits ``(M, G)`` -> probabilities ``(M, G)`` in [0, 1]. A genre with
    no positives maps everything to 0 (isotonic has no prior; that is part of what we measure).
    """
    from sklearn.isotonic import IsotonicRegression

    z, t = _inputs(logits, y)
    s = _sigmoid(z)
    fits = [IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(s[:, g], t[:, g])
            for g in range(z.shape[1])]

    def apply(new_logits: np.ndarray) -> np.ndarray:
        ns = _sigmoid(np.asarray(new_logits, dtype=np.float64))
        return np.stack([f.predict(ns[:, g]) for g, f in enumerate(fits)], axis=1)

    return apply


def _scores(y: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> dict:
    """ECE (15 bins), Brier and mean BCE (nats) over every poster x genre.

    BCE clips p to [eps, 1 - eps], else one isotonic 0 on a positive would make it infinite.
    """
    q = np.clip(p, eps, 1 - eps)
    bce = -np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))
    return {"ece": expected_calibration_error(y, p), "brier": brier_score(y, p), "bce": float(bce)}


def compare_calibrators(logits: np.ndarray, y: np.ndarray, seed: int = 0, folds: int = 2) -> dict:
    """Cross-validated comparison of none / temperature / platt / isotonic on one labelled set.

    ``logits`` ``(N, G)`` raw logits, ``y`` ``(N, G)`` 0/1. Posters are shuffled (``seed``) into
    ``folds`` parts; each part is scored by calibrators fitted on the others, and the metrics are
    computed over all the out-of-fold probabilities together. Returns plain data::

        {"n_posters": N, "n_genres": G, "folds": k, "seed": seed,
         "methods": {"none": {"ece", "brier", "bce"}, "temperature": {...}, "platt": {...}, "isotonic": {...}}}
    """
    z, t = _inputs(logits, y)
    if not 2 <= folds <= len(z):
        raise ValueError(f"folds must be in [2, {len(z)}], got {folds}")
    fitters = {
        "none": lambda zf, tf: _sigmoid,
        "temperature": lambda zf, tf: fit_temperature(zf, tf).probabilities,
        "platt": lambda zf, tf: fit_platt(zf, tf).probabilities,
        "isotonic": fit_isotonic,
    }
    parts = np.array_split(np.random.default_rng(seed).permutation(len(z)), folds)
    out = {name: np.empty_like(z) for name in fitters}
    for held in parts:
        fit_idx = np.setdiff1d(np.arange(len(z)), held)
        for name, fit in fitters.items():
            out[name][held] = fit(z[fit_idx], t[fit_idx])(z[held])
    return {"n_posters": int(len(z)), "n_genres": int(z.shape[1]), "folds": int(folds), "seed": int(seed),
            "methods": {name: _scores(t, p) for name, p in out.items()}}
