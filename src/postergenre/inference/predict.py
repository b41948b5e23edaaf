"""Batch prediction over files and folders (one result per input, errors included) and
evaluation on a labelled dataset.

Results come out in input order as plain dicts (the JSON of ``postergenre predict``):
``{"path", "genres": [{"genre", "score"}, ... all genres by score], "predicted": [...], "error"}``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..data.images import IMAGE_EXTENSIONS, decoded_batches
from ..errors import DatasetError, UsageError
from ..modeling.decision import DecisionRule
from ..modeling.scoring import score_images
from .formats import result


def iter_image_paths(inputs: Iterable[str | Path]) -> Iterator[Path]:
    """Files as given (any extension), folders walked recursively for image files, in sorted
    order. Symlinked folders are not followed, so a link loop cannot trap the walk."""
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for root, dirs, files in os.walk(p, followlinks=False):
                dirs.sort()
                for f in sorted(files):
                    if Path(f).suffix.lower() in IMAGE_EXTENSIONS and not f.startswith("."):
                        yield Path(root) / f
        else:
            yield p  # a missing or unreadable file gets its error from the loader


# 8 runs as fast as 32 on 2 cores, with ONNX Runtime's arena at a third of the memory (docs/performance.md).
PREDICT_BATCH = 8
BLOCK = 2048  # paths per loader: bounds memory on any number of inputs


def _files_to_do(inputs: Iterable[str | Path], skip: set[str] | None, shard: tuple[int, int] | None) -> Iterator[str]:
    walk = iter_image_paths(inputs)
    if shard is not None:
        walk = itertools.islice(walk, shard[0], None, shard[1])
    return (str(p) for p in walk if not skip or str(p) not in skip)


def count_images(inputs: Iterable[str | Path], skip: set[str] | None = None, shard: tuple[int, int] | None = None) -> int:
    """How many files :func:`predict_paths` will yield for the same arguments (a walk, no decoding:
    the total of a progress bar)."""
    return sum(1 for _ in _files_to_do(inputs, skip, shard))


def predict_paths(
    model,
    inputs: Iterable[str | Path],
    decision: DecisionRule | None = None,
    batch_size: int = PREDICT_BATCH,
    workers: int | None = None,
    skip: set[str] | None = None,
    shard: tuple[int, int] | None = None,
    text=None,
) -> Iterator[dict]:
    """Predict every image under ``inputs``; yields one result dict per file, in order.

    ``model``: a :class:`PosterGenreModel` or an :class:`~postergenre.inference.onnx_engine.OnnxModel`.
    The file list is streamed in blocks of :data:`BLOCK` (decoded in parallel by loader
    workers), so memory does not grow with the number of inputs. Paths in ``skip`` are left out.
    ``shard=(i, n)``: only the files at positions i, i + n, ... of the sorted walk, so n workers
    split a catalogue without overlap. ``text``: a :class:`~postergenre.inference.scorer.TextReader`
    (the model's text branch): each poster is read with OCR and its scores fused with its text.
    """
    decision = decision or model.decision
    genres = model.genres
    paths_iter = _files_to_do(inputs, skip, shard)
    while block := list(itertools.islice(paths_iter, BLOCK)):
        # OCR's worker processes read the block ahead while the image model scores it; each batch
        # waits only for its own posters' text, so rows stream out as posters are read.
        texts = text.stream(block) if text is not None else itertools.repeat(None)
        with contextlib.closing(texts) if text is not None else contextlib.nullcontext():
            for idx, scores, errors in _scored_batches(model, block, batch_size, workers):
                chunk = sorted([*idx, *errors])
                read = dict(zip(chunk, texts))  # the batch's posters are consecutive: the next len(chunk) texts
                if text is not None and len(scores):
                    scores = text.combine(scores, [read[i] for i in idx])
                masks = decision.apply(scores) if len(scores) else scores.astype(bool)
                by_index = {i: (s, m) for i, s, m in zip(idx, scores, masks)}
                for i in chunk:
                    if i in errors:
                        yield result(block[i], None, None, genres, errors[i])
                    else:
                        yield result(block[i], *by_index[i], genres, text=read[i])


def _scored_batches(model, block: list, batch_size: int, workers: int | None) -> Iterator[tuple]:
    """``(indices, image scores (B, G), {index: error})`` for each decoded batch of ``block``."""
    for idx, batch, errors in decoded_batches(block, model.preprocess, batch_size, workers):
        yield idx, model.predict_proba_tensor(batch) if batch is not None else np.zeros((0, len(model.genres))), errors


def score_paths(model, paths: list, cache_dir=None, progress: bool = False) -> tuple[np.ndarray, dict[int, str]]:
    """Scores ``(N, G)`` and ``{index: error}`` for many files. A frozen PyTorch model goes
    through the feature cache, so evaluating on the posters it was trained on costs no
    extraction; any other model (an :class:`~postergenre.inference.onnx_engine.OnnxModel` too) scores images."""
    if model.engine == "torch" and model.config.mode == "frozen":
        from ..backbones.features import extract_features

        feats, errors = extract_features(model.backbone_info, paths, model.preprocess, cache_dir, progress=progress)
        return model.predict_proba_features(feats), errors
    return score_images(model, paths)


def evaluate_dataset(model, dataset, decision: DecisionRule | None = None, cache_dir=None, progress: bool = False,
                     reliability_png: str | Path | None = None, text=None) -> dict:
    """All metrics (see :func:`postergenre.modeling.metrics.evaluate`) of ``model`` on every poster of
    ``dataset``; the dataset's genres are matched to the model's by name. With ``reliability_png``,
    also draws the reliability diagram of the scores there. ``text``: a
    :class:`~postergenre.inference.scorer.TextReader`, to score with the posters' text fused in."""
    from ..modeling.metrics import evaluate

    y, _ = dataset.labels_in(model.genres)
    scores, errors = score_paths(model, dataset.paths, cache_dir, progress)
    if errors:
        raise DatasetError(f"{len(errors)} image(s) could not be read, e.g. {next(iter(errors.values()))}")
    if text is not None:
        scores = text.combine(scores, text.read(dataset.paths))
    if reliability_png is not None:
        from .._io import writing
        from ..modeling.reliability import reliability_diagram

        with writing(reliability_png):
            reliability_diagram(y, scores, reliability_png, title=f"{model.name} on {len(dataset)} posters")
    return evaluate(y, scores, (decision or model.decision).apply(scores), model.genres)


def evaluate_model(model: str | Path | None = "default", data: str | Path | None = None, labels: str | Path | None = None,
                   images: str | Path | None = None, *, decision: str | None = None, top_k: int | None = None,
                   engine: str = "auto", cache_dir: str | Path | None = None, skip_bad: bool = False,
                   only_split: str | None = None, progress: bool = False, reliability_png: str | Path | None = None,
                   text: bool = False) -> dict:
    """``postergenre evaluate`` as one call: load the dataset (``data`` folder, or ``labels`` +
    ``images``) and the scorer, keep only the ``only_split`` part of the model's own split
    (``split.json``: train, val or test) if asked, and return :func:`evaluate_dataset`'s metrics
    under the model's decision rule with ``decision``/``top_k`` overridden where given.
    ``text``: fuse each poster's OCR text into its scores (the model's text branch)."""
    from ..data.dataset import load_dataset
    from .scorer import load_scorer, load_text_reader

    reader = load_text_reader(model, cache_dir) if text else None

    dataset, _ = load_dataset(data, labels, images, skip_bad=skip_bad)
    scorer = load_scorer(model, engine, cache_dir=cache_dir, features=True)
    if only_split:
        from ..modeling.model import read_split

        parts = read_split(model)
        if only_split not in parts:
            raise UsageError(f"--only-split must be one of {', '.join(parts)} (the parts in the model's split.json), not {only_split!r}")
        dataset = dataset.subset_ids(parts[only_split])
    return evaluate_dataset(scorer, dataset, scorer.decision_rule(decision, top_k), cache_dir, progress=progress,
                            reliability_png=reliability_png, text=reader)
