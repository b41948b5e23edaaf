"""Cheaper OCR settings against the text branch's gain (issue 21): each setting reads the validation
posters (and, with ``--score-test``, the test part, once the setting is chosen), and the built-in
model's text branch, as fitted on the default setting's text, fuses what it read.

    .venv/bin/python benchmarks/ocr_settings.py --data ../shared/datasets/movie-posters \
        [--settings default,rec160b1] [--score-test] [--out benchmarks/results/ocr_settings.json]

Per setting: OCR core-seconds per poster (the sum of each poster's reading time, one ONNX thread
per worker process), the share of posters with text, and micro recall@3 / mAP of the fused
scores (text off: the image branch alone). OCR results go to the normal OCR cache, one folder
per setting, so a rerun only scores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from postergenre.data.dataset import load_dataset
from postergenre.inference.predict import score_paths
from postergenre.inference.scorer import load_scorer, load_text_reader
from postergenre.modeling import metrics as M
from postergenre.modeling.artifact import read_split
from postergenre.text.ocr import OcrCache, OcrSettings, read_posters

HERE = Path(__file__).resolve().parent
SETTINGS = {  # name: changes to the built-in model's OCR setting
    "default": {},
    "nocls": {"use_cls": False},
    "rec320b1": {"rec_batch": 1},
    "rec160b1": {"rec_width": 160, "rec_batch": 1},
    "rec160b1-nocls": {"rec_width": 160, "rec_batch": 1, "use_cls": False},
}


def figures(y: np.ndarray, scores: np.ndarray) -> dict:
    return {"micro_recall_at_3": round(M.micro_recall_at_k(y, scores, 3), 4), "mAP": round(M.macro_average_precision(y, scores), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--score-test", action="store_true", help="also score the test part (only once a setting is chosen)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "ocr_settings.json")
    a = ap.parse_args()
    scorer, reader = load_scorer("default", "onnx"), load_text_reader("default")
    base = reader.branch.ocr
    parts, (ds, _) = read_split("default"), load_dataset(a.data)
    out = {"command": "python benchmarks/ocr_settings.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()
                                                                      if k in ("data", "settings")), "rows": []}
    for part in ["val"] + (["test"] if a.score_test else []):
        subset = ds.subset_ids(parts[part])
        y, _ = subset.labels_in(scorer.genres)
        image, _ = score_paths(scorer, subset.paths)
        out[f"{part}_text_off"] = figures(y, image)
        for name in a.settings.split(","):
            settings = dataclasses.replace(base, **SETTINGS[name])
            t = time.time()
            texts = read_posters(subset.paths, settings, progress=True)
            cache = OcrCache(settings)
            seconds = [cache.get(d)["seconds"] for d in map(_digest, subset.paths)]
            reader.branch.ocr = settings
            row = {"part": part, "setting": name, "key": settings.key, "n": len(subset),
                   "ocr_core_s_per_poster": round(float(np.mean(seconds)), 4), "wall_s_this_run": round(time.time() - t, 1),
                   "with_text": round(float(np.mean([bool(x) for x in texts])), 3)} | figures(y, reader.combine(image, texts))
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")


def _digest(path) -> str:
    from postergenre.data.images import file_digest

    return file_digest(Path(path).read_bytes())


if __name__ == "__main__":
    main()
