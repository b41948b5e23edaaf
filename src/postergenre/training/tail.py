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

from ..modeling.losses import build_loss
from .checkpoint import Checkpoints


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


def fit_tail(net: TailNet, rows: np.ndarray, layout: dict, y: np.ndarray, known: np.ndarray | None, train_idx, val_idx,
             r, history, gen: torch.Generator, keeper, close_epoch, progress: bool = False,
             ckpt: Checkpoints | None = None) -> np.ndarray:
    """Tune ``net`` (tail + head, the head already fitted) in place on cached ``rows``.

    ``y``/``known`` ``(N, G)``; ``r`` the resolved recipe (``tail_epochs``, ``tail_lr``,
    ``batch_size``, ``weight_decay``, ``loss``). Returns the best epoch's validation scores.
    """
    from tqdm.auto import tqdm

    from .loops import bce as _bce

    maps, stats = _split_rows(rows, layout)
    criterion = build_loss(r.loss, y[train_idx])
    opt = torch.optim.AdamW(net.trainable(), lr=r.tail_lr, weight_decay=r.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=r.tail_epochs)
    yv = torch.as_tensor(y[val_idx])
    start, stopped = ckpt.restore(net, opt, sched, gen, keeper, history) if ckpt else (0, False)
    for epoch in range(start + 1, r.tail_epochs + 1) if not stopped else []:
        t = time.time()
        net.train()
        order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        flips = (torch.rand(len(order), generator=gen) < 0.5).numpy()
        losses = []
        bar = tqdm(range(0, len(order), r.batch_size), desc=f"tail epoch {epoch}/{r.tail_epochs}", unit="batch",
                   disable=not progress)
        for i in bar:
            b = np.sort(order[i:i + r.batch_size])  # sorted: reads the cached rows in memory order
            x = torch.from_numpy(maps[b]).float()
            f = torch.from_numpy(flips[i:i + len(b)])
            x[f] = x[f].flip(-1)
            k = None if known is None else torch.from_numpy(known[b]).float()
            loss = criterion(net(x, torch.from_numpy(stats[b]).float()), torch.from_numpy(y[b]), k)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        sched.step()
        logits = torch.as_tensor(tail_logits(net, rows[val_idx], layout))
        scores = torch.sigmoid(logits).numpy()
        row = history.log(epoch, losses, _bce(logits, yv).item(), y[val_idx], scores, t, {"phase": "tail"})
        if close_epoch(epoch, row, scores, net, opt, sched, gen, keeper, history, ckpt):
            break
    return keeper.restore_best(net)
