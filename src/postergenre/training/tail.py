"""Mode "tail": train the last blocks of the backbone, cheaply, on cached feature maps.

The frozen trunk runs once per poster (ONNX Runtime, cached on disk as float16 rows, see
:class:`~postergenre.backbones.features.TailRows`); then every epoch runs only the last ``tail_blocks``
MBConv blocks, the head convolution and the head on those maps. The maps are flipped left-right
at random (the tap statistics the trunk already pooled do not change under a flip). The head is
fitted first on the pretrained features (frozen mode), then the tail and head are tuned
together at a low learning rate, keeping the epoch with the best validation mAP.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from ..modeling.epochs import BestEpoch, train_epoch
from ..modeling.losses import build_loss
from .loops import Fit, bce
from .recipe import head_plan


class TailNet(nn.Module):
    """Cached map ``(B, C, H, W)`` + trunk tap stats ``(B, S)`` -> logits ``(B, G)``."""

    def __init__(self, backbone: nn.Module, split: int, head: nn.Module, tuned_from: int | None = None):
        super().__init__()
        self.backbone, self.split, self.head = backbone, split, head
        # Blocks split..tuned_from-1 run frozen on the maps (to measure tuning fewer blocks on one cache).
        self.tuned_from = split if tuned_from is None else tuned_from

    def forward(self, maps: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.tail(maps, [stats], self.split))

    def trainable(self) -> list[nn.Parameter]:
        """Only the tail and the head learn; the trunk's weights (and every BN's running
        statistics, kept in eval mode) stay as pretrained."""
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        params = [p for m in self.backbone.tail_modules(self.tuned_from) for p in m.parameters()] + list(self.head.parameters())
        for p in params:
            p.requires_grad_(True)
        return params

    def train(self, mode: bool = True) -> "TailNet":
        super().train(mode)
        self.backbone.eval()  # BN statistics stay pretrained; dropout lives in the head
        return self


def tuned_prefixes(backbone: nn.Module, split: int) -> list[str]:
    """State-dict key prefixes of the modules the tail trains (what the model artifact stores)."""
    names = {id(m): n for n, m in backbone.named_modules()}
    return [names[id(m)] + "." for m in backbone.tail_modules(split)]


def _split_rows(rows: np.ndarray, layout: dict) -> tuple[np.ndarray, np.ndarray]:
    m = int(np.prod(layout["map"]))
    return rows[:, :m].reshape(-1, *layout["map"]), rows[:, m:m + layout["stats"]]


@torch.no_grad()
def tail_logits(net: TailNet, rows: np.ndarray, layout: dict, batch: int = 256) -> np.ndarray:
    """Logits ``(N, G)`` of ``net`` (eval mode) for cached rows ``(N, D)``."""
    maps, stats = _split_rows(rows, layout)
    net.eval()
    out = [net(torch.from_numpy(maps[i:i + batch]).float(), torch.from_numpy(stats[i:i + batch]).float())
           for i in range(0, len(rows), batch)]
    return torch.cat(out).numpy()


def _batches(fit: Fit, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """One epoch's batches: (row indices, sorted to read the cached rows in memory order; which of
    them to flip), in an order and with flips drawn from ``fit.gen``."""
    order = fit.train_idx[torch.randperm(len(fit.train_idx), generator=fit.gen).numpy()]
    flips = (torch.rand(len(order), generator=fit.gen) < 0.5).numpy()
    return [(np.sort(order[i:i + batch_size]), flips[i:i + batch_size]) for i in range(0, len(order), batch_size)]


def fit_tail(net: TailNet, rows: np.ndarray, layout: dict, fit: Fit) -> np.ndarray:
    """Tune ``net`` (tail + head, the head already fitted) in place on cached ``rows``.

    ``fit.recipe`` is the resolved recipe (``tail_epochs``, ``tail_lr``, ``batch_size``,
    ``weight_decay``, ``loss``, ``patience``); ``fit.gen`` draws the batch order and the flips.
    Returns the best epoch's validation scores.
    """
    from tqdm.auto import tqdm

    r, y, known = fit.recipe, fit.y, fit.known
    maps, stats = _split_rows(rows, layout)
    criterion = build_loss(r.loss, y[fit.train_idx])
    step = head_plan(r.tail_lr, r.weight_decay).build(net, r.tail_epochs, params=net.trainable())
    yv = torch.as_tensor(y[fit.val_idx])
    keeper = BestEpoch(r.patience)

    def loss_of(batch) -> torch.Tensor:
        b, f = batch
        x = torch.from_numpy(maps[b]).float()
        f = torch.from_numpy(f)
        x[f] = x[f].flip(-1)
        k = None if known is None else torch.from_numpy(known[b]).float()
        return criterion(step.forward(x, torch.from_numpy(stats[b]).float()), torch.from_numpy(y[b]), k)

    start, stopped = fit.ckpt.restore(step, fit.gen, keeper, fit.history) if fit.ckpt else (0, False)
    for epoch in range(start + 1, r.tail_epochs + 1) if not stopped else []:
        t = time.time()
        with tqdm(total=len(fit.train_idx), desc=f"tail epoch {epoch}/{r.tail_epochs}", unit="poster",
                  disable=not fit.progress) as bar:
            losses = train_epoch(step, _batches(fit, r.batch_size), loss_of, bar)
        step.end_epoch()
        logits = torch.as_tensor(tail_logits(net, rows[fit.val_idx], layout))
        scores = torch.sigmoid(logits).numpy()
        row = fit.history.log(epoch, losses, bce(logits, yv).item(), y[fit.val_idx], scores, t, {"phase": "tail"})
        if fit.close_epoch(epoch, row, scores, step, keeper):
            break
    return keeper.restore_best(net)
