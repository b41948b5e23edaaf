"""Training recipes, read top to bottom.

``frozen``: pretrained backbone features are computed once (cached on disk), then a small head
is trained on them (AdamW, cosine schedule), keeping the epoch with the best validation mAP.
``finetune``: the study's recipe end to end (350x350, batch 33, Adam, BCE) on CPU or GPU.

Both optionally keep a test part aside first (``test_fraction``; never looked at until the model
is final), split a validation part off the rest with seeded multi-label iterative
stratification, tune the per-genre thresholds on it, and save the model directory with its
history, split and metrics.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import metrics as M
from .backbones import build_backbone, get_spec
from .checkpoint import Checkpoints
from .data import PosterDataset, split_indices
from .decision import DecisionRule, top_k_mask, tune_thresholds
from .distributed import SINGLE, Dist
from .distributed import setup as setup_distributed
from .features import extract_features, extract_features_sharded, make_loader
from .images import Preprocess
from .losses import LOSSES, build_loss
from .model import HEADS, Ensemble, PosterGenreModel, build_head, new_config

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
    workers: int | None = None
    # mode "tail": after the head, tune the last ``tail_blocks`` blocks + head conv on cached maps
    tail_blocks: int = 1
    tail_epochs: int = 6
    tail_lr: float = 1e-4
    calibration: str = "platt"  # per-genre, fitted on validation: platt | temperature | none

    def resolved(self) -> "Recipe":
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}: choose {', '.join(MODES)}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"unknown calibration {self.calibration!r}: choose {', '.join(CALIBRATIONS)}")
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}: choose one of {', '.join(HEADS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}: choose one of {', '.join(LOSSES)}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test fraction must be in [0, 1), got {self.test_fraction}")
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
        return r


def _size_pair(size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))


def _seed_everything(seed: int) -> torch.Generator:
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


def _close_epoch(epoch: int, row: dict, scores: np.ndarray, module: nn.Module, opt, sched, gen, keeper: BestEpoch,
                 history: History, ckpt: Checkpoints | None) -> bool:
    """End of an epoch in either loop: update the best epoch, checkpoint; True when training should stop."""
    stop = keeper.update(row, scores, module)
    if ckpt:
        ckpt.save(epoch, module, opt, sched, gen, keeper, history, stop)
    return stop


def train(
    dataset: PosterDataset,
    recipe: Recipe,
    out_dir: str | Path,
    cache_dir: str | Path | None = None,
    weights: str | Path | None = None,
    allow_random_init: bool = False,
    progress: bool = True,
    split: tuple[np.ndarray, np.ndarray] | None = None,
    data_source: str = "",
    monitor: tuple[str, PosterDataset] | None = None,
    resume: bool = False,
    extra_reports: list | None = None,
) -> PosterGenreModel:
    """Train on ``dataset`` with ``recipe`` and save the model to ``out_dir``.

    ``dataset`` may join several sources (:func:`postergenre.data.add_extra`): validation and
    test posters come only from the primary one, the others only join training, and labels a
    source lacks (``dataset.known`` = 0) are left out of the loss.
    ``split`` (train indices, validation indices) overrides the recipe's seeded split (and its
    test part). With ``recipe.test_fraction`` the test part is scored once, after the model is
    final, into ``test_metrics.json`` and the model card.
    ``monitor=(name, other_dataset)`` logs that set's loss per epoch as ``<name>_loss`` in the
    history (for the study's loss curves); it never influences training or model selection.

    Every epoch is checkpointed (atomically) next to ``out_dir`` in ``.<name>.checkpoints/``;
    ``resume=True`` continues from the newest one (the feature cache, filled incrementally,
    spares the extraction too). The checkpoints are removed once the model is saved.
    """
    r = recipe.resolved()
    dist = setup_distributed(r.device)  # under torchrun: join the group; else single process, unchanged
    if dist.enabled and r.device.startswith("cuda"):
        r.device = f"cuda:{dist.local_rank}"
    gen = _seed_everything(r.seed)  # the same seed on every rank: same split, same batch order
    if split is not None:
        train_idx, val_idx, test_idx = np.asarray(split[0]), np.asarray(split[1]), np.zeros(0, dtype=int)
    else:
        train_idx, val_idx, test_idx = recipe_split(dataset.labels, r, dataset.primary)
    y = dataset.labels.astype(np.float32)
    known = None if dataset.known is None or dataset.known.all() else dataset.known.astype(np.float32)

    spec = get_spec(r.backbone)
    size = _size_pair(r.image_size) if r.image_size else spec.input_size
    backbone = build_backbone(r.backbone, weights=weights, input_size=size, allow_random_init=allow_random_init)
    pp = Preprocess(size, spec.mean, spec.std)
    head = build_head(r.head, backbone.feature_dim, len(dataset.genres), r.hidden, r.dropout, r.heads)
    config = new_config(backbone, pp, dataset.genres, r.head, r.hidden if r.head == "mlp" else 0, r.dropout, r.mode, r.heads)
    model = PosterGenreModel(backbone, head, config)
    history = History()
    t0 = time.time()
    run_id = json.dumps([asdict(r) | {"device": None, "workers": None}, split_fingerprint(dataset.ids, train_idx, val_idx, test_idx),
                         backbone.weights_id, dataset.genres], sort_keys=True, default=str)
    ckpt = Checkpoints(checkpoint_dir(out_dir), hashlib.sha256(run_id.encode()).hexdigest()[:16], writer=dist.is_main)
    if not resume:
        ckpt.clear()
    dist.barrier()
    progress = progress and dist.is_main
    fit = _Fit(model, dataset, y, known, train_idx, val_idx, test_idx, r, history, gen, progress, ckpt, dist, cache_dir)

    if r.mode == "frozen":
        val_scores, test_scores = fit.frozen(monitor)
    elif r.mode == "tail":
        val_scores, test_scores = fit.tail()
    else:
        val_scores, test_scores = fit.end_to_end(monitor)
    return _finalize(model, dataset, y, train_idx, val_idx, test_idx, val_scores, test_scores, r, history, t0,
                     fit.extract_seconds, data_source, extra_reports or [], out_dir, ckpt, dist)


class _Fit:
    """The three ways of fitting, sharing one run's state; each returns (validation scores,
    test scores or None), both before calibration."""

    def __init__(self, model, dataset, y, known, train_idx, val_idx, test_idx, r, history, gen, progress, ckpt, dist, cache_dir):
        self.model, self.dataset, self.y, self.known = model, dataset, y, known
        self.train_idx, self.val_idx, self.test_idx = train_idx, val_idx, test_idx
        self.r, self.history, self.gen, self.progress, self.ckpt, self.dist = r, history, gen, progress, ckpt, dist
        self.cache_dir, self.extract_seconds = cache_dir, 0.0

    def _extract(self, split: int | None = None) -> np.ndarray:
        t = time.time()
        bb = self.model.backbone_info
        feats, errors = extract_features_sharded(bb, self.dataset.paths, self.model.preprocess, self.dist, self.cache_dir,
                                                 device=self.r.device, progress=self.progress, split=split)
        if errors:
            raise ValueError(f"{len(errors)} image(s) could not be read, e.g. {next(iter(errors.values()))}")
        self.extract_seconds += time.time() - t
        return feats

    def frozen(self, monitor=None):
        r, model = self.r, self.model
        feats = self._extract()
        watch = None
        if monitor is not None:
            mfeats, _ = extract_features(model.backbone_info, monitor[1].paths, model.preprocess, self.cache_dir,
                                         device=r.device, progress=self.progress)
            watch = (monitor[0], mfeats, monitor[1].labels.astype(np.float32))
        val_scores = self._fit_heads(feats, watch)
        return val_scores, model.predict_proba_features(feats[self.test_idx]) if len(self.test_idx) else None

    def _fit_heads(self, feats: np.ndarray, watch=None) -> np.ndarray:
        """Fit the head (each member of an ensemble from its own seed); validation scores of the whole."""
        head = self.model.head
        if not isinstance(head, Ensemble):
            return fit_head(head, feats, self.y, self.train_idx, self.val_idx, self.r, self.history, self.gen,
                            self.progress, watch, self.ckpt, self.known)
        t = time.time()
        for k, member in enumerate(head.members):  # a few minutes in all: not checkpointed
            fit_head(member, feats, self.y, self.train_idx, self.val_idx, replace(self.r, seed=self.r.seed + k),
                     self.history, None, self.progress, watch, None, self.known, phase=f"head {k + 1}")
        with torch.no_grad():
            logits = head.eval()(torch.as_tensor(feats[self.val_idx]))
        scores = torch.sigmoid(logits).numpy()
        self.history.log(0, [], _bce(logits, torch.as_tensor(self.y[self.val_idx])).item(), self.y[self.val_idx], scores, t,
                         {"phase": f"ensemble of {len(head.members)} heads"})
        return scores

    def tail(self):
        from .features import row_layout
        from .tail import TailNet, fit_tail, tail_logits, tuned_prefixes

        r, model = self.r, self.model
        module = model.backbone
        if not hasattr(module, "tail_modules"):
            raise ValueError(f"mode tail needs an EfficientNet-Lite backbone, not {r.backbone!r}")
        n_blocks = len(module.net._blocks)
        if not 0 <= r.tail_blocks <= n_blocks:  # 0: only the head convolution is tuned
            raise ValueError(f"--tail-blocks must be from 0 to {n_blocks}, not {r.tail_blocks}")
        split = n_blocks - r.tail_blocks
        rows = self._extract(split)
        layout = row_layout(model.backbone_info, model.preprocess, split)
        feats = rows[:, -layout["features"]:].astype(np.float32)
        self._fit_heads(feats)
        del feats
        net = TailNet(module, split, model.head)
        tail_ckpt = Checkpoints(self.ckpt.root / "tail", self.ckpt.fingerprint, writer=self.ckpt.writer)
        val_scores = fit_tail(net, rows, layout, self.y, self.known, self.train_idx, self.val_idx, r, self.history,
                              self.gen, BestEpoch(r.patience), _close_epoch, self.progress, tail_ckpt)
        model.config["backbone"]["tuned"] = tuned_prefixes(module, split)
        model.config["backbone"]["tail_blocks"] = r.tail_blocks
        test = torch.sigmoid(torch.as_tensor(tail_logits(net, rows[self.test_idx], layout))).numpy() if len(self.test_idx) else None
        return val_scores, test

    def end_to_end(self, monitor=None):
        r, model = self.r, self.model
        watch = None
        if monitor is not None:
            watch = (monitor[0], make_loader(monitor[1].paths, model.preprocess, r.batch_size, r.workers),
                     monitor[1].labels.astype(np.float32))
        val_scores = _fit_end_to_end(model, self.dataset, self.y, self.train_idx, self.val_idx, r, self.history, self.gen,
                                     self.progress, watch, self.ckpt, self.dist, self.known)
        loader = make_loader([self.dataset.paths[i] for i in self.test_idx], model.preprocess, r.batch_size, r.workers)
        return val_scores, _predict_loader(model, loader, "cpu") if len(self.test_idx) else None


def _logits(scores: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(scores, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def _calibrate(model: PosterGenreModel, y_val: np.ndarray, val_scores: np.ndarray, kind: str) -> np.ndarray:
    """Fit the per-genre calibration on the validation part; returns the calibrated validation scores."""
    from .calibration import fit_platt, fit_temperature

    if kind == "none":
        return val_scores
    z = _logits(val_scores)
    cal = (fit_platt if kind == "platt" else fit_temperature)(z, y_val)
    model.set_calibration(cal)
    return cal.probabilities(z)


def _finalize(model, dataset, y, train_idx, val_idx, test_idx, val_scores, test_scores, r, history, t0,
              extract_seconds, data_source, extra_reports, out_dir, ckpt, dist) -> PosterGenreModel:
    """Calibrate, tune the decision rules, score validation (and test, once), write the model."""
    raw_val = M.evaluate(y[val_idx], val_scores, top_k_mask(val_scores, 3), dataset.genres)
    val_scores = _calibrate(model, y[val_idx], val_scores, r.calibration)
    if test_scores is not None and "calibration" in model.config:
        test_scores = model.calibration.probabilities(_logits(test_scores))
    thresholds = tune_thresholds(y[val_idx], val_scores)
    model.config["decision"] = DecisionRule("top_k", 3, thresholds).to_dict()
    val_metrics = M.evaluate(y[val_idx], val_scores, model.decision.apply(val_scores), dataset.genres)
    val_metrics_thr = M.evaluate(y[val_idx], val_scores, model.decision_rule("thresholds").apply(val_scores), dataset.genres)
    parts = {"train": train_idx, "val": val_idx} | ({"test": test_idx} if len(test_idx) else {})
    model.config.update({
        "recipe": asdict(r),
        "data": _data_record(dataset, parts, data_source, extra_reports),
        "validation_metrics": {k: val_metrics[k] for k in M.SUMMARY_KEYS},
        "validation_metrics_thresholds": {k: val_metrics_thr[k] for k in M.SUMMARY_KEYS},
        "validation_metrics_uncalibrated": {k: raw_val[k] for k in M.SUMMARY_KEYS},
        "training_seconds": round(time.time() - t0, 1),
        "feature_extraction_seconds": round(extract_seconds, 1),
    })
    extra_files = {
        "history.csv": history.to_csv(),
        "history.json": json.dumps(history.epochs, indent=1),
        "iterations.csv": history.iterations_csv(),
        "split.json": json.dumps(_split_record(dataset, parts)),
        "validation_metrics.json": json.dumps(val_metrics, indent=1),
    }
    if test_scores is not None:
        yt = y[test_idx]
        test_metrics = M.evaluate(yt, test_scores, model.decision.apply(test_scores), dataset.genres)
        test_thr = M.evaluate(yt, test_scores, model.decision_rule("thresholds").apply(test_scores), dataset.genres)
        model.config["test_metrics"] = {k: test_metrics[k] for k in M.SUMMARY_KEYS}
        model.config["test_metrics_thresholds"] = {k: test_thr[k] for k in M.SUMMARY_KEYS}
        extra_files["test_metrics.json"] = json.dumps(test_metrics, indent=1)
    if dist.is_main:
        model.save(out_dir, card=model_card(model.config), extra_files=extra_files)
        ckpt.clear()  # the tail phase's checkpoints live inside its root: gone too
    dist.barrier()
    return model


def _split_record(dataset: PosterDataset, parts: dict) -> dict:
    """split.json: the primary's Ids per part, and every other source's training Ids by source."""
    sources = dataset.sources or ["primary"] * len(dataset)
    primary = sources[0] if sources else "primary"
    out = {k: [dataset.ids[i] for i in v if sources[i] == primary] for k, v in parts.items()}
    extra: dict[str, list[str]] = {}
    for i in parts["train"]:
        if sources[i] != primary:
            extra.setdefault(sources[i], []).append(dataset.ids[i])
    return out | ({"extra_train": extra} if extra else {})


def _data_record(dataset: PosterDataset, parts: dict, data_source: str, extra_reports: list) -> dict:
    sources = dataset.sources or ["primary"] * len(dataset)
    counts: dict[str, int] = {}
    for s in sources:
        counts[s] = counts.get(s, 0) + 1
    return {
        "source": data_source,
        "n_posters": len(dataset),
        "n_train": int(len(parts["train"])),
        "n_val": int(len(parts["val"])),
        "n_test": int(len(parts.get("test", []))),
        "split_fingerprint": split_fingerprint(dataset.ids, parts["train"], parts["val"], parts.get("test", [])),
        "sources": [{"name": name, "n_posters": n} | _extra_counts(name, extra_reports) for name, n in counts.items()],
    }


def _extra_counts(name: str, reports: list) -> dict:
    for rep in reports:
        if rep.name == name:
            return {"n_offered": rep.n_posters, "dropped_same_id": len(rep.dropped_same_id),
                    "dropped_same_image": len(rep.dropped_same_image), "unknown_genres": rep.unknown_genres}
    return {}


def checkpoint_dir(out_dir: str | Path) -> Path:
    """Where a training run writing ``out_dir`` keeps its per-epoch checkpoints."""
    out = Path(out_dir).resolve()
    return out.parent / f".{out.name}.checkpoints"


def _bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits, target)


def fit_head(head: nn.Module, feats: np.ndarray, y: np.ndarray, train_idx, val_idx, r: Recipe,
             history: History | None = None, gen: torch.Generator | None = None, progress: bool = False,
             watch=None, ckpt: Checkpoints | None = None, known: np.ndarray | None = None,
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
        head.train()
        order = torch.randperm(len(xt), generator=gen).to(r.device)
        losses = []
        for i in range(0, len(order), r.batch_size):
            b = order[i:i + r.batch_size]
            loss = criterion(head(xt[b]), yt[b], None if kt is None else kt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sched.step()
        head.eval()
        with torch.no_grad():
            logits = head(xv)
            val_loss = _bce(logits, yv).item()
            scores = torch.sigmoid(logits).cpu().numpy()
        extra = {} if phase is None else {"phase": phase}
        if watch is not None:
            with torch.no_grad():
                extra[f"{watch[0]}_loss"] = _bce(head(torch.as_tensor(watch[1], device=r.device)), torch.as_tensor(watch[2], device=r.device)).item()
        row = history.log(epoch, losses, val_loss, y[val_idx], scores, t, extra)
        bar.set_postfix(val_mAP=f"{row['val_mAP']:.3f}", val_r3=f"{row['val_micro_recall_at_3']:.3f}")
        if _close_epoch(epoch, row, scores, head, opt, sched, gen, keeper, history, ckpt):
            break
    return keeper.restore_best(head)


def _loss_of_scores(scores: np.ndarray, y: np.ndarray) -> float:
    return float(nn.functional.binary_cross_entropy(torch.as_tensor(scores).clamp(1e-7, 1 - 1e-7), torch.as_tensor(y)))


def _augment(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of the posters where ``flip`` (bool, one per poster) is set (titles read
    mirrored, but layout cues survive)."""
    x = x.clone()
    x[flip] = x[flip].flip(-1)
    return x


def _predict_loader(model, loader, device) -> np.ndarray:
    out = []
    model.eval()
    with torch.inference_mode():
        for _, batch, errs in loader:
            if errs:
                raise ValueError(f"unreadable image: {next(iter(errs.values()))}")
            out.append(torch.sigmoid(model(batch.to(device).contiguous(memory_format=torch.channels_last))).float().cpu())
    return torch.cat(out).numpy()


def _fit_end_to_end(model, dataset, y, train_idx, val_idx, r: Recipe, history: History, gen, progress, watch=None,
                    ckpt: Checkpoints | None = None, dist: Dist = SINGLE, known: np.ndarray | None = None) -> np.ndarray:
    """Finetune mode: the study's recipe on decoded images. Returns the best epoch's val scores.

    Under torchrun: DistributedDataParallel. Every rank draws the same global batch order; a
    DistributedSampler gives rank ``k`` positions ``k, k + W, ...`` of it with batches of
    ``batch_size / W``, so each global batch is the single-process batch split across ranks and
    the averaged gradient is the same.
    """
    from tqdm.auto import tqdm

    model.to(r.device)
    pp = model.preprocess
    paths = dataset.paths
    net = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dist.local_rank] if r.device.startswith("cuda") else None)
    per_rank_batch = max(1, r.batch_size // dist.world_size)
    opt = torch.optim.Adam(model.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    criterion = build_loss(r.loss, y[train_idx]).to(r.device)
    val_loader = make_loader([paths[i] for i in val_idx], pp, r.batch_size, r.workers)
    yv = y[val_idx]
    keeper = BestEpoch(r.patience)
    start, stopped = ckpt.restore(model, opt, None, gen, keeper, history) if ckpt else (0, False)
    for epoch in range(start + 1, r.epochs + 1) if not stopped else []:
        t = time.time()
        model.train()
        order = torch.randperm(len(train_idx), generator=gen).numpy()
        ep_idx = [int(train_idx[i]) for i in order]
        # Drawn for the whole epoch on every rank: the same poster gets the same flip whatever the rank count.
        flips = torch.rand(len(ep_idx), generator=gen) < 0.5
        sampler = None
        if dist.enabled:
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(range(len(ep_idx)), num_replicas=dist.world_size, rank=dist.rank, shuffle=False)
        loader = make_loader([paths[i] for i in ep_idx], pp, per_rank_batch, r.workers, sampler=sampler)
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch}/{r.epochs}", unit="batch", disable=not progress,
                   total=len(loader))
        for idx, batch, errs in bar:
            if errs:
                raise ValueError(f"unreadable image: {next(iter(errs.values()))}")
            target = torch.as_tensor(y[[ep_idx[i] for i in idx]], device=r.device)
            x = _augment(batch, flips[idx]).to(r.device).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=r.device.startswith("cuda")):
                logits = net(x)
            k = None if known is None else torch.as_tensor(known[[ep_idx[i] for i in idx]], device=r.device)
            loss = criterion(logits.float(), target, k)
            opt.zero_grad()
            loss.backward()
            opt.step()
            logged = loss.detach()
            if dist.enabled:  # the global batch's loss, not this rank's share of it
                torch.distributed.all_reduce(logged)
                logged = logged / dist.world_size
            losses.append(logged.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        scores = _predict_loader(model, val_loader, r.device)
        val_loss = _loss_of_scores(scores, yv)
        extra = {}
        if watch is not None:
            extra[f"{watch[0]}_loss"] = _loss_of_scores(_predict_loader(model, watch[1], r.device), watch[2])
        row = history.log(epoch, losses, val_loss, yv, scores, t, extra)
        if _close_epoch(epoch, row, scores, model, opt, None, gen, keeper, history, ckpt):
            break
    return keeper.restore_best(model)


def _sources_text(sources: list[dict]) -> str:
    if len(sources) < 2:
        return ""
    lines = ["Sources (validation and test posters come only from the first; the others only join training):", ""]
    for s in sources:
        dropped = (f"; {s['n_offered']} offered, {s['dropped_same_id']} dropped for an Id already used, "
                   f"{s['dropped_same_image']} for an identical image" if "n_offered" in s else "")
        unknown = f"; unknown (masked) genres: {', '.join(s['unknown_genres'])}" if s.get("unknown_genres") else ""
        lines.append(f"- `{s['name']}`: {s['n_posters']} posters{dropped}{unknown}")
    return "\n".join(lines) + "\n"


def _calibration_text(cfg: dict) -> str:
    cal = cfg.get("calibration")
    if not cal or cal.get("kind") == "identity":
        return "raw sigmoid outputs (not calibrated)."
    return (f"probabilities: per-genre {cal['kind']} calibration of the logits, fitted on the validation part "
            "(`ece` below is the expected calibration error over every poster x genre score, 15 bins).")


def model_card(cfg: dict) -> str:
    """MODEL.md: what the model is, how it was made, how well it did on validation."""
    vm, vt = cfg.get("validation_metrics", {}), cfg.get("validation_metrics_thresholds", {})
    r, d, b = cfg.get("recipe", {}), cfg.get("data", {}), cfg["backbone"]
    rows = "\n".join(f"| {k} | {vm.get(k, float('nan')):.4f} | {vt.get(k, float('nan')):.4f} |" for k in M.SUMMARY_KEYS)
    tm, tt = cfg.get("test_metrics"), cfg.get("test_metrics_thresholds", {})
    test_section = "" if not tm else (
        f"\n## Test metrics ({d.get('n_test')} held-out posters)\n"
        "Kept aside before training; nothing (epoch, thresholds, recipe choice) was tuned on them.\n\n"
        "| metric | top-3 | thresholds |\n|---|---|---|\n"
        + "\n".join(f"| {k} | {tm.get(k, float('nan')):.4f} | {tt.get(k, float('nan')):.4f} |" for k in M.SUMMARY_KEYS)
        + "\n"
    )
    cmd = (
        f"postergenre train --data {d.get('source') or 'DIR'} --out MODEL_DIR --backbone {r.get('backbone')} "
        f"--mode {r.get('mode')} --epochs {r.get('epochs')} --batch-size {r.get('batch_size')} --lr {r.get('lr')} "
        f"--head {r.get('head')} --hidden {r.get('hidden')} --dropout {r.get('dropout')} --loss {r.get('loss', 'bce')} "
        f"--weight-decay {r.get('weight_decay')} --patience {r.get('patience')} "
        f"--val-fraction {r.get('val_fraction')} --test-fraction {r.get('test_fraction', 0.0)} --seed {r.get('seed')}"
        + (f" --image-size {'x'.join(map(str, _size_pair(r['image_size'])))}" if r.get("image_size") else "")
        + "".join(f" --extra-data {s['name']}" for s in d.get("sources", [])[1:])
        + (f" --tail-blocks {r.get('tail_blocks')} --tail-epochs {r.get('tail_epochs')} --tail-lr {r.get('tail_lr')}"
           if r.get("mode") == "tail" else "")
        + f" --calibration {r.get('calibration', 'none')}"
    )
    return f"""# Model card: {cfg.get('name')}

Predicts a movie's genres ({len(cfg['genres'])} genres) from its poster. Multi-label: sigmoid scores per genre.

- Backbone: `{b['name']}` ({b['weight_source']}; weights {b['weights_origin']}, id `{b['weights_id']}`), mode `{cfg.get('mode')}`
- Input: whole poster resized to {cfg['preprocess']['size'][0]}x{cfg['preprocess']['size'][1]} (aspect squashed), normalised with mean {cfg['preprocess']['mean']} / std {cfg['preprocess']['std']}
- Head: `{cfg['head']['kind']}` (hidden {cfg['head'].get('hidden', 0)}, dropout {cfg['head'].get('dropout')})
- Genres: {', '.join(cfg['genres'])}
- Default decision: top-3 (the study's rule); `--decision thresholds` uses per-genre thresholds tuned for F1 on validation.
- Scores: {_calibration_text(cfg)}

## Training
```
{cmd}
```
Data: {d.get('n_posters')} labelled posters, {d.get('n_train')} train / {d.get('n_val')} validation / {d.get('n_test', 0)} test
(multi-label iterative stratification, seed {r.get('seed')}; split fingerprint `{d.get('split_fingerprint')}`).
{_sources_text(d.get('sources', []))}
Training time: {cfg.get('training_seconds')} s (feature extraction {cfg.get('feature_extraction_seconds')} s).
The best epoch by validation mAP is kept, so the validation figures are slightly optimistic.

## Validation metrics ({d.get('n_val')} posters not trained on)
| metric | top-3 | thresholds |
|---|---|---|
{rows}
{test_section}
`micro_recall_at_3` is our reading of the study's "accuracy": true genres found in the top 3 / all true genres.

## Limits
Trained on IMDb posters of mostly Hollywood films from 1980-2015; genres with few examples
(Reality-TV, News, Short, Western) are barely learnt. Posters from other eras or markets may score worse.
"""
