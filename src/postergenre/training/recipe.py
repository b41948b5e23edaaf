"""The training recipe: every choice of a run in one visible place, and the split it implies.

Defaults, by mode (``Recipe.resolved``): ``frozen`` and ``tail`` train an MLP head on cached
features for 40 epochs (AdamW, lr 3e-4, weight decay 0.05, batch 33, BCE), ``tail`` then tunes
the last block(s) for 6 epochs at lr 1e-4. ``finetune`` trains the whole network with one of
:data:`FINETUNE_PRESETS`: ``poster`` (the default) or ``study`` (the study's own recipe: Adam,
lr 1e-4, 25 epochs, 350x350, batch 33, no augmentation; what ``compare --mode finetune`` runs).
Calibration: per-genre Platt scaling fitted on validation. How each training step runs
(optimizer, schedule, precision, EMA, clipping) follows from the resolved recipe and the
backbone's spec, once per run: :func:`head_plan`, :func:`finetune_plan`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..backbones import get_spec
from ..data.dataset import split_indices
from ..errors import UsageError
from ..modeling.epochs import Precision, StepPlan
from ..modeling.losses import LOSSES
from ..modeling.model import HEADS

DEFAULT_BACKBONE = "efficientnet_lite0_poster"
MODES = ("frozen", "tail", "finetune")
CALIBRATIONS = ("platt", "temperature", "none")

CPU_MICRO_BATCH = 16  # finetune on a CPU: posters per forward pass (Lite0 at 384x256: ~3 GB)

# Mode finetune's recipes (the first is the default); a field the user sets wins over its preset's value.
FINETUNE_PRESETS = {
    # Ours: AdamW (the new head at 4x the backbone's lr), 1 epoch of linear warm-up then cosine per
    # step, an EMA of the weights kept as the model, augmentation on the device (random resized
    # crop, flip, colour), at the backbone's own input size (384x256, 2:3, for the default
    # backbone). Validation scores one view, as every engine does (ONNX, int8: mirror averaging
    # would halve CPU speed); the mirror-averaged figures are logged beside them each epoch.
    "poster": dict(epochs=20, lr=1e-3, head_lr=4e-3, weight_decay=0.02, batch_size=128, image_size=None, optimizer="adamw",
                   schedule="cosine", warmup_epochs=1.0, ema=0.998, augment=True, mirror_eval=False),
    # The study's protocol: Adam at a constant lr, 350x350 squashed posters, no augmentation.
    "study": dict(epochs=25, lr=1e-4, head_lr=None, weight_decay=0.0, batch_size=33, image_size=350, optimizer="adam",
                  schedule="constant", warmup_epochs=0.0, ema=0.0, augment=False, mirror_eval=False),
}


@dataclass
class Recipe:
    """Everything that decides a training run. ``None`` means "the mode's default" (see
    :meth:`resolved`): frozen trains the head for 40 epochs with AdamW (lr 3e-4, weight decay
    0.05) at the backbone's input size; finetune takes its preset's values
    (:data:`FINETUNE_PRESETS`: ``poster`` by default, or the study's)."""

    backbone: str = DEFAULT_BACKBONE
    mode: str = "frozen"  # frozen | tail | finetune
    epochs: int | None = None
    batch_size: int | None = None  # default 33; finetune: the preset's
    lr: float | None = None
    weight_decay: float | None = None  # frozen: 0.05 (AdamW; the head overfits 6k posters fast); finetune: the preset's
    head: str = "mlp"  # see model.HEADS
    loss: str = "bce"  # see losses.LOSSES; the validation loss is always reported as BCE
    hidden: int = 512
    dropout: float = 0.7
    heads: int = 1  # > 1: an ensemble of heads from seeds seed, seed+1, ... (mean of logits)
    image_size: int | tuple[int, int] | None = None  # square side, or (height, width)
    val_fraction: float = 0.15  # of the posters left after the test part
    test_fraction: float = 0.0  # kept aside before anything else; 0 = no test part
    seed: int = 0  # splits, initialisation and batch order
    patience: int = 10  # epochs without a better validation mAP before stopping
    device: str = "auto"
    workers: int | None = None  # decoding processes (default: the decoder's own choice)
    # mode "tail": after the head, tune the last ``tail_blocks`` blocks + head conv on cached maps
    tail_blocks: int = 1
    tail_epochs: int = 6
    tail_lr: float = 1e-4
    calibration: str = "platt"  # per-genre, fitted on validation: platt | temperature | none
    weights: str | None = None  # backbone weights file (default: the backbone's own source)
    allow_random_init: bool = False  # train on random backbone weights when none can be had
    # mode "finetune": the preset (FINETUNE_PRESETS; default "poster") fills every field left None
    preset: str | None = None
    head_lr: float | None = None  # the new head's lr (None: lr)
    optimizer: str | None = None  # adam | adamw
    schedule: str | None = None  # constant | cosine (per step, after warmup_epochs of linear warm-up)
    warmup_epochs: float | None = None
    ema: float | None = None  # decay of the EMA of the weights that is evaluated and kept; 0 = none
    clip_grad: float = 0.0  # largest total gradient norm; 0 = no clipping
    augment: bool | None = None  # random resized crop, flip and colour jitter on the device
    mirror_eval: bool | None = None  # validation/test scores averaged with the mirrored poster's
    compile: bool = False  # torch.compile the training step (CUDA graphs on CUDA); opt-in
    # posters per forward pass, a batch's gradients accumulated over them (default: the whole batch
    # on CUDA; CPU_MICRO_BATCH on a CPU, where a batch of 128 at 384x256 needs over 23 GB)
    micro_batch: int | None = None

    def resolved(self) -> "Recipe":
        self._check()
        frozen = self.mode != "finetune"  # tail mode starts as frozen mode does
        r = Recipe(**asdict(self))
        if frozen:
            r.epochs = self.epochs or 40
            r.lr = self.lr or 3e-4
            r.weight_decay = self.weight_decay if self.weight_decay is not None else 0.05
            r.batch_size = self.batch_size or 33
        else:
            r.preset = self.preset or "poster"
            for k, v in FINETUNE_PRESETS[r.preset].items():
                if getattr(r, k) is None:
                    setattr(r, k, v)
        if r.device == "auto":
            r.device = "cuda" if torch.cuda.is_available() else "cpu"
        if not frozen and r.micro_batch is None and torch.device(r.device).type == "cpu":
            r.micro_batch = CPU_MICRO_BATCH
        return r

    def _check(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"unknown mode {self.mode!r}: choose {', '.join(MODES)}")
        if self.calibration not in CALIBRATIONS:
            raise UsageError(f"unknown calibration {self.calibration!r}: choose {', '.join(CALIBRATIONS)}")
        if self.head not in HEADS:
            raise UsageError(f"unknown head {self.head!r}: choose one of {', '.join(HEADS)}")
        if self.loss not in LOSSES:
            raise UsageError(f"unknown loss {self.loss!r}: choose one of {', '.join(LOSSES)}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise UsageError(f"test fraction must be in [0, 1), got {self.test_fraction}")
        if self.heads < 1 or min(self.batch_size or 1, self.micro_batch or 1) < 1 or self.tail_epochs < 1:
            raise UsageError("heads, batch size, micro-batch and tail epochs must be at least 1")
        if self.preset is not None and (self.mode != "finetune" or self.preset not in FINETUNE_PRESETS):
            raise UsageError(f"recipe {self.preset!r}: mode finetune takes {' or '.join(FINETUNE_PRESETS)}, other modes none")
        if self.optimizer not in (None, "adam", "adamw") or self.schedule not in (None, "constant", "cosine"):
            raise UsageError(f"unknown optimizer {self.optimizer!r} or schedule {self.schedule!r}")
        if self.ema is not None and not 0.0 <= self.ema < 1.0:
            raise UsageError(f"EMA decay must be in [0, 1), got {self.ema}")
        get_spec(self.backbone)  # fails early on an unknown name


def head_plan(lr: float, weight_decay: float) -> StepPlan:
    """How a head (or the tail) trains on cached features: AdamW, one cosine step per epoch, fp32."""
    return StepPlan(optimizer="adamw", lr=lr, weight_decay=weight_decay, schedule="cosine_epoch")


def finetune_plan(r: Recipe) -> StepPlan:
    """How each finetune step runs, from the resolved recipe and its backbone's spec: on CUDA the
    spec's precision and memory format (``train_precision``, ``channels_last``); on CPU fp32 in
    channels_last, the format every backbone is built in."""
    spec = get_spec(r.backbone)
    cuda = torch.device(r.device).type == "cuda"
    precision = Precision.choose(spec.train_precision, spec.channels_last if cuda else True, r.device)
    return StepPlan(optimizer=r.optimizer, lr=r.lr, weight_decay=r.weight_decay, head_lr=r.head_lr, schedule=r.schedule,
                    warmup_epochs=r.warmup_epochs, ema=r.ema, clip_grad=r.clip_grad, precision=precision, compile=r.compile)


def size_pair(size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return torch.Generator().manual_seed(seed)


def split_fingerprint(ids: list[str], train_idx, val_idx, test_idx=()) -> str:
    h = hashlib.sha256()
    parts = [[ids[i] for i in train_idx], [ids[i] for i in val_idx]] + ([[ids[i] for i in test_idx]] if len(test_idx) else [])
    h.update(json.dumps(parts).encode())
    return h.hexdigest()[:16]


def recipe_split(labels: np.ndarray, r: "Recipe", primary: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) indices: the test part first (if any), then validation from the rest.

    With ``primary`` (indices of the primary dataset's posters), only those are split; every other
    poster (extra datasets) joins training, so validation and test measure the primary's distribution.
    """
    primary = np.arange(len(labels)) if primary is None else np.asarray(primary)
    own = labels[primary]
    rest, test = (split_indices(own, r.test_fraction, r.seed) if r.test_fraction
                  else (np.arange(len(own)), np.zeros(0, dtype=int)))
    tr, va = split_indices(own[rest], r.val_fraction, r.seed)
    extra = np.setdiff1d(np.arange(len(labels)), primary)
    return np.concatenate([primary[rest[tr]], extra]), primary[rest[va]], primary[test]
