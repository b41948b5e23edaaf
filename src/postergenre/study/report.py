"""The study's figures, from a compare run's per-model histories and models.

- ``loss_per_epoch.png``: train and test loss per epoch, one colour per model (study fig. 8);
- ``loss_per_iteration.png``: training loss per iteration (study fig. 9);
- ``batch_grid.png``: one training batch as the model sees it, with its genres (fig. 3);
- ``predictions.png``: new posters with their top genres and scores (figs. 1 and 7).

(The reliability diagram of any set of scores is :func:`postergenre.modeling.reliability.reliability_diagram`.)
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..data.images import ImageLoadError, load_rgb  # noqa: E402
from .._io import atomic_png  # noqa: E402
from ..modeling.model import load_model  # noqa: E402


def loss_per_epoch(out: Path, names: list[str]) -> None:
    fig, ax = plt.subplots(figsize=(9, 5))
    colours = plt.cm.tab10.colors
    for i, name in enumerate(names):
        hist = json.loads((out / "models" / name / "history.json").read_text())
        ep = [h["epoch"] for h in hist]
        c = colours[i % len(colours)]
        ax.plot(ep, [h["train_loss"] for h in hist], color=c, label=f"{name} train")
        if "test_loss" in hist[0]:
            ax.plot(ep, [h["test_loss"] for h in hist], color=c, linestyle="--", label=f"{name} test")
    ax.set(title="Loss per epoch (solid: train, dashed: test)", xlabel="epoch", ylabel="binary cross-entropy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="upper right")
    atomic_png(out / "loss_per_epoch.png", fig)


def loss_per_iteration(out: Path, names: list[str]) -> None:
    fig, ax = plt.subplots(figsize=(9, 5))
    for name in names:
        lines = (out / "models" / name / "iterations.csv").read_text().splitlines()[1:]
        loss = np.array([float(l.split(",")[1]) for l in lines])
        # A moving average keeps the curves readable; the raw values are in iterations.csv.
        k = max(1, min(25, len(loss) // 20))
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(len(smooth)) + k, smooth, label=name, linewidth=1)
    ax.set(title="Training loss per iteration (moving average)", xlabel="iteration (batch)", ylabel="binary cross-entropy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    atomic_png(out / "loss_per_iteration.png", fig)


def batch_grid(out: Path, model_dir: Path, train_set, batch_size: int = 33, seed: int = 0) -> None:
    """The first training batch of a seeded shuffle, preprocessed as the model sees it."""
    model = load_model(model_dir)
    pp = model.preprocess
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(train_set))[: min(batch_size, len(train_set))]
    cols = 11 if len(idx) > 11 else len(idx)
    rows = int(np.ceil(len(idx) / cols))
    aspect = pp.size[0] / pp.size[1]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * (1.6 * aspect + 0.6)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, idx):
        ax.imshow(pp.unnormalize(pp.load(train_set.paths[i])))
        genres = [g for g, v in zip(train_set.genres, train_set.labels[i]) if v]
        ax.set_title("\n".join(genres), fontsize=6.5)
    fig.suptitle(f"One training batch ({len(idx)} posters at {pp.size[0]}x{pp.size[1]}, as {model.name} sees them)")
    atomic_png(out / "batch_grid.png", fig)


def predictions(out: Path, model_dir: Path, posters: list, top: int = 3) -> None:
    model = load_model(model_dir)
    items = []
    for p in posters:
        try:
            items.append((Path(p).name, load_rgb(p)))
        except ImageLoadError:
            continue
    if not items:
        return
    scores = model.predict_proba([im for _, im in items])
    fig, axes = plt.subplots(1, len(items), figsize=(4.2 * len(items), 5.2), squeeze=False)
    for ax, (name, im), s in zip(axes[0], items, scores):
        order = np.argsort(-s)[:top]
        ax.imshow(im)
        ax.axis("off")
        ax.set_title(name + "\n" + " / ".join(model.genres[g] for g in order), fontsize=10)
        ax.text(0.5, -0.04, "   ".join(f"{model.genres[g]} {s[g]:.2f}" for g in order), transform=ax.transAxes,
                ha="center", va="top", fontsize=8.5)
    fig.suptitle(f"Prediction of new posters ({model.name}, top {top})")
    atomic_png(out / "predictions.png", fig)


def write_figures(out: Path, names: list[str], rows: dict, train_set, new_posters: list) -> None:
    """All four figures; the poster figures use the best model by test micro recall@3."""
    if not names:
        return
    loss_per_epoch(out, names)
    loss_per_iteration(out, names)
    best = max(names, key=lambda n: float(rows[n]["test_micro_recall_at_3"]))
    batch_grid(out, out / "models" / best, train_set)
    if new_posters:
        predictions(out, out / "models" / best, new_posters)
