"""The training recipe: every choice of a run in one visible place, and the split it implies.

Defaults, by mode (``Recipe.resolved``): ``frozen`` and ``tail`` train an MLP head on cached
features for 40 epochs (AdamW, lr 3e-4, weight decay 0.05, batch 33, BCE), ``tail`` then tunes
the last block(s) for 6 epochs at lr 1e-4; ``finetune`` follows the study (Adam, lr 1e-4, 25
epochs, 350x350, batch 33). Calibration: per-genre Platt scaling fitted on validation.
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
from ..modeling.losses import LOSSES
from ..modeling.model import HEADS

DEFAULT_BACKBONE = "efficientnet_lite0_poster"
MODES = ("frozen", "tail", "finetune")
CALIBRATIONS = ("platt", "temperature", "none")


@dataclass
class Recipe:
    """Everything that decides a training run. ``None`` means "the mode's default" (see
    :meth:`resolved`): frozen trains the head for 40 epochs with AdamW (lr 3e-4, weight decay
    0.05) at the backbone's input size; finetune follows the study (Adam, 25 epochs, lr 1e-4,
    350x350)."""

    backbone: str = DEFAULT_BACKBONE
    mode: str = "frozen"  # frozen | tail | finetune
    epochs: int | None = None
    batch_size: int = 33
    lr: float | None = None
    weight_decay: float | None = None  # frozen: 0.05 (AdamW; the head overfits 6k posters fast); finetune: 0
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
    workers: int | None = None  # decoding processes; default: 0 when fine-tuning on CPU, else up to 2
    # mode "tail": after the head, tune the last ``tail_blocks`` blocks + head conv on cached maps
    tail_blocks: int = 1
    tail_epochs: int = 6
    tail_lr: float = 1e-4
    calibration: str = "platt"  # per-genre, fitted on validation: platt | temperature | none
    weights: str | None = None  # backbone weights file (default: the backbone's own source)
    allow_random_init: bool = False  # train on random backbone weights when none can be had

    def resolved(self) -> "Recipe":
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
        if self.heads < 1 or self.batch_size < 1 or self.tail_epochs < 1:
            raise UsageError("heads, batch size and tail epochs must be at least 1")
        get_spec(self.backbone)  # fails early on an unknown name
        frozen = self.mode != "finetune"  # tail mode starts as frozen mode does
        r = Recipe(**asdict(self))
        r.epochs = self.epochs or (40 if frozen else 25)
        r.lr = self.lr or (3e-4 if frozen else 1e-4)
        r.weight_decay = self.weight_decay if self.weight_decay is not None else (0.05 if frozen else 0.0)
        if r.image_size is None and not frozen:
            r.image_size = 350
        if r.device == "auto":
            r.device = "cuda" if torch.cuda.is_available() else "cpu"
        if r.workers is None and not frozen and r.device == "cpu":
            # Decoding is ~5% of a CPU training step; loader processes beside PyTorch's threads
            # only contend for the cores (1 epoch on 300 posters: 60.9 s with 2 workers, 38.6 s without).
            r.workers = 0
        return r


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
