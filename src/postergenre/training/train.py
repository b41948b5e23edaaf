"""Training, read top to bottom: ``prepare -> fit -> finalize``.

:func:`prepare` seeds, splits (the test part first, never looked at until the model is final;
validation from the rest with seeded multi-label iterative stratification; extra sources only
join training) and builds the model. One of the fits runs the recipe's mode:

- ``frozen``: backbone features computed once (cached on disk), then a head on them;
- ``tail``: the same head, then the last block(s) tuned on cached feature maps (:mod:`.tail`);
- ``finetune``: the whole network on posters decoded once (:func:`~postergenre.training.finetune.fit_end_to_end`),
  with the poster recipe or the study's.

:func:`finalize` calibrates on validation, tunes the decision thresholds, scores validation
(and the test part, once) and writes the model directory with its history, split and card.
The recipe (:class:`~postergenre.training.recipe.Recipe`) holds every choice.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..backbones import build_backbone, get_spec
from ..backbones.features import extract_features, extract_features_sharded
from ..data.dataset import PosterDataset
from ..distributed import setup as setup_distributed
from ..errors import DatasetError, UsageError
from ..modeling import metrics as M
from ..modeling.card import model_card
from ..modeling.config import HeadConfig, TrainingRecord
from ..modeling.decision import DecisionRule, top_k_mask, tune_thresholds
from ..modeling.model import Ensemble, PosterGenreModel, build_head, new_config
from .checkpoint import Checkpoints
from .loops import Fit, Monitor, bce, fit_head, loss_of_scores
from .recipe import DEFAULT_BACKBONE, Recipe, finetune_plan, recipe_split, seed_everything, size_pair, split_fingerprint

__all__ = ["DEFAULT_BACKBONE", "Recipe", "Run", "checkpoint_dir", "finalize", "prepare", "split_fingerprint", "train"]


@dataclass(kw_only=True)
class Run(Fit):
    """One training run's state, shared by the fits and :func:`finalize`: what every loop needs
    (:class:`~postergenre.training.loops.Fit`: the resolved recipe, labels ``y`` ``(N, G)`` and
    ``known``, the split, generator, history, checkpoints, ranks) plus the model and the data."""

    model: PosterGenreModel
    dataset: PosterDataset
    test_idx: np.ndarray
    cache_dir: str | Path | None = None
    started: float = field(default_factory=time.time)
    extract_seconds: float = 0.0  # feature extraction, or decoding the posters (finetune)


def train(dataset: PosterDataset, recipe: Recipe, out_dir: str | Path, cache_dir: str | Path | None = None,
          progress: bool = True, split: tuple[np.ndarray, np.ndarray] | None = None, data_source: str = "",
          monitor: tuple[str, PosterDataset] | None = None, resume: bool = False, extra_reports: list | None = None,
          command: str | None = None) -> PosterGenreModel:
    """Train on ``dataset`` with ``recipe`` and save the model to ``out_dir``.

    ``dataset`` may join several sources (:func:`postergenre.data.dataset.add_extra`): validation and
    test posters come only from the primary one, the others only join training, and labels a
    source lacks (``dataset.known`` = 0) are left out of the loss.
    ``split`` (train indices, validation indices) overrides the recipe's seeded split (and its
    test part). With ``recipe.test_fraction`` the test part is scored once, after the model is
    final, into ``test_metrics.json`` and the model card.
    ``monitor=(name, other_dataset)`` logs that set's loss per epoch as ``<name>_loss`` in the
    history (for the study's loss curves); it never influences training or model selection.
    ``command``: the command line, recorded in the model card.

    Every epoch is checkpointed (atomically) next to ``out_dir`` in ``.<name>.checkpoints/``;
    ``resume=True`` continues from the newest one (the feature cache, filled incrementally,
    spares the extraction too). The checkpoints are removed once the model is saved.
    """
    run = prepare(dataset, recipe, out_dir, cache_dir, progress, split, resume)
    fit = {"frozen": fit_frozen, "tail": fit_tail_mode, "finetune": fit_finetune}[run.recipe.mode]
    val_scores, test_scores = fit(run, monitor) if run.recipe.mode != "tail" else fit(run)
    return finalize(run, val_scores, test_scores, out_dir, data_source, extra_reports or [], command)


def prepare(dataset: PosterDataset, recipe: Recipe, out_dir: str | Path, cache_dir=None, progress: bool = True,
            split: tuple[np.ndarray, np.ndarray] | None = None, resume: bool = False) -> Run:
    """Seed, split, build the model and open the run's checkpoints."""
    r = recipe.resolved()
    dist = setup_distributed(r.device)  # under torchrun: join the group; else single process, unchanged
    if dist.enabled and r.device.startswith("cuda"):
        r.device = f"cuda:{dist.local_rank}"
    gen = seed_everything(r.seed)  # the same seed on every rank: same split, same batch order
    if split is not None:
        train_idx, val_idx, test_idx = np.asarray(split[0]), np.asarray(split[1]), np.zeros(0, dtype=int)
    else:
        train_idx, val_idx, test_idx = recipe_split(dataset.labels, r, dataset.primary)
    known = None if dataset.known is None or dataset.known.all() else dataset.known.astype(np.float32)
    model = _build_model(r, dataset.genres)
    how = {"device": None, "workers": None, "compile": None, "micro_batch": None}  # how it runs, not what it computes
    run_id = json.dumps([asdict(r) | how, split_fingerprint(dataset.ids, train_idx, val_idx, test_idx),
                         model.backbone_info.weights_id, dataset.genres], sort_keys=True, default=str)
    ckpt = Checkpoints(checkpoint_dir(out_dir), hashlib.sha256(run_id.encode()).hexdigest()[:16], writer=dist.is_main)
    if not resume:
        ckpt.clear()
    dist.barrier()
    return Run(model=model, dataset=dataset, recipe=r, y=dataset.labels.astype(np.float32), known=known, train_idx=train_idx,
               val_idx=val_idx, test_idx=test_idx, gen=gen, ckpt=ckpt, dist=dist, cache_dir=cache_dir,
               progress=progress and dist.is_main)


def _build_model(r: Recipe, genres: list[str]) -> PosterGenreModel:
    spec = get_spec(r.backbone)
    size = size_pair(r.image_size) if r.image_size else spec.input_size
    backbone = build_backbone(r.backbone, weights=r.weights, input_size=size, allow_random_init=r.allow_random_init)
    head_cfg = HeadConfig(r.head, r.hidden if r.head == "mlp" else 0, r.dropout, r.heads)
    head = build_head(r.head, backbone.feature_dim, len(genres), r.hidden, r.dropout, r.heads)
    return PosterGenreModel(backbone, head, new_config(backbone, spec.preprocess(size), genres, head_cfg, r.mode))


# --- the fits: each returns (validation scores, test scores or None), before calibration ----------


def _extract(run: Run, paths: list | None = None, split: int | None = None) -> np.ndarray:
    t = time.time()
    feats, errors = extract_features_sharded(run.model.backbone_info, paths or run.dataset.paths, run.model.preprocess,
                                             run.dist, run.cache_dir, device=run.recipe.device, progress=run.progress,
                                             split=split)
    if errors:
        raise DatasetError(f"{len(errors)} image(s) could not be read, e.g. {next(iter(errors.values()))}")
    run.extract_seconds += time.time() - t
    return feats


def fit_frozen(run: Run, monitor: tuple[str, PosterDataset] | None = None):
    """Mode frozen: a head on cached backbone features."""
    feats = _extract(run)
    watch = None
    if monitor is not None:
        mfeats, _ = extract_features(run.model.backbone_info, monitor[1].paths, run.model.preprocess, run.cache_dir,
                                     device=run.recipe.device, progress=run.progress)
        mx, my = torch.as_tensor(mfeats, device=run.recipe.device), torch.as_tensor(monitor[1].labels.astype(np.float32), device=run.recipe.device)
        watch = Monitor(monitor[0], lambda head: bce(head(mx), my).item())
    val_scores = fit_heads(replace(run, monitor=watch), feats)
    test = run.model.predict_proba_features(feats[run.test_idx]) if len(run.test_idx) else None
    return val_scores, test


def fit_heads(run: Run, feats: np.ndarray) -> np.ndarray:
    """Fit the head (each member of an ensemble from its own seed); validation scores of the whole."""
    head, r = run.model.head, run.recipe
    if not isinstance(head, Ensemble):
        return fit_head(head, feats, run)
    t = time.time()
    for k, member in enumerate(head.members):  # a few minutes in all: not checkpointed
        fit_head(member, feats, replace(run, recipe=replace(r, seed=r.seed + k), gen=None, ckpt=None, phase=f"head {k + 1}"))
    with torch.no_grad():
        logits = head.eval()(torch.as_tensor(feats[run.val_idx]))
    scores = torch.sigmoid(logits).numpy()
    run.history.log(0, [], bce(logits, torch.as_tensor(run.y[run.val_idx])).item(), run.y[run.val_idx], scores, t,
                    {"phase": f"ensemble of {len(head.members)} heads"})
    return scores


def fit_tail_mode(run: Run):
    """Mode tail: the head on the pooled features, then the last blocks + head tuned on cached maps."""
    from ..backbones.features import row_layout
    from .tail import TailNet, fit_tail, tail_logits, tuned_prefixes

    r, model, module = run.recipe, run.model, run.model.backbone
    if not hasattr(module, "tail_modules"):
        raise UsageError(f"mode tail needs an EfficientNet-Lite backbone, not {r.backbone!r}")
    n_blocks = len(module.net._blocks)
    if not 0 <= r.tail_blocks <= n_blocks:  # 0: only the head convolution is tuned
        raise UsageError(f"--tail-blocks must be from 0 to {n_blocks}, not {r.tail_blocks}")
    split = n_blocks - r.tail_blocks
    rows = _extract(run, split=split)
    layout = row_layout(model.backbone_info, model.preprocess, split)
    fit_heads(run, rows[:, -layout["features"]:].astype(np.float32))
    net = TailNet(module, split, model.head)
    tail_ckpt = Checkpoints(run.ckpt.root / "tail", run.ckpt.fingerprint, writer=run.ckpt.writer)
    val_scores = fit_tail(net, rows, layout, replace(run, ckpt=tail_ckpt))
    model.config.backbone.tuned = tuned_prefixes(module, split)
    model.config.backbone.tail_blocks = r.tail_blocks
    test = None
    if len(run.test_idx):
        test = torch.sigmoid(torch.as_tensor(tail_logits(net, rows[run.test_idx], layout))).numpy()
    return val_scores, test


def fit_finetune(run: Run, monitor: tuple[str, PosterDataset] | None = None):
    """Mode finetune: the whole network on the posters, decoded once (cached by content and size)."""
    from .finetune import fit_end_to_end, score_rows

    r, model = run.recipe, run.model
    pixels = _decoded(run, run.dataset.paths)
    precision, device, batch = finetune_plan(r).precision, torch.device(r.device), 2 * (r.micro_batch or r.batch_size)

    def scores(module, px, rows) -> np.ndarray:
        plain, mirrored = score_rows(module, px, rows, model.preprocess, precision, device, batch, r.mirror_eval)
        return plain if mirrored is None else mirrored

    watch = None
    if monitor is not None:
        mpixels, my = _decoded(run, monitor[1].paths), monitor[1].labels.astype(np.float32)
        watch = Monitor(monitor[0], lambda m: loss_of_scores(scores(m, mpixels, np.arange(len(my))), my))
    val_scores = fit_end_to_end(model, pixels, replace(run, monitor=watch))
    if not len(run.test_idx):
        return val_scores, None
    test = scores(precision.module(model.to(device)), pixels, run.test_idx)  # the model as kept, once it is final
    model.cpu()
    return val_scores, test


def _decoded(run: Run, paths: list) -> np.ndarray:
    """Every poster of ``paths`` decoded once at the model's input size, uint8 ``(N, H, W, 3)``."""
    from ..data.pixel_cache import decoded_pixels

    t = time.time()
    pixels, errors = decoded_pixels(paths, run.model.preprocess, cache_dir=run.cache_dir, workers=run.recipe.workers,
                                    progress=run.progress)
    if errors:
        raise DatasetError(f"{len(errors)} image(s) could not be read, e.g. {next(iter(errors.values()))}")
    run.extract_seconds += time.time() - t
    return pixels


# --- finalize ---------------------------------------------------------------------------


def _logits(scores: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(scores, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def _calibrate(model: PosterGenreModel, y_val: np.ndarray, val_scores: np.ndarray, kind: str) -> np.ndarray:
    """Fit the per-genre calibration on the validation part; returns the calibrated validation scores."""
    from ..modeling.calibration import fit_platt, fit_temperature

    if kind == "none":
        return val_scores
    z = _logits(val_scores)
    cal = (fit_platt if kind == "platt" else fit_temperature)(z, y_val)
    model.set_calibration(cal)
    return cal.probabilities(z)


def _scored(model: PosterGenreModel, y: np.ndarray, scores: np.ndarray, genres: list[str]) -> tuple[dict, dict]:
    """All metrics under the model's rule (top-3) and under its tuned thresholds."""
    return (M.evaluate(y, scores, model.decision.apply(scores), genres),
            M.evaluate(y, scores, model.decision_rule("thresholds").apply(scores), genres))


def finalize(run: Run, val_scores: np.ndarray, test_scores: np.ndarray | None, out_dir: str | Path,
             data_source: str = "", extra_reports: list = (), command: str | None = None) -> PosterGenreModel:
    """Calibrate, tune the decision rules, score validation (and test, once), write the model."""
    model, y, r, genres = run.model, run.y, run.recipe, run.dataset.genres
    yv = y[run.val_idx]
    raw_val = M.evaluate(yv, val_scores, top_k_mask(val_scores, 3), genres)
    val_scores = _calibrate(model, yv, val_scores, r.calibration)
    if test_scores is not None and model.config.calibration:
        test_scores = model.calibration.probabilities(_logits(test_scores))
    model.config.decision = DecisionRule("top_k", 3, tune_thresholds(yv, val_scores))
    val_metrics, val_thr = _scored(model, yv, val_scores, genres)
    parts = {"train": run.train_idx, "val": run.val_idx} | ({"test": run.test_idx} if len(run.test_idx) else {})
    summary = lambda m: {k: m[k] for k in M.SUMMARY_KEYS}  # noqa: E731
    record = TrainingRecord(recipe=asdict(r), data=_data_record(run.dataset, parts, data_source, list(extra_reports)),
                            validation_metrics=summary(val_metrics), validation_metrics_thresholds=summary(val_thr),
                            validation_metrics_uncalibrated=summary(raw_val), command=command,
                            training_seconds=round(time.time() - run.started, 1),
                            feature_extraction_seconds=round(run.extract_seconds, 1))
    files = {"history.csv": run.history.to_csv(), "history.json": json.dumps(run.history.epochs, indent=1),
             "iterations.csv": run.history.iterations_csv(), "split.json": json.dumps(_split_record(run.dataset, parts)),
             "validation_metrics.json": json.dumps(val_metrics, indent=1)}
    if test_scores is not None:
        test_metrics, test_thr = _scored(model, y[run.test_idx], test_scores, genres)
        record.test_metrics, record.test_metrics_thresholds = summary(test_metrics), summary(test_thr)
        files["test_metrics.json"] = json.dumps(test_metrics, indent=1)
    model.config.training = record
    if run.dist.is_main:
        model.save(out_dir, card=model_card(model.config), extra_files=files)
        run.ckpt.clear()  # the tail phase's checkpoints live inside its root: gone too
    run.dist.barrier()
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
