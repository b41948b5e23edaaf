"""Mode finetune: the whole network trained end to end on posters decoded once.

Every poster is decoded once, at the model's input size, into a uint8 cache
(:func:`postergenre.data.pixel_cache.decoded_pixels`: keyed by content and size, resumable, reused
by the next run). The training posters' pixels then sit where the steps read them
(:class:`PixelStore`: on the GPU when they fit, else in pinned memory; on a CPU the cache's own
array), a batch is a tensor of indices into them, and the poster recipe's augmentation
(:class:`~.augment.GpuAugment`: random resized crop, flip, colour) runs batched on the device.
How each step runs (optimizer, warm-up + cosine, precision and memory format, EMA, clipping) is
the run's :class:`~postergenre.modeling.epochs.Step`, planned once from the recipe and the
backbone's spec (:func:`~.recipe.finetune_plan`). After each epoch the kept weights (the EMA's,
when the recipe keeps one) score the validation posters, whole, as the engines do (and, with
``mirror_eval``, averaged with their mirror; the other view's figures are logged beside them); the epoch with the
best validation mAP is kept.

Under torchrun: DistributedDataParallel. Every rank draws the same global batch order; rank ``k``
of ``W`` takes positions ``k, k + W, ...`` of it in batches of ``batch_size / W`` (as a
DistributedSampler would), so each global batch is the single-process batch split across ranks
and the averaged gradient is the same. Augmentation draws from a stream per rank and epoch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..distributed import Dist
from ..modeling import metrics as M
from ..modeling.epochs import BestEpoch, Precision, Step, train_epoch
from ..modeling.losses import build_loss
from .augment import GpuAugment, to_input
from .loops import Fit, loss_of_scores
from .recipe import finetune_plan

GPU_SHARE = 0.5  # the training pixels go to the GPU when they take at most this share of its free memory


class PixelStore:
    """The training posters' uint8 pixels ``(n, H, W, 3)`` (rows ``rows`` of ``pixels``) where the
    steps read them: copied to the GPU once when they fit, else into pinned CPU memory; on a
    CPU device the (memory-mapped) array itself. :meth:`batch` gives positions' pixels on the device."""

    def __init__(self, pixels: np.ndarray, rows, device: torch.device):
        self.pixels, self.rows, self.device = pixels, np.asarray(rows), torch.device(device)
        self.where, self.data = "array", None
        if self.device.type != "cuda":
            return
        n_bytes = len(self.rows) * math.prod(pixels.shape[1:])
        self.where = "gpu" if n_bytes <= GPU_SHARE * torch.cuda.mem_get_info(self.device)[0] else "pinned"
        on_gpu = self.where == "gpu"
        self.data = torch.empty((len(self.rows), *pixels.shape[1:]), dtype=torch.uint8,
                                device=self.device if on_gpu else "cpu", pin_memory=not on_gpu)
        for s in range(0, len(self.rows), 1024):  # a block at a time: never a second full copy in memory
            self.data[s:s + 1024].copy_(torch.from_numpy(pixels[self.rows[s:s + 1024]]))

    def batch(self, positions: torch.Tensor) -> torch.Tensor:
        if self.where == "gpu":
            return self.data[positions.to(self.device)]
        if self.where == "pinned":
            return self.data[positions.cpu()].to(self.device, non_blocking=True)
        return torch.from_numpy(self.pixels[self.rows[positions.cpu().numpy()]])


def rank_batches(n: int, batch_size: int, gen: torch.Generator, dist: Dist, micro: int | None = None) -> list:
    """This rank's batches of positions ``0..n-1`` for one epoch (see the module docstring); with
    ``micro``, each cut into a list of micro-batches of at most that many."""
    order = torch.randperm(n, generator=gen)
    if dist.enabled:
        total = -(-n // dist.world_size) * dist.world_size  # padded with the first positions, as DistributedSampler
        order = torch.cat([order, order[:total - n]])[dist.rank::dist.world_size]
    per = max(1, batch_size // dist.world_size)
    batches = [order[i:i + per] for i in range(0, len(order), per)]
    return batches if not micro or micro >= per else [list(b.split(micro)) for b in batches]


@torch.inference_mode()
def score_rows(module: nn.Module, pixels: np.ndarray, rows, preprocess, precision: Precision, device,
               batch_size: int = 64, mirror: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Scores ``(len(rows), G)`` of ``module`` (eval mode) on the whole posters ``pixels[rows]``,
    and with ``mirror`` also their mean with the mirrored posters' scores (else None)."""
    module.eval()
    rows = np.asarray(rows)
    plain, both = [], []

    def probs(x: torch.Tensor) -> torch.Tensor:
        with precision.autocast():
            return torch.sigmoid(module(precision.input(x)).float())

    for s in range(0, len(rows), batch_size):
        x = torch.from_numpy(pixels[rows[s:s + batch_size]]).to(device)
        p = probs(to_input(x, preprocess))
        plain.append(p.cpu())
        if mirror:
            both.append(((p + probs(to_input(x, preprocess, flip=True))) / 2).cpu())
    cat = (lambda xs: torch.cat(xs).numpy())  # noqa: E731
    return cat(plain), cat(both) if mirror else None


@dataclass
class _Data:
    """What the steps read: the pixels (all posters; the training ones in ``store``), their
    preprocessing, the augmentation (None: none), the training labels on the device."""

    pixels: np.ndarray
    store: PixelStore
    preprocess: object
    augment: GpuAugment | None
    criterion: nn.Module
    yt: torch.Tensor
    kt: torch.Tensor | None
    device: torch.device


def _setup(model: nn.Module, pixels: np.ndarray, fit: Fit) -> tuple[Step, _Data]:
    r, dist = fit.recipe, fit.dist
    plan, device = finetune_plan(r), torch.device(r.device)
    model = plan.precision.module(model.to(device))
    net = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dist.local_rank] if device.type == "cuda" else None)
    n = len(fit.train_idx)
    steps = math.ceil(math.ceil(n / dist.world_size) / max(1, r.batch_size // dist.world_size))
    step = plan.build(model, r.epochs, steps, net=net, world_size=dist.world_size)
    tr = fit.train_idx
    data = _Data(pixels, PixelStore(pixels, tr, device), model.preprocess, GpuAugment(model.preprocess) if r.augment else None,
                 build_loss(r.loss, fit.y[tr]).to(device), torch.as_tensor(fit.y[tr], device=device),
                 None if fit.known is None else torch.as_tensor(fit.known[tr], device=device), device)
    return step, data


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The augmentation stream of one rank in one epoch: a resumed epoch draws the same crops."""
    return (seed * 1_000_003 + epoch) * 1_009 + rank


def _train_one_epoch(step: Step, data: _Data, fit: Fit, epoch: int) -> list[float]:
    from tqdm.auto import tqdm

    r = fit.recipe
    batches = rank_batches(len(fit.train_idx), r.batch_size, fit.gen, fit.dist, r.micro_batch)
    aug_gen = torch.Generator().manual_seed(_epoch_seed(r.seed, epoch, fit.dist.rank))

    def loss_of(b: torch.Tensor) -> torch.Tensor:
        x = data.store.batch(b)
        x = data.augment(x, aug_gen) if data.augment is not None else to_input(x, data.preprocess)
        pos = b.to(data.device)
        return data.criterion(step.forward(x), data.yt[pos], None if data.kt is None else data.kt[pos])

    mine = sum(sum(map(len, b)) if isinstance(b, list) else len(b) for b in batches)  # this rank's posters
    with tqdm(total=mine, desc=f"epoch {epoch}/{r.epochs}", unit="poster",
              disable=not fit.progress) as bar:
        return train_epoch(step, batches, loss_of, bar)


def _validate(step: Step, data: _Data, fit: Fit) -> tuple[np.ndarray, dict]:
    """The kept weights' validation scores and the other view's figures beside them: one view
    (what every engine scores; the poster recipe's choice) or, with ``mirror_eval``, the mean
    with the mirrored poster's. Both are measured every epoch, so the choice is made on validation."""
    r = fit.recipe
    plain, mirrored = score_rows(step.kept, data.pixels, fit.val_idx, data.preprocess, step.precision, data.device,
                                 2 * (r.micro_batch or r.batch_size), True)
    used, other, tag = (mirrored, plain, "no_mirror") if r.mirror_eval else (plain, mirrored, "mirror")
    yv = fit.y[fit.val_idx]
    return used, {f"val_mAP_{tag}": M.macro_average_precision(yv, other),
                  f"val_micro_recall_at_3_{tag}": M.micro_recall_at_k(yv, other, 3)}


def fit_end_to_end(model: nn.Module, pixels: np.ndarray, fit: Fit) -> np.ndarray:
    """Finetune mode: train ``model`` (a :class:`~postergenre.modeling.model.PosterGenreModel`)
    whole on ``pixels``, every poster of the dataset decoded (uint8 ``(N, H, W, 3)``, rows as
    ``fit.y``'s). Leaves the best epoch's kept weights in ``model`` (on CPU) and returns its
    validation scores. With ``fit.ckpt``, every epoch is checkpointed (weights, EMA, optimizer,
    schedule, RNG) and training continues from the newest checkpoint."""
    r = fit.recipe
    step, data = _setup(model, pixels, fit)
    keeper = BestEpoch(r.patience)
    yv = fit.y[fit.val_idx]
    start, stopped = fit.ckpt.restore(step, fit.gen, keeper, fit.history) if fit.ckpt else (0, False)
    with step.precision.settings():
        for epoch in range(start + 1, r.epochs + 1) if not stopped else []:
            t = time.time()
            losses = _train_one_epoch(step, data, fit, epoch)
            extra = {"posters_per_s": round(len(fit.train_idx) / max(time.time() - t, 1e-9), 1)}
            scores, more = _validate(step, data, fit)
            extra |= more
            if fit.monitor is not None:
                extra[f"{fit.monitor.name}_loss"] = fit.monitor.loss(step.kept)
            row = fit.history.log(epoch, losses, loss_of_scores(scores, yv), yv, scores, t, extra)
            if fit.close_epoch(epoch, row, scores, step, keeper):
                break
    return keeper.restore_best(model)
