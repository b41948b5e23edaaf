"""One training step and one epoch for every loop, and the keeper of the best epoch.

A run chooses once, in a :class:`StepPlan` (from its recipe and its backbone's spec, see
``training.recipe``), how each step runs: the optimizer and its learning-rate schedule (per
epoch, or per step with a linear warm-up then cosine), the forward pass's :class:`Precision`
(autocast dtype or none, TF32, memory format), gradient clipping and an EMA of the weights.
:meth:`StepPlan.build` makes the run's :class:`Step`, the one object the loops pass around (as
torchvision's ``train_one_epoch`` takes a model, a criterion and an optimizer), and
:func:`train_epoch` runs it over one epoch's batches. Every loop uses these: the head on cached
features (``training.loops.fit_head``, and the int8 engine's head tuning, which may not import
``training``), the last blocks on cached maps (``training.tail``) and the whole network on
decoded posters (``training.finetune``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

PRECISIONS = ("fp32", "tf32", "bf16")  # what a forward pass on CUDA runs in; on CPU always fp32
SCHEDULES = ("constant", "cosine", "cosine_epoch")
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


@dataclass(frozen=True)
class Precision:
    """How the forward pass runs, chosen once per run (:meth:`choose`).

    ``kind``: ``fp32`` (IEEE float32), ``tf32`` (float32 storage, TF32 matmuls and convolutions)
    or ``bf16`` (autocast to bfloat16); ``channels_last``: the module and its 4-D inputs in
    channels-last memory format (``None``: left as they are)."""

    kind: str = "fp32"
    channels_last: bool | None = None
    device_type: str = "cpu"

    @classmethod
    def choose(cls, kind: str, channels_last: bool | None, device) -> "Precision":
        """``kind`` on CUDA, fp32 anywhere else."""
        if kind not in PRECISIONS:
            raise ValueError(f"unknown precision {kind!r}: choose {', '.join(PRECISIONS)}")
        device_type = torch.device(device).type
        return cls(kind if device_type == "cuda" else "fp32", channels_last, device_type)

    @property
    def dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.kind == "bf16" else None

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    @property
    def _format(self):
        return None if self.channels_last is None else torch.channels_last if self.channels_last else torch.contiguous_format

    def module(self, module: nn.Module) -> nn.Module:
        return module if self._format is None else module.to(memory_format=self._format)

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=self._format) if self._format is not None and x.dim() == 4 else x

    @contextmanager
    def settings(self):
        """TF32 on (``tf32``) or off (``fp32``) for CUDA matmuls and convolutions while the run
        lasts, then back as it was; nothing on CPU or under ``bf16``."""
        if self.device_type != "cuda" or self.kind == "bf16":
            yield
            return
        value = "tf32" if self.kind == "tf32" else "ieee"
        matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
        if hasattr(matmul, "fp32_precision"):  # torch >= 2.9
            saved = matmul.fp32_precision, conv.fp32_precision
            matmul.fp32_precision = conv.fp32_precision = value
        else:
            saved = matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = value == "tf32"
        try:
            yield
        finally:
            if hasattr(matmul, "fp32_precision"):
                matmul.fp32_precision, conv.fp32_precision = saved
            else:
                matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class WarmupCosine:
    """LR factor of step ``s`` (0-based) of ``total``: linear warm-up to 1 at the last of the first
    ``warmup`` steps, then cosine down towards 0, reached one step after the last (no step at
    lr 0, none twice at the peak). A class, not a closure: LambdaLR's state dict keeps its numbers."""

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = int(warmup), max(int(total), 1)

    def __call__(self, s: int) -> float:
        if s < self.warmup:
            return (s + 1) / self.warmup
        progress = min(1.0, (s - self.warmup + 1) / (self.total - self.warmup + 1))
        return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class StepPlan:
    """Every choice of how a step runs, made once per run. ``schedule``: ``constant``,
    ``cosine`` (per step, after ``warmup_epochs`` of linear warm-up) or ``cosine_epoch`` (one
    cosine step per epoch: the head loops'). ``head_lr``: the learning rate of the module's
    ``head`` when it differs from the rest's. ``ema``: decay of an EMA of the weights, 0 = none.
    ``clip_grad``: the gradients' largest total norm, 0 = no clipping."""

    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    head_lr: float | None = None
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    ema: float = 0.0
    clip_grad: float = 0.0
    precision: Precision = field(default_factory=Precision)
    compile: bool = False

    def build(self, module: nn.Module, epochs: int, steps_per_epoch: int = 1, params=None, net: nn.Module | None = None,
              world_size: int = 1) -> "Step":
        """The run's :class:`Step` for ``module`` (already on its device): ``params`` to train
        (default: all of ``module``'s), ``net`` what runs the forward pass (e.g. its
        DistributedDataParallel wrapper; default ``module``), ``world_size`` the ranks whose
        batch losses are averaged for the log."""
        if self.optimizer not in OPTIMIZERS or self.schedule not in SCHEDULES:
            raise ValueError(f"unknown optimizer {self.optimizer!r} or schedule {self.schedule!r}")
        if params is None:
            params = self._groups(module)
        fused = {"fused": True} if self.precision.device_type == "cuda" else {}
        opt = OPTIMIZERS[self.optimizer](params, lr=self.lr, weight_decay=self.weight_decay, **fused)
        sched, per_step = None, False
        if self.schedule == "cosine_epoch":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        elif self.schedule == "cosine":
            steps = max(1, steps_per_epoch)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(round(self.warmup_epochs * steps), epochs * steps))
            per_step = True
        net = net if net is not None else module
        if self.compile:
            net = torch.compile(net, mode="reduce-overhead" if self.precision.device_type == "cuda" else None)
        return Step(module, opt, sched, per_step, self, net, world_size)

    def _groups(self, module: nn.Module):
        head = getattr(module, "head", None)
        if self.head_lr is None or head is None:
            return list(module.parameters())
        own = {id(p) for p in head.parameters()}
        return [{"params": [p for p in module.parameters() if id(p) not in own], "lr": self.lr},
                {"params": list(head.parameters()), "lr": self.head_lr}]


class Step:
    """One run's training step (:meth:`update`) and forward pass (:meth:`forward`), with its
    optimizer, schedule, precision, clipping and EMA; made by :meth:`StepPlan.build`.
    :attr:`kept` is the module a run evaluates and keeps: the EMA of the weights when there is
    one (``torch.optim.swa_utils.AveragedModel``, buffers averaged too), else the module."""

    def __init__(self, module: nn.Module, opt, sched, per_step: bool, plan: StepPlan, net: nn.Module, world_size: int):
        self.module, self.opt, self.sched, self.per_step, self.plan = module, opt, sched, per_step, plan
        self.net, self.world_size, self.precision = net, world_size, plan.precision
        self.params = [p for g in opt.param_groups for p in g["params"]]
        self.ema = None
        if plan.ema:
            from torch.optim.swa_utils import AveragedModel

            # n_averaged stays on the CPU (device=None): no GPU sync per step to test it.
            self.ema = AveragedModel(module, multi_avg_fn=_ema(plan.ema), use_buffers=True)
            self.ema.module.eval()

    @property
    def kept(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.module

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The training forward pass in the run's precision and memory format; float32 out."""
        with self.precision.autocast():
            out = self.net(*(self.precision.input(x) for x in inputs))
        return out.float()

    def update(self, loss_of: Callable, batch) -> torch.Tensor:
        """One step on ``batch``: the gradient of ``loss_of(batch)`` (of a list of micro-batches: of
        their losses weighted by their share of the batch, accumulated one after the other, as the
        ranks of DistributedDataParallel would), clipped; the optimizer's, the schedule's and the
        EMA's step. Returns the batch's loss (detached)."""
        parts = batch if isinstance(batch, list) else [batch]
        n = sum(_count(p) for p in parts)
        self.opt.zero_grad()
        total = None
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            with self.net.no_sync() if not last and hasattr(self.net, "no_sync") else nullcontext():
                loss = loss_of(part)
                if len(parts) > 1:
                    loss = loss * (_count(part) / n)
                loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        if self.plan.clip_grad:
            nn.utils.clip_grad_norm_(self.params, self.plan.clip_grad)
        self.opt.step()
        if self.per_step:
            self.sched.step()
        if self.ema is not None:
            self.ema.update_parameters(self.module)
        return total

    def end_epoch(self) -> None:
        """The schedule's step of a per-epoch schedule."""
        if self.sched is not None and not self.per_step:
            self.sched.step()

    def batch_losses(self, losses: list[torch.Tensor]) -> list[float]:
        """The losses as floats (one sync per epoch), each the mean over the ranks' shares of its batch."""
        if not losses:
            return []
        t = torch.stack(losses).float()
        if self.world_size > 1:  # the global batch's loss, not this rank's share of it
            torch.distributed.all_reduce(t)
            t = t / self.world_size
        return t.tolist()


def _ema(decay: float) -> Callable:
    """torch's EMA update (``get_ema_multi_avg_fn``) for float tensors; integer buffers (batch
    norm's ``num_batches_tracked``) are copied, as timm's ModelEmaV3 does, not averaged."""
    from torch.optim.swa_utils import get_ema_multi_avg_fn

    average = get_ema_multi_avg_fn(decay)

    def update(ema: list[torch.Tensor], current: list[torch.Tensor], n_averaged) -> None:
        if ema[0].is_floating_point():  # AveragedModel groups the tensors by device and dtype
            average(ema, current, n_averaged)
        else:
            torch._foreach_copy_(ema, current)

    return update


def _count(batch) -> int:
    if isinstance(batch, list):  # micro-batches
        return sum(_count(b) for b in batch)
    return len(batch[0]) if isinstance(batch, tuple) else len(batch)


def train_epoch(step: Step, batches: Iterable, loss_of: Callable, bar=None) -> list[float]:
    """One epoch: one :meth:`Step.update` per batch ``b`` of ``batches`` (an index tensor or array,
    a tuple of them, or a list of such micro-batches), whose loss is ``loss_of(b)`` (which runs
    ``step.forward``); ``step.module`` is put in train mode. ``bar``: a tqdm bar advanced by the
    batch's size (posters/s), showing the loss now and then. Returns each batch's loss."""
    step.module.train()
    losses = []
    for i, b in enumerate(batches):
        loss = step.update(loss_of, b)
        losses.append(loss)
        if bar is not None:
            bar.update(_count(b))
            if i % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return step.batch_losses(losses)


def shuffled_batches(n: int, batch_size: int, gen: torch.Generator, device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Indices ``0..n-1`` in an order drawn from ``gen``, cut into batches (on ``device``)."""
    order = torch.randperm(n, generator=gen).to(device)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


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
