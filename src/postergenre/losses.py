"""Training losses for multi-label heads: name -> builder(train labels (N, G)) -> loss module.

Every loss maps logits ``(B, G)`` and 0/1 targets ``(B, G)`` to a scalar (mean over the batch).
Adding a loss is one entry in :data:`LOSSES`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn


def _bce(y: np.ndarray) -> nn.Module:
    return nn.BCEWithLogitsLoss()


def _bce_balanced(y: np.ndarray) -> nn.Module:
    # Positive weight = negatives / positives per genre, capped so a genre with a handful of
    # posters does not dominate the gradient.
    pos = y.sum(0).clip(min=1)
    return nn.BCEWithLogitsLoss(pos_weight=torch.as_tensor(((len(y) - pos) / pos).clip(max=10.0), dtype=torch.float32))


def _asl(y: np.ndarray) -> nn.Module:
    # Asymmetric loss (Ridnik et al. 2021) with the paper's defaults: negatives are focused
    # (gamma 4) and easy ones clipped (margin 0.05), positives are plain cross-entropy.
    from timm.loss import AsymmetricLossMultiLabel

    return AsymmetricLossMultiLabel(gamma_neg=4, gamma_pos=0, clip=0.05, reduction="mean")


LOSSES: dict[str, Callable[[np.ndarray], nn.Module]] = {
    "bce": _bce,
    "bce_balanced": _bce_balanced,
    "asl": _asl,
}


def build_loss(name: str, y_train: np.ndarray) -> nn.Module:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}: choose one of {', '.join(LOSSES)}")
    return LOSSES[name](np.asarray(y_train, dtype=np.float64))
