"""Cheaper OCR settings against the text branch's gain (issue 21): each setting reads the validation
posters (and, with ``--score-test``, the test part, once the setting is chosen), and the built-in
model's text branch, as fitted on the default setting's text, fuses what it read.

    .venv/bin/python benchmarks/ocr_settings.py --data ../shared/datasets/movie-posters \
        [--settings default,rec160b1] [--score-test] [--engine onnx|auto] [--speed 100] [--out benchmarks/results/ocr_settings.json]

Per setting: OCR core-seconds per poster (the sum of each poster's reading time, one ONNX thread
per worker process), the share of posters with text, and micro recall@3 / mAP of the fused
scores (text off: the image branch alone). OCR results go to the normal OCR cache, one folder
per setting, so a rerun only scores. ``--speed N``: also the reading time of N study posters in
one process on one ONNX thread, setting after setting (nothing else should run then), with
RapidOCR's own recognizer beside the lean copy (text/ocr_models.py).
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
SETTINGS = {  # name: the recognizer's setting (the detector stays the model's)
    "default": {"rec_width": 320, "rec_batch": 6, "use_cls": True},  # RapidOCR's defaults, the text branch's first setting
    "nocls": {"rec_width": 320, "rec_batch": 6, "use_cls": False},
    "rec320b1": {"rec_width": 320, "rec_batch": 1, "use_cls": True},
    "rec160b1": {"rec_width": 160, "rec_batch": 1, "use_cls": True},
    "rec160b1-nocls": {"rec_width": 160, "rec_batch": 1, "use_cls": False},  # the built-in model's since issue 21
}


def figures(y: np.ndarray, scores: np.ndarray) -> dict:
    return {"micro_recall_at_3": round(M.micro_recall_at_k(y, scores, 3), 4), "mAP": round(M.macro_average_precision(y, scores), 4)}


def speed_rows(images: Path, n: int, names: list[str], base: OcrSettings) -> list[dict]:
    from rapidocr_onnxruntime import RapidOCR

    from postergenre.data.images import load_rgb
    from postergenre.text.ocr import OcrReader

    posters = [load_rgb(p.read_bytes()) for p in sorted(images.glob("*.jpg"))[5::60][:n]]
    original = RapidOCR(det_limit_side_len=base.det_limit_side_len, det_limit_type=base.det_limit_type,
                        intra_op_num_threads=1, inter_op_num_threads=1)
    readers = {"default, RapidOCR's own recognizer": lambda im: original(np.asarray(im))}
    readers |= {name: OcrReader(dataclasses.replace(base, **SETTINGS[name]), threads=1).read_image for name in names}
    rows = []
    for name, read in readers.items():
        read(posters[0])  # builds the engine (and the lean copy) outside the timing
        t = time.perf_counter()
        for im in posters:
            read(im)
        rows.append({"setting": name, "n": len(posters), "core_s_per_poster": round((time.perf_counter() - t) / len(posters), 4)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--score-test", action="store_true", help="also score the test part (only once a setting is chosen)")
    ap.add_argument("--engine", default="onnx", help="the image branch's engine: onnx (fp32, as the fusion was fitted) or auto (the default)")
    ap.add_argument("--speed", type=int, default=0, help="also time N posters, one setting after another")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "ocr_settings.json")
    a = ap.parse_args()
    scorer, reader = load_scorer("default", a.engine), load_text_reader("default")
    base = reader.branch.ocr
    speed = speed_rows(a.data / "Images", a.speed, a.settings.split(","), base) if a.speed else []
    parts, (ds, _) = read_split("default"), load_dataset(a.data)
    out = {"engine": scorer.engine, "command": "python benchmarks/ocr_settings.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()
                                                                      if k in ("data", "settings", "speed", "engine"))
                      + (" --score-test" if a.score_test else ""), "rows": []}
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
    out["speed_one_thread"] = speed
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")


def _digest(path) -> str:
    from postergenre.data.images import file_digest

    return file_digest(Path(path).read_bytes())


if __name__ == "__main__":
    main()
