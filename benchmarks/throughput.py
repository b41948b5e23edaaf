"""Batch prediction speed, side by side in ONE run on the same posters.

    .venv/bin/python benchmarks/throughput.py --images ../shared/datasets/movie-posters/Images \
        [--n 500] [--latency-n 30] [--out benchmarks/results/throughput.json]

Configurations, each measured end to end (file read + decode + resize + model + top-3 decision),
all decoding with the same loader (2 worker processes):

- ``study``: the study's configuration, PyTorch eager ResNet50 at 350x350, batch 33 (random
  weights: speed does not depend on them; torchvision's ImageNet weights need the network).
- ``default-torch``: the built-in model with the PyTorch engine, batch 32.
- ``default-onnx``: the built-in model with the ONNX Runtime engine, batch 32.

Also the single-poster latency (p50/p90 over ``--latency-n`` posters: one file in, its genres
out, no batching, no worker processes). Writes a JSON with the machine's core count and every
configuration's ratio to the study's posters/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from postergenre.backbones import IMAGENET_MEAN, IMAGENET_STD
from postergenre.modeling.decision import DecisionRule
from postergenre.data.images import Preprocess
from postergenre.inference.scorer import load_scorer
from postergenre.inference.predict import iter_image_paths, predict_paths


class StudyModel:
    """ResNet50 + 25-way sigmoid head at 350x350, run eagerly: what the study trained and ran."""

    def __init__(self, n_genres: int):
        import torchvision

        net = torchvision.models.resnet50(weights=None)
        net.fc = torch.nn.Linear(net.fc.in_features, n_genres)
        self.net = net.eval()
        self.genres = [f"g{i}" for i in range(n_genres)]
        self.preprocess = Preprocess((350, 350), IMAGENET_MEAN, IMAGENET_STD)
        self.decision = DecisionRule("top_k", 3)
        self.engine = "torch"

    @torch.inference_mode()
    def predict_proba_tensor(self, batch: torch.Tensor) -> np.ndarray:
        return torch.sigmoid(self.net(torch.as_tensor(batch))).numpy()


def batch_speed(model, paths, batch_size: int) -> dict:
    list(predict_paths(model, paths[:batch_size], batch_size=batch_size))  # warm-up
    t = time.perf_counter()
    results = list(predict_paths(model, paths, batch_size=batch_size))
    s = time.perf_counter() - t
    return {"posters": len(results), "errors": sum(r["error"] is not None for r in results), "seconds": round(s, 2),
            "posters_per_s": round(len(results) / s, 2), "batch_size": batch_size}


def latency(model, paths) -> dict:
    list(predict_paths(model, paths[:1], workers=0))
    times = []
    for p in paths:
        t = time.perf_counter()
        list(predict_paths(model, [p], workers=0))
        times.append(time.perf_counter() - t)
    return {"latency_p50_ms": round(1000 * float(np.percentile(times, 50)), 1),
            "latency_p90_ms": round(1000 * float(np.percentile(times, 90)), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--latency-n", type=int, default=30)
    ap.add_argument("--only", nargs="*", default=None, help="measure only these configurations")
    ap.add_argument("--out", default="benchmarks/results/throughput.json")
    a = ap.parse_args()
    paths = [str(p) for p in iter_image_paths([a.images])][: a.n + a.latency_n]
    batch_paths, lat_paths = paths[: a.n], paths[a.n:]
    configs = {
        "study": (lambda: StudyModel(25), 33),
        "default-torch": (lambda: load_scorer("default", "torch"), 32),
        "default-onnx": (lambda: load_scorer("default", "onnx"), 32),
    }
    rows = {}
    for name, (make, bs) in configs.items():
        if a.only and name not in a.only:
            continue
        model = make()
        rows[name] = batch_speed(model, batch_paths, bs) | latency(model, lat_paths)
        print(name, rows[name], flush=True)
    base = rows.get("study", {}).get("posters_per_s")
    for r in rows.values():
        r["x_study"] = round(r["posters_per_s"] / base, 1) if base else None
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "machine": platform.machine(), "processor": platform.processor(),
           "torch": torch.__version__, "configs": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
