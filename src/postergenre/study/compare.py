"""Reproduce the study: train several backbones under one protocol and compare them.

Every backbone gets the same seeded multi-label-stratified train/test split (the study's
85/15). Each one is trained with :func:`postergenre.training.train.train` on the train part (which
splits off its own validation part for early stopping and thresholds) and evaluated on the
test part, which no choice saw. Each finished row is written at once (results.csv/.md), so an
interrupted run keeps what it finished and ``resume=True`` goes on with the rest.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


from ..backbones import WeightsUnavailable, build_backbone, get_spec
from ..data.dataset import PosterDataset, split_indices
from ..errors import UsageError
from ..inference.predict import evaluate_dataset, predict_paths, score_paths
from .._io import atomic_file
from ..modeling import metrics as M
from ..modeling.model import load_model
from ..training.train import Recipe, train

# The study's reported test "accuracy" (read as micro recall@3), by our backbone names.
STUDY_ACCURACY = {
    "resnet50": 0.6021,
    "vgg16": 0.5498,
    "inception_v3": 0.4627,
    "efficientnet_b0": 0.4519,
    "pixels": 0.23,
}

COLUMNS = [
    "backbone", "status", "weights", "test_micro_recall_at_3", "study_accuracy", "train_micro_recall_at_3",
    "test_precision_at_3", "test_mAP", "test_micro_f1", "test_macro_f1", "test_hamming_loss",
    "test_subset_accuracy", "train_seconds", "inference_posters_per_s", "epochs_run",
]


@dataclass
class CompareConfig:
    backbones: list[str]
    mode: str = "frozen"
    epochs: int | None = None
    batch_size: int = 33
    image_size: int | tuple[int, int] | None = None  # None: the backbone's own (frozen) / 350 (finetune)
    test_fraction: float = 0.15
    seed: int = 0
    weights: dict[str, str] = field(default_factory=dict)  # backbone -> local weights file
    allow_random_init: bool = False
    speed_posters: int = 64  # test posters timed end to end for the inference column


def _read_rows(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {r["backbone"]: r for r in csv.DictReader(f)}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)


def write_tables(out: Path, rows: dict[str, dict], cfg: CompareConfig, n_train: int, n_test: int) -> None:
    """results.csv (every column) and results.md (the side-by-side reading), both atomic."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for name in cfg.backbones:
        if name in rows:
            w.writerow({k: _fmt(rows[name].get(k)) for k in COLUMNS})
    atomic_file(out / "results.csv", buf.getvalue())

    def cell(r, k, pct=False):
        v = r.get(k)
        if v in (None, ""):
            return "-"
        return f"{float(v) * 100:.2f}%" if pct else f"{float(v):.3f}" if not k.endswith(("seconds", "per_s")) else f"{float(v):.1f}"

    lines = [
        f"# Study reproduction: {cfg.mode} mode, {n_train} train / {n_test} test posters (seed {cfg.seed})",
        "",
        "\"Accuracy\" is micro recall@3 (true genres in each poster's top 3 / all true genres), our",
        "reading of the study's undefined accuracy; the study's own figure stands beside ours.",
        "Test metrics at the top-3 rule. `train s` includes feature extraction only where the feature",
        "cache did not hold it yet; `posters/s` is end-to-end prediction (read, decode, model) on test posters.",
        "",
        "| backbone | test accuracy (ours) | study's accuracy | train accuracy | precision@3 | mAP | micro F1 | macro F1 | Hamming | subset acc. | train s | posters/s | weights |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in cfg.backbones:
        r = rows.get(name)
        if r is None:
            continue
        if r["status"] != "ok":
            why = f"none offline: pass `--weights {name}=FILE` or run online"
            lines.append(f"| {name} | {r['status']} | {cell(r, 'study_accuracy', True)} | - | - | - | - | - | - | - | - | - | {why} |")
            continue
        lines.append(
            f"| {name} | {cell(r, 'test_micro_recall_at_3', True)} | {cell(r, 'study_accuracy', True)} | "
            f"{cell(r, 'train_micro_recall_at_3', True)} | {cell(r, 'test_precision_at_3')} | {cell(r, 'test_mAP')} | "
            f"{cell(r, 'test_micro_f1')} | {cell(r, 'test_macro_f1')} | {cell(r, 'test_hamming_loss')} | "
            f"{cell(r, 'test_subset_accuracy')} | {cell(r, 'train_seconds')} | {cell(r, 'inference_posters_per_s')} | {r['weights']} |"
        )
    atomic_file(out / "results.md", "\n".join(lines) + "\n")


def _inference_speed(model_dir: Path, paths: list, n: int) -> float:
    """End-to-end posters/s (read, decode, resize, model, decision) on ``n`` posters."""
    model = load_model(model_dir)
    paths = paths[:n]
    list(predict_paths(model, paths[:8]))  # warm-up
    t = time.perf_counter()
    list(predict_paths(model, paths))
    return len(paths) / (time.perf_counter() - t)


def compare(
    dataset: PosterDataset,
    cfg: CompareConfig,
    out_dir: str | Path,
    cache_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    new_posters: list | None = None,
    log=print,
) -> dict[str, dict]:
    """Train and evaluate every backbone of ``cfg``; returns {backbone: row}. Writes results,
    figures and per-model directories (``models/<backbone>``) under ``out_dir``."""
    from . import report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_idx, test_idx = split_indices(dataset.labels, cfg.test_fraction, cfg.seed)
    rows = _start(out, cfg, dataset, train_idx, test_idx, resume)
    train_set, test_set = dataset.subset(train_idx), dataset.subset(test_idx)
    for name in cfg.backbones:
        get_spec(name)  # unknown names fail before any work
    for name in cfg.backbones:
        if name in rows and rows[name]["status"] == "ok":
            log(f"{name}: done already (resume)")
            continue
        rows[name] = _compare_one(name, cfg, train_set, test_set, out, cache_dir, progress, log)
        write_tables(out, rows, cfg, len(train_idx), len(test_idx))
    report.write_figures(out, [n for n in cfg.backbones if rows.get(n, {}).get("status") == "ok"],
                         rows, train_set, new_posters or [])
    return rows


def _start(out: Path, cfg: CompareConfig, dataset: PosterDataset, train_idx, test_idx, resume: bool) -> dict[str, dict]:
    """Record the run (compare.json); the rows of an interrupted run of the same split with ``resume``."""
    meta = {"config": asdict(cfg), "n_train": len(train_idx), "n_test": len(test_idx),
            "test_ids": [dataset.ids[i] for i in test_idx]}
    rows = _read_rows(out / "results.csv") if resume else {}
    if resume and (out / "compare.json").is_file():
        old = json.loads((out / "compare.json").read_text())
        if old.get("test_ids") != meta["test_ids"]:
            raise UsageError(f"{out}: --resume with a different split or dataset than the interrupted run")
    atomic_file(out / "compare.json", json.dumps(meta, indent=1) + "\n")
    return rows


def _compare_one(name: str, cfg: CompareConfig, train_set: PosterDataset, test_set: PosterDataset, out: Path,
                 cache_dir, progress: bool, log) -> dict:
    """Train backbone ``name`` under the protocol and score it: its row of the table."""
    study = STUDY_ACCURACY.get(name)
    weights = cfg.weights.get(name)
    try:
        origin = build_backbone(name, weights=weights, allow_random_init=cfg.allow_random_init).weights_origin
    except WeightsUnavailable as exc:
        log(f"{name}: skipped ({exc})")
        return {"backbone": name, "status": "no pretrained weights: not trained", "weights": str(exc), "study_accuracy": study}
    log(f"{name}: training ({cfg.mode}, weights: {origin})")
    # finetune: the study's own recipe (Adam, lr 1e-4, 350x350, no augmentation), not the poster recipe train defaults to
    recipe = Recipe(backbone=name, mode=cfg.mode, epochs=cfg.epochs, batch_size=cfg.batch_size, image_size=cfg.image_size,
                    seed=cfg.seed, weights=weights, allow_random_init=cfg.allow_random_init,
                    preset="study" if cfg.mode == "finetune" else None)
    model_dir = out / "models" / name
    t = time.time()
    model = train(train_set, recipe, model_dir, cache_dir=cache_dir, progress=progress, monitor=("test", test_set))
    seconds = time.time() - t
    m_test = evaluate_dataset(model, test_set, cache_dir=cache_dir)
    s_train, _ = score_paths(model, train_set.paths, cache_dir)
    atomic_file(model_dir / "test_metrics.json", json.dumps(m_test, indent=1) + "\n")
    log(f"{name}: test micro recall@3 {m_test['micro_recall_at_3']:.4f}, mAP {m_test['mAP']:.4f}")
    return {
        "backbone": name, "status": "ok",
        "weights": "random init" if origin == "random init" else get_spec(name).weight_source if origin == "package" else origin,
        "test_micro_recall_at_3": m_test["micro_recall_at_3"], "study_accuracy": study,
        "train_micro_recall_at_3": M.micro_recall_at_k(train_set.labels, s_train, 3),
        **{f"test_{k}": m_test[k] for k in ("precision_at_3", "mAP", "micro_f1", "macro_f1", "hamming_loss", "subset_accuracy")},
        "train_seconds": seconds,
        "inference_posters_per_s": _inference_speed(model_dir, test_set.paths, cfg.speed_posters),
        "epochs_run": len(json.loads((model_dir / "history.json").read_text())),
    }
