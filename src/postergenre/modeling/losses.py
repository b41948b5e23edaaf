"""Training losses for multi-label heads: name -> builder(train labels (N, G)) -> loss module.

Every loss maps logits ``(B, G)``, 0/1 targets ``(B, G)`` and optionally which labels are known
``(B, G)`` to a scalar (mean over the known labels).
Adding a loss is one entry in :data:`LOSSES`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import UsageError


class _Elementwise(nn.Module):
    """Mean of a per-label loss over the known labels: ``forward(logits, target, known=None)``,
    ``known`` ``(B, G)`` 1/0 (0: the poster's source lacks that genre, so it teaches nothing)."""

    def __init__(self, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
        per = nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight, reduction="none")
        if known is None:
            return per.mean()
        return (per * known).sum() / known.sum().clamp_min(1.0)


class _Unmaskable(nn.Module):
    """A loss that has no per-label form: refuses unknown labels rather than read them as negatives."""

    def __init__(self, loss: nn.Module, name: str):
        super().__init__()
        self.loss, self.name = loss, name

    def forward(self, logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
        if known is not None and not bool(known.all()):
            raise UsageError(f"loss {self.name!r} cannot leave out unknown labels (a dataset lacks a genre); use bce")
        return self.loss(logits, target)


def _bce(y: np.ndarray) -> nn.Module:
    return _Elementwise()


def _bce_balanced(y: np.ndarray) -> nn.Module:
    # Positive weight = negatives / positives per genre, capped so a genre with a handful of
    # posters does not dominate the gradient.
    pos = y.sum(0).clip(min=1)
    return _Elementwise(torch.as_tensor(((len(y) - pos) / pos).clip(max=10.0), dtype=torch.float32))


def _asl(y: np.ndarray) -> nn.Module:
    # Asymmetric loss (Ridnik et al. 2021) with the paper's defaults: negatives are focused
    # (gamma 4) and easy ones clipped (margin 0.05), positives are plain cross-entropy.
    from timm.loss import AsymmetricLossMultiLabel

    return _Unmaskable(AsymmetricLossMultiLabel(gamma_neg=4, gamma_pos=0, clip=0.05, reduction="mean"), "asl")


LOSSES: dict[str, Callable[[np.ndarray], nn.Module]] = {
    "bce": _bce,
    "bce_balanced": _bce_balanced,
    "asl": _asl,
}


def build_loss(name: str, y_train: np.ndarray) -> nn.Module:
    """The loss ``name``: a module called as ``loss(logits (B, G), target (B, G), known=None)``."""
    if name not in LOSSES:
        raise UsageError(f"unknown loss {name!r}: choose one of {', '.join(LOSSES)}")
    return LOSSES[name](np.asarray(y_train, dtype=np.float64))
