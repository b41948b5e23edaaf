"""The training loops, read top to bottom: the head on cached features (:func:`fit_head`) and
the whole network on decoded posters (:func:`fit_end_to_end`), with the epoch bookkeeping they
share (:class:`History`, per-epoch checkpoints; one epoch over in-memory rows and the best-epoch
keeper are :mod:`postergenre.modeling.epochs`, shared with the int8 engine's head tuning).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..backbones.features import make_loader
from ..distributed import SINGLE, Dist
from ..errors import DatasetError
from ..modeling import metrics as M
from ..modeling.epochs import BestEpoch, train_epoch
from ..modeling.losses import build_loss
from .checkpoint import Checkpoints
from .recipe import Recipe


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


def close_epoch(epoch: int, row: dict, scores: np.ndarray, module: nn.Module, opt, sched, gen, keeper: BestEpoch,
                 history: History, ckpt: Checkpoints | None) -> bool:
    """End of an epoch in either loop: update the best epoch, checkpoint; True when training should stop."""
    stop = keeper.update(row, scores, module)
    if ckpt:
        ckpt.save(epoch, module, opt, sched, gen, keeper, history, stop)
    return stop


def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits, target)


def fit_head(head: nn.Module, feats: np.ndarray, y: np.ndarray, train_idx, val_idx, r: Recipe,
             history: History | None = None, gen: torch.Generator | None = None, progress: bool = False,
             monitor: Monitor | None = None, ckpt: Checkpoints | None = None, known: np.ndarray | None = None,
             phase: str | None = None) -> np.ndarray:
    """Frozen mode: train ``head`` in place on features ``(N, D)`` with labels ``(N, G)``
    (``known`` ``(N, G)``: 0 where a label is unknown and left out of the loss).

    Keeps the epoch with the best validation mAP and returns its validation scores ``(len(val_idx), G)``.
    With ``ckpt``, every epoch is checkpointed and training continues from the newest checkpoint.
    """
    from tqdm.auto import tqdm

    r = r.resolved()
    history = history if history is not None else History()
    torch.manual_seed(r.seed)  # dropout masks must not depend on whether extraction ran
    gen = gen if gen is not None else torch.Generator().manual_seed(r.seed)
    head = head.to(r.device)
    criterion = build_loss(r.loss, y[train_idx]).to(r.device)
    xt = torch.as_tensor(feats[train_idx], device=r.device)
    yt = torch.as_tensor(y[train_idx], device=r.device)
    kt = None if known is None else torch.as_tensor(known[train_idx], device=r.device)
    xv = torch.as_tensor(feats[val_idx], device=r.device)
    yv = torch.as_tensor(y[val_idx], device=r.device)
    head.feature_mean.copy_(xt.mean(0))
    # Floor the spread: a feature (nearly) constant on the training posters would otherwise be
    # divided by ~1e-6 and blow up on any new poster, saturating every score.
    std = xt.std(0) + 1e-6
    head.feature_std.copy_(std.clamp_min(0.1 * float(std.mean())))
    opt = torch.optim.AdamW(head.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=r.epochs)
    keeper = BestEpoch(r.patience)
    start, stopped = ckpt.restore(head, opt, sched, gen, keeper, history) if ckpt else (0, False)
    bar = tqdm(range(start + 1, r.epochs + 1) if not stopped else [], desc="epochs", unit="ep", disable=not progress)
    for epoch in bar:
        t = time.time()
        losses = train_epoch(head, lambda b: criterion(head(xt[b]), yt[b], None if kt is None else kt[b]), len(xt),
                             r.batch_size, opt, gen, r.device)
        sched.step()
        head.eval()
        with torch.no_grad():
            logits = head(xv)
            val_loss = bce(logits, yv).item()
            scores = torch.sigmoid(logits).cpu().numpy()
        extra = {} if phase is None else {"phase": phase}
        if monitor is not None:
            with torch.no_grad():
                extra[f"{monitor.name}_loss"] = monitor.loss(head)
        row = history.log(epoch, losses, val_loss, y[val_idx], scores, t, extra)
        bar.set_postfix(val_mAP=f"{row['val_mAP']:.3f}", val_r3=f"{row['val_micro_recall_at_3']:.3f}")
        if close_epoch(epoch, row, scores, head, opt, sched, gen, keeper, history, ckpt):
            break
    return keeper.restore_best(head)


def loss_of_scores(scores: np.ndarray, y: np.ndarray) -> float:
    return float(nn.functional.binary_cross_entropy(torch.as_tensor(scores).clamp(1e-7, 1 - 1e-7), torch.as_tensor(y)))


def _augment(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of the posters where ``flip`` (bool, one per poster) is set (titles read
    mirrored, but layout cues survive)."""
    x = x.clone()
    x[flip] = x[flip].flip(-1)
    return x


def predict_loader(model, loader, device) -> np.ndarray:
    out = []
    model.eval()
    with torch.inference_mode():
        for _, batch, errs in loader:
            if errs:
                raise DatasetError(f"unreadable image: {next(iter(errs.values()))}")
            out.append(torch.sigmoid(model(batch.to(device).contiguous(memory_format=torch.channels_last))).float().cpu())
    return torch.cat(out).numpy()


def fit_end_to_end(model, dataset, y, train_idx, val_idx, r: Recipe, history: History, gen, progress,
                   monitor: Monitor | None = None, ckpt: Checkpoints | None = None, dist: Dist = SINGLE,
                   known: np.ndarray | None = None) -> np.ndarray:
    """Finetune mode: the study's recipe on decoded images. Returns the best epoch's val scores.

    Under torchrun: DistributedDataParallel. Every rank draws the same global batch order; a
    DistributedSampler gives rank ``k`` positions ``k, k + W, ...`` of it with batches of
    ``batch_size / W``, so each global batch is the single-process batch split across ranks and
    the averaged gradient is the same.
    """
    model.to(r.device)
    net = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dist.local_rank] if r.device.startswith("cuda") else None)
    opt = torch.optim.Adam(model.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    criterion = build_loss(r.loss, y[train_idx]).to(r.device)
    val_loader = make_loader([dataset.paths[i] for i in val_idx], model.preprocess, r.batch_size, r.workers)
    yv = y[val_idx]
    keeper = BestEpoch(r.patience)
    start, stopped = ckpt.restore(model, opt, None, gen, keeper, history) if ckpt else (0, False)
    for epoch in range(start + 1, r.epochs + 1) if not stopped else []:
        t = time.time()
        losses = _train_epoch(net, model, dataset, y, known, train_idx, r, gen, criterion, opt, dist, epoch, progress)
        scores = predict_loader(model, val_loader, r.device)
        extra = {} if monitor is None else {f"{monitor.name}_loss": monitor.loss(model)}
        row = history.log(epoch, losses, loss_of_scores(scores, yv), yv, scores, t, extra)
        if close_epoch(epoch, row, scores, model, opt, None, gen, keeper, history, ckpt):
            break
    return keeper.restore_best(model)


def _train_epoch(net, model, dataset, y, known, train_idx, r: Recipe, gen, criterion, opt, dist: Dist, epoch: int,
                 progress: bool) -> list[float]:
    """One pass over the training posters in a seeded order, with random flips; the batch losses."""
    from tqdm.auto import tqdm

    model.train()
    order = torch.randperm(len(train_idx), generator=gen).numpy()
    ep_idx = [int(train_idx[i]) for i in order]
    # Drawn for the whole epoch on every rank: the same poster gets the same flip whatever the rank count.
    flips = torch.rand(len(ep_idx), generator=gen) < 0.5
    sampler = None
    if dist.enabled:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(range(len(ep_idx)), num_replicas=dist.world_size, rank=dist.rank, shuffle=False)
    loader = make_loader([dataset.paths[i] for i in ep_idx], model.preprocess, max(1, r.batch_size // dist.world_size),
                         r.workers, sampler=sampler)
    losses = []
    bar = tqdm(loader, desc=f"epoch {epoch}/{r.epochs}", unit="batch", disable=not progress, total=len(loader))
    for idx, batch, errs in bar:
        if errs:
            raise DatasetError(f"unreadable image: {next(iter(errs.values()))}")
        rows = [ep_idx[i] for i in idx]
        x = _augment(batch, flips[idx]).to(r.device).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=r.device.startswith("cuda")):
            logits = net(x)
        k = None if known is None else torch.as_tensor(known[rows], device=r.device)
        loss = criterion(logits.float(), torch.as_tensor(y[rows], device=r.device), k)
        opt.zero_grad()
        loss.backward()
        opt.step()
        logged = loss.detach()
        if dist.enabled:  # the global batch's loss, not this rank's share of it
            torch.distributed.all_reduce(logged)
            logged = logged / dist.world_size
        losses.append(logged.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return losses
