"""Choosing the text branch on validation only: each variant's evidence is fitted on the built-in
model's training posters, its fusion cross-fitted on validation (5 folds: each fold's scores come
from a fusion fitted on the other four), and the out-of-fold validation scores are compared with
the image alone. The test part is never read here.

    .venv/bin/python benchmarks/text_ablation.py --data ../shared/datasets/movie-posters \
        --extra-data ~/.cache/postergenre-data/extra-posters [--out benchmarks/results/text_ablation.json]

The OCR text comes from the OCR cache (``postergenre train-text`` fills it; any poster not in it
is read now).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import KFold

from postergenre.data.dataset import load_dataset
from postergenre.inference.scorer import load_scorer
from postergenre.modeling import metrics as M
from postergenre.modeling.artifact import read_split
from postergenre.modeling.scoring import score_images
from postergenre.text.branch import fit_evidence, fit_fusion, fuse
from postergenre.text.embedding import TextEmbedder
from postergenre.text.ngrams import CharNgrams
from postergenre.text.ocr import OcrSettings, read_posters

HERE = Path(__file__).resolve().parent


def posters(data: Path, extra: Path, parts: dict):
    primary, _ = load_dataset(data)
    other, _ = load_dataset(extra)
    train = primary.subset_ids(parts["train"])
    extra_train = other.subset_ids(parts["extra_train"][extra.name])
    return train, extra_train, primary.subset_ids(parts["val"])


def cross_fitted(img: np.ndarray, z: np.ndarray, y: np.ndarray, has: np.ndarray, C: float) -> np.ndarray:
    out = img.copy()
    idx = np.flatnonzero(has)
    for a, b in KFold(5, shuffle=True, random_state=0).split(idx):
        out[idx[b]] = fuse(img[idx[b]], z[idx[b]], fit_fusion(img[idx[a]], z[idx[a]], y[idx[a]], C))
    return out


def row(name: str, y: np.ndarray, scores: np.ndarray, **extra) -> dict:
    r = {"variant": name, "micro_recall_at_3": M.micro_recall_at_k(y, scores, 3), "mAP": M.macro_average_precision(y, scores),
         "ece": M.expected_calibration_error(y, scores)} | extra
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
    return r


VARIANTS = [  # (name, n-gram C, embedding weight (0: none), fusion C)
    ("ngrams", 4.0, 0.0, 0.3),
    ("embedding", 4.0, -1.0, 0.3),  # -1: the embedding alone
    ("ngrams + 0.5 embedding", 4.0, 0.5, 0.3),
    ("ngrams + 1.0 embedding", 4.0, 1.0, 0.3),
    ("ngrams + 0.5 embedding, fusion C 1", 4.0, 0.5, 1.0),
    ("ngrams C 1 + 0.5 embedding", 1.0, 0.5, 0.3),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--extra-data", required=True, type=Path)
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "text_ablation.json")
    a = ap.parse_args()
    parts = read_split(a.model)
    train, extra_train, val = posters(a.data, a.extra_data.expanduser(), parts)
    scorer = load_scorer(a.model)
    y, _ = val.labels_in(scorer.genres)
    img, _ = score_images(scorer, val.paths)
    t = time.time()
    texts = read_posters(train.paths + extra_train.paths + val.paths, OcrSettings(), progress=True)
    n_train = len(train) + len(extra_train)
    train_texts, val_texts = texts[:n_train], texts[n_train:]
    labels = np.concatenate([train.labels_in(scorer.genres)[0], extra_train.labels_in(scorer.genres)[0]])
    keep = [i for i, x in enumerate(train_texts) if x.strip()]
    has = np.array([bool(x.strip()) for x in val_texts])
    fit_texts = [train_texts[i] for i in keep]
    embedder = TextEmbedder()
    emb_train, emb_val = embedder.encode(fit_texts), embedder.encode(val_texts)
    rows = [row("image only", y, img)]
    result = {"n_train": n_train, "n_train_with_text": len(keep), "n_val": len(val), "n_val_with_text": int(has.sum()),
              "read_seconds": round(time.time() - t, 1)}
    we, be = fit_evidence(emb_train, labels[keep], C=1.0)
    ngrams, matrix = CharNgrams.fit(fit_texts, (2, 5), 2)
    by_c: dict[float, np.ndarray] = {}
    for name, c_ngrams, w, c_fusion in VARIANTS:
        if c_ngrams not in by_c:
            wc, bc = fit_evidence(matrix, labels[keep], C=c_ngrams)
            by_c[c_ngrams] = ngrams.dot(val_texts, wc.astype(np.float16).astype(np.float32)) + bc
        z = by_c[c_ngrams]
        z = emb_val @ we + be if w < 0 else z + w * (emb_val @ we + be)
        rows.append(row(name, y, cross_fitted(img, z, y, has, c_fusion), vocabulary=len(ngrams.vocabulary)))
    result["rows"] = rows
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
