"""Fitting a model's text branch (:mod:`postergenre.text.branch`) on the model's own split.

:func:`fit_text` reads every training and validation poster once with OCR (cached by image
content, resumable: an interrupted run keeps what it read), fits the evidence on the training
posters that have text, scores the validation posters with the image model, fits the fusion
there, and writes ``text.safetensors`` and ``config.json``'s ``text`` section into the model
directory, each atomically. The image branch is not touched: with text off the model scores
exactly as before. The recipe (:class:`TextRecipe`) holds every choice.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..data.dataset import PosterDataset
from ..errors import DatasetError
from ..modeling import metrics as M
from ..modeling.decision import top_k_mask
from ..modeling.scoring import score_images
from ..text.branch import TextBranch, fit_evidence, fit_fusion
from ..text.ngrams import CharNgrams
from ..text.ocr import OcrSettings, read_posters

TEST_FILE = "test_metrics_text.json"  # the test part with text off and on, when the split has one


@dataclass
class TextRecipe:
    """Every choice of the text branch (chosen by 5-fold cross-fitting on validation, docs/ablation)."""

    ocr: OcrSettings = field(default_factory=OcrSettings)
    ngram_range: tuple[int, int] = (2, 5)
    min_df: int = 2  # posters an n-gram must appear on
    C_ngrams: float = 4.0  # inverse L2 strength of the n-gram regressions
    embed: bool = True  # add the MiniLM sentence embedding's evidence
    C_embed: float = 1.0
    embed_weight: float = 0.5  # its evidence is added at this weight
    C_fusion: float = 0.3

    def to_dict(self) -> dict:
        return asdict(self) | {"ocr": self.ocr.to_dict()}


def image_scores(model, paths: list) -> np.ndarray:
    """The image model's calibrated scores ``(N, G)`` for ``paths`` (all must decode)."""
    scores, errors = score_images(model, paths)
    if errors:
        raise DatasetError(f"cannot score {len(errors)} poster(s), e.g. {next(iter(errors.values()))}")
    return scores


def _fit_branch(genres: list[str], train: PosterDataset, train_texts: list[str], r: TextRecipe, cache_dir, log) -> TextBranch:
    """The evidence in the columns of ``genres`` (the model's), fitted on ``train``'s posters with text."""
    keep = [i for i, t in enumerate(train_texts) if t.strip()]
    texts = [train_texts[i] for i in keep]
    labels, known = (a[keep] for a in train.labels_in(genres))
    log(f"text evidence: {len(keep)} of {len(train)} training posters have text")
    ngrams, matrix = CharNgrams.fit(texts, r.ngram_range, r.min_df)
    weights, bias = fit_evidence(matrix, labels, known, r.C_ngrams)
    branch = TextBranch(ngrams, weights.astype(np.float16).astype(np.float32), bias, np.zeros((labels.shape[1], 3)),
                        r.ocr, cache_dir=cache_dir)  # weights as saved (float16), so the fusion sees what inference sees
    if r.embed:
        we, be = fit_evidence(branch.embed(texts), labels, known, r.C_embed)
        branch.embed_weights, branch.bias = r.embed_weight * we, bias + r.embed_weight * be
    return branch


def _scored(model, y: np.ndarray, scores: np.ndarray) -> dict:
    return M.evaluate(y, scores, top_k_mask(scores, model.decision.k or 3), model.genres)


def fit_text(model_dir: str | Path, dataset: PosterDataset, recipe: TextRecipe = TextRecipe(), cache_dir=None,
             progress: bool = True, log=print, score_test: bool = False) -> dict:
    """Fit and save the text branch of the model in ``model_dir`` on its own split (split.json:
    the training Ids of every source, the validation Ids), all found in ``dataset``. Returns the
    metrics with text off and on: validation (on: the fusion was fitted there, so in sample) and,
    with ``score_test``, the test part, scored once at the end as ``train`` does."""
    from ..modeling.artifact import read_split
    from ..modeling.model import load_model

    model, parts = load_model(model_dir), read_split(model_dir)
    train_ids = list(parts["train"]) + [i for ids in parts.get("extra_train", {}).values() for i in ids]
    train, val = dataset.subset_ids(train_ids), dataset.subset_ids(parts["val"])
    t = time.time()
    texts = read_posters(train.paths + val.paths, recipe.ocr, cache_dir, progress=progress)
    ocr_seconds = time.time() - t
    branch = _fit_branch(model.genres, train, texts[:len(train)], recipe, cache_dir, log)
    val_texts = texts[len(train):]
    has = np.array([bool(x.strip()) for x in val_texts])
    (y, _), img = val.labels_in(model.genres), image_scores(model, val.paths)
    branch.fusion = fit_fusion(img[has], branch.evidence([x for x, h in zip(val_texts, has) if h]), y[has], recipe.C_fusion)
    report = {"text_off": _scored(model, y, img), "text_on": _scored(model, y, branch.combine(img, val_texts)),
              "posters_with_text": {"train": int(sum(bool(x.strip()) for x in texts[:len(train)])), "train_total": len(train),
                                    "val": int(has.sum()), "val_total": len(val)},
              "ocr_seconds": round(ocr_seconds, 1), "recipe": recipe.to_dict()}
    if score_test and parts.get("test"):
        test = dataset.subset_ids(parts["test"])
        (y, _), img = test.labels_in(model.genres), image_scores(model, test.paths)
        test_texts = read_posters(test.paths, recipe.ocr, cache_dir, progress=progress)
        report["test"] = {"text_off": _scored(model, y, img), "text_on": _scored(model, y, branch.combine(img, test_texts)),
                          "posters_with_text": int(sum(bool(x.strip()) for x in test_texts)), "n_posters": len(test)}
    save_text_branch(branch, model_dir, report)
    return report


def save_text_branch(branch: TextBranch, model_dir: str | Path, report: dict) -> None:
    """``text.safetensors`` first, then ``config.json`` (a crash in between leaves an image-only model)."""
    from .._io import atomic_file
    from ..modeling.artifact import CARD_FILE, read_config, write_config
    from ..modeling.card import model_card

    branch.save(model_dir)
    config = read_config(Path(model_dir))
    config.text = branch.config() | {"validation": {part: summary(report[part]) for part in ("text_off", "text_on")},
                                     "posters_with_text": report["posters_with_text"], "recipe": report["recipe"]}
    if "test" in report:
        config.text["test"] = {part: summary(report["test"][part]) for part in ("text_off", "text_on")}
        atomic_file(Path(model_dir) / TEST_FILE, json.dumps(report["test"], indent=1) + "\n")
    write_config(Path(model_dir), config)
    if config.training is not None:
        atomic_file(Path(model_dir) / CARD_FILE, model_card(config))


def summary(metrics: dict) -> dict:
    """The three figures the text section of config.json and the card keep."""
    return {k: metrics[k] for k in ("micro_recall_at_3", "mAP", "ece")}
