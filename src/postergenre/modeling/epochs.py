"""One epoch over rows held in memory, and the keeper of the best epoch: the pieces of a head's
training loop shared by :func:`postergenre.training.loops.fit_head` and the int8 engine's head
tuning (:func:`postergenre.inference.int8_head.tune_head`), which may not import ``training``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def train_epoch(module: nn.Module, loss_of, n: int, batch_size: int, opt, gen: torch.Generator,
                device: str | torch.device = "cpu") -> list[float]:
    """One epoch over ``n`` in-memory rows in an order drawn from ``gen``: ``loss_of(b)`` is the
    loss of the rows at indices ``b``; ``module`` is put in train mode. Returns each batch's loss."""
    module.train()
    order = torch.randperm(n, generator=gen).to(device)
    losses = []
    for i in range(0, n, batch_size):
        loss = loss_of(order[i:i + batch_size])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


class BestEpoch:
    """Keeps the weights and validation scores of the epoch with the best validation mAP, and
    says when ``patience`` epochs have passed without a better one."""

    def __init__(self, patience: int):
        self.patience, self.best, self.stale = patience, -1.0, 0
        self.state: dict | None = None
        self.scores: np.ndarray | None = None

    def update(self, row: dict, scores: np.ndarray, module: nn.Module) -> bool:
        if row["val_mAP"] > self.best:
            self.best, self.scores, self.stale = row["val_mAP"], scores, 0
            self.state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
            return False
        self.stale += 1
        return self.stale >= self.patience

    def restore_best(self, module: nn.Module) -> np.ndarray:
        """Put the best epoch's weights back into ``module`` (on CPU); returns its validation scores."""
        module.load_state_dict(self.state)
        module.cpu()
        return self.scores
