"""End-to-end batch prediction speed of a model: file read + decode + resize + model + decision.

    .venv/bin/python benchmarks/predict_throughput.py --images ../shared/datasets/movie-posters/Images \
        [--n 500] [--model default] [--engine auto] [--out benchmarks/results/predict_throughput.json]

Runs ``predict_paths`` (what ``postergenre predict`` runs) over the first N posters in name
order, after a short warm-up on other posters, and writes posters/s with the machine's facts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from postergenre.inference.scorer import load_scorer
from postergenre.inference.predict import iter_image_paths, predict_paths


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", required=True)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--engine", default="auto", choices=["auto", "torch", "onnx"])
    ap.add_argument("--out", default="benchmarks/results/predict_throughput.json")
    args = ap.parse_args()
    paths = list(iter_image_paths([args.images]))
    warm, paths = paths[-64:], paths[: args.n]
    t = time.perf_counter()
    model = load_scorer(args.model, args.engine)
    load_s = time.perf_counter() - t
    list(predict_paths(model, warm, batch_size=args.batch_size))
    t = time.perf_counter()
    results = list(predict_paths(model, paths, batch_size=args.batch_size))
    seconds = time.perf_counter() - t
    out = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model": model.name,
        "engine": type(model).__name__,
        "input_size": list(model.preprocess.size),
        "n_posters": len(results),
        "errors": sum(r["error"] is not None for r in results),
        "seconds": round(seconds, 2),
        "posters_per_s": round(len(results) / seconds, 2),
        "model_load_seconds": round(load_s, 2),
        "batch_size": args.batch_size,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "torch": torch.__version__,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
