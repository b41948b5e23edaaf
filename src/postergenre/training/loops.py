"""The head's training loop on cached features (:func:`fit_head`) and the epoch bookkeeping every
loop shares: :class:`Fit` (what a loop needs of its run), :class:`History`, per-epoch
checkpoints (:meth:`Fit.close_epoch`). One step and one epoch, for every loop, are
:mod:`postergenre.modeling.epochs` (shared with the int8 engine's head tuning); the whole
network on decoded posters is :mod:`.finetune`, the last blocks on cached maps :mod:`.tail`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..distributed import SINGLE, Dist
from ..modeling import metrics as M
from ..modeling.epochs import BestEpoch, Step, shuffled_batches, train_epoch
from ..modeling.losses import build_loss
from .checkpoint import Checkpoints
from .recipe import Recipe, head_plan


@dataclass
class Monitor:
    """Another labelled set whose BCE is logged every epoch as ``<name>_loss`` (the study's loss
    curves); it never influences training or model selection. ``loss(module)`` computes it for
    the module being trained (a head on features, or the whole model on images)."""

    name: str
    loss: Callable[[nn.Module], float]


def _epoch_metrics(y: np.ndarray, scores: np.ndarray) -> dict:
    return {"micro_recall_at_3": M.micro_recall_at_k(y, scores, 3), "mAP": M.macro_average_precision(y, scores)}


@dataclass
class History:
    """Per-epoch rows (epoch, train_loss, val_loss, val metrics, seconds) and per-iteration losses."""

    epochs: list[dict] = field(default_factory=list)
    iterations: list[float] = field(default_factory=list)

    def log(self, epoch: int, losses: list[float], val_loss: float, y_val, scores, started: float, extra: dict) -> dict:
        """Record one epoch: its row (losses, validation metrics, seconds) and its batch losses."""
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else None, "val_loss": val_loss}
        row.update({f"val_{k}": v for k, v in _epoch_metrics(y_val, scores).items()})
        row.update(extra)
        row["seconds"] = round(time.time() - started, 3)
        self.epochs.append(row)
        self.iterations += losses
        return row

    def to_csv(self) -> str:
        if not self.epochs:
            return ""
        keys = list(dict.fromkeys(k for r in self.epochs for k in r))  # a later phase may add columns

        def cell(v) -> str:
            return "" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)

        rows = [",".join(keys)] + [",".join(cell(r.get(k)) for k in keys) for r in self.epochs]
        return "\n".join(rows) + "\n"

    def iterations_csv(self) -> str:
        return "iteration,train_loss\n" + "".join(f"{i + 1},{v:.6g}\n" for i, v in enumerate(self.iterations))


@dataclass(kw_only=True)
class Fit:
    """What a training loop needs of its run: the recipe, the labels ``y`` ``(N, G)`` (``known``:
    0 where a label is unknown and left out of the loss; None: all known), the split, the
    batch-order generator (None: one seeded from the recipe), the history it logs into, the
    checkpoints it writes every epoch and resumes from (None: none), the ranks, a
    :class:`Monitor` and a ``phase`` name for the history rows.
    ``training.train.Run`` is one, with the model and the data besides."""

    recipe: Recipe
    y: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    known: np.ndarray | None = None
    history: History = field(default_factory=History)
    gen: torch.Generator | None = None
    ckpt: Checkpoints | None = None
    dist: Dist = SINGLE
    progress: bool = False
    monitor: Monitor | None = None
    phase: str | None = None

    def close_epoch(self, epoch: int, row: dict, scores: np.ndarray, step: Step, keeper: BestEpoch) -> bool:
        """End of an epoch in any loop: update the best epoch (of ``step.kept``), checkpoint;
        True when training should stop."""
        stop = keeper.update(row, scores, step.kept)
        if self.ckpt:
            self.ckpt.save(epoch, step, self.gen, keeper, self.history, stop)
        return stop


def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits, target)


def loss_of_scores(scores: np.ndarray, y: np.ndarray) -> float:
    return float(nn.functional.binary_cross_entropy(torch.as_tensor(scores).clamp(1e-7, 1 - 1e-7), torch.as_tensor(y)))


def fit_head(head: nn.Module, feats: np.ndarray, fit: Fit) -> np.ndarray:
    """Frozen mode: train ``head`` in place on features ``feats`` ``(N, D)``.

    Keeps the epoch with the best validation mAP and returns its validation scores ``(len(val_idx), G)``.
    With ``fit.ckpt``, every epoch is checkpointed and training continues from the newest checkpoint.
    """
    from tqdm.auto import tqdm

    r = fit.recipe.resolved()
    torch.manual_seed(r.seed)  # dropout masks must not depend on whether extraction ran
    fit = replace(fit, recipe=r, gen=fit.gen if fit.gen is not None else torch.Generator().manual_seed(r.seed))
    head = head.to(r.device)
    criterion = build_loss(r.loss, fit.y[fit.train_idx]).to(r.device)
    xt, yt = (torch.as_tensor(a[fit.train_idx], device=r.device) for a in (feats, fit.y))
    kt = None if fit.known is None else torch.as_tensor(fit.known[fit.train_idx], device=r.device)
    xv, yv = (torch.as_tensor(a[fit.val_idx], device=r.device) for a in (feats, fit.y))
    head.feature_mean.copy_(xt.mean(0))
    # Floor the spread: a feature (nearly) constant on the training posters would otherwise be
    # divided by ~1e-6 and blow up on any new poster, saturating every score.
    std = xt.std(0) + 1e-6
    head.feature_std.copy_(std.clamp_min(0.1 * float(std.mean())))
    step = head_plan(r.lr, r.weight_decay).build(head, r.epochs)
    keeper = BestEpoch(r.patience)
    start, stopped = fit.ckpt.restore(step, fit.gen, keeper, fit.history) if fit.ckpt else (0, False)
    bar = tqdm(range(start + 1, r.epochs + 1) if not stopped else [], desc="epochs", unit="ep", disable=not fit.progress)
    for epoch in bar:
        t = time.time()
        losses = train_epoch(step, shuffled_batches(len(xt), r.batch_size, fit.gen, r.device),
                             lambda b: criterion(step.forward(xt[b]), yt[b], None if kt is None else kt[b]))
        step.end_epoch()
        head.eval()
        with torch.no_grad():
            logits = head(xv)
            val_loss = bce(logits, yv).item()
            scores = torch.sigmoid(logits).cpu().numpy()
        extra = {} if fit.phase is None else {"phase": fit.phase}
        if fit.monitor is not None:
            with torch.no_grad():
                extra[f"{fit.monitor.name}_loss"] = fit.monitor.loss(head)
        row = fit.history.log(epoch, losses, val_loss, fit.y[fit.val_idx], scores, t, extra)
        bar.set_postfix(val_mAP=f"{row['val_mAP']:.3f}", val_r3=f"{row['val_micro_recall_at_3']:.3f}")
        if fit.close_epoch(epoch, row, scores, step, keeper):
            break
    return keeper.restore_best(head)
