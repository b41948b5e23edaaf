"""Which offline backbone makes the best default? Frozen features + the default head recipe,
same seeded validation split for each, measured on validation only.

    .venv/bin/python benchmarks/select_backbone.py --data ../shared/datasets/movie-posters \
        [--backbones efficientnet_lite0,...] [--out benchmarks/results/select_backbone]

Writes ``<out>.json`` and ``<out>.md``; features are cached (~/.cache/postergenre), so the
timing column is the one-off extraction cost measured by ``benchmarks/`` itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from postergenre.backbones import REGISTRY, build_backbone, get_spec
from postergenre.data.dataset import load_dataset
from postergenre.data.images import Preprocess
from postergenre.training.train import Recipe, train

KEYS = ["micro_recall_at_3", "precision_at_3", "mAP", "micro_f1", "macro_f1", "hamming_loss"]


def extraction_speed(name: str, paths, n: int = 64) -> float:
    """Backbone forward posters/s on already-decoded inputs (batch 32), after a warm-up."""
    bb = build_backbone(name)
    s = get_spec(name)
    pp = Preprocess(s.input_size, s.mean, s.std)
    x = torch.stack([pp.load(p) for p in paths[:n]]).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        bb.module(x[:32])
        t = time.perf_counter()
        for i in range(0, n, 32):
            bb.module(x[i:i + 32])
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--backbones", default=",".join(n for n, s in REGISTRY.items() if s.offline))
    ap.add_argument("--out", default="benchmarks/results/select_backbone")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--render-only", action="store_true", help="Rewrite <out>.md from <out>.json.")
    args = ap.parse_args()
    out = Path(args.out)
    if args.render_only:
        saved = json.loads(out.with_suffix(".json").read_text())
        render(out, saved["meta"], saved["rows"])
        return
    ds, _ = load_dataset(args.data)
    rows = []
    for name in args.backbones.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            t = time.time()
            m = train(ds, Recipe(backbone=name, seed=args.seed), Path(tmp) / "m", progress=False)
            row = {"backbone": name, **{k: m.config.training.validation_metrics[k] for k in KEYS},
                   "train_seconds_with_cache": round(time.time() - t, 1),
                   "forward_posters_per_s": round(extraction_speed(name, ds.paths), 1),
                   "n_val": m.config.training.data["n_val"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cpu_count": os.cpu_count(), "seed": args.seed,
            "machine": platform.machine(), "torch": torch.__version__, "n_posters": len(ds)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    render(out, meta, rows)


def render(out: Path, meta: dict, rows: list[dict]) -> None:
    lines = ["| backbone | " + " | ".join(KEYS) + " | backbone forward posters/s |", "|---" * (len(KEYS) + 2) + "|"]
    for r in sorted(rows, key=lambda r: -r["micro_recall_at_3"]):
        speed = "n/a (no network)" if r["backbone"] == "pixels" else r["forward_posters_per_s"]
        lines.append(f"| {r['backbone']} | " + " | ".join(f"{r[k]:.4f}" for k in KEYS) + f" | {speed} |")
    out.with_suffix(".md").write_text(
        f"Validation split ({rows[0].get('n_val', 924)} posters, seed {meta.get('seed', 0)}), frozen features + the default MLP head recipe.\n"
        f"Command: `{meta['command']}` on {meta['cpu_count']} CPU cores (torch {meta['torch']}).\n"
        "Forward speed: backbone alone on decoded 32-poster batches, after a warm-up.\n\n" + "\n".join(lines) + "\n"
    )


if __name__ == "__main__":
    main()
