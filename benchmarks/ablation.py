"""Accuracy ablation on one fixed split: one row per change, chosen on validation, reported on test.

    .venv/bin/python benchmarks/ablation.py --data ../shared/datasets/movie-posters \
        [--out docs/ablation]

The split is the one ``postergenre train --test-fraction 0.15 --seed 1`` makes: a 15% test part
kept aside first, then 15% of the rest for validation (early stopping, thresholds, every choice
below). Features come from the library's cached extraction, so a row costs a head training.
``cost ms/poster`` is the backbone forward on decoded posters (batch 32, all cores), measured here;
``head s`` is the head's training time.

Writes ``ablation.json`` and ``ablation.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from postergenre.modeling import metrics as M
from postergenre.backbones import build_backbone, get_spec
from postergenre.data.dataset import load_dataset
from postergenre.modeling.decision import DecisionRule, tune_thresholds
from postergenre.backbones.features import extract_features, make_loader
from postergenre.data.images import Preprocess
from postergenre.modeling.model import HEADS
from postergenre.training.loops import Fit, fit_head
from postergenre.training.recipe import Recipe, recipe_split

BASE = Recipe(test_fraction=0.15, seed=1)


def backbone_features(name: str, paths) -> tuple[np.ndarray, float]:
    """(features (N, D), forward ms per poster)."""
    spec = get_spec(name)
    bb = build_backbone(name)
    pp = Preprocess(spec.input_size, spec.mean, spec.std)
    feats, errors = extract_features(bb, paths, pp, progress=True)
    assert not errors, errors
    _, batch, _ = next(iter(make_loader(paths[:32], pp, 32)))
    batch = batch.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        bb.module(batch)
        t = time.perf_counter()
        for _ in range(2):
            bb.module(batch)
    return feats, (time.perf_counter() - t) / 64 * 1000


def scores_of(X, y, tr, va, te, r: Recipe, seeds=(None,)) -> tuple[np.ndarray, np.ndarray, float]:
    """Val and test scores of the head (averaged over ``seeds`` for an ensemble) and its training seconds."""
    t = time.time()
    sv, st = [], []
    for s in seeds:
        rs = r if s is None else replace(r, seed=s)
        head = HEADS[rs.head](X.shape[1], y.shape[1], rs.hidden, rs.dropout)
        sv.append(fit_head(head, X, Fit(recipe=rs, y=y, train_idx=tr, val_idx=va)))
        head.eval()
        with torch.no_grad():
            st.append(torch.sigmoid(head(torch.as_tensor(X[te]))).numpy())
    return np.mean(sv, 0), np.mean(st, 0), time.time() - t


def summary(y, scores, rule: DecisionRule) -> dict:
    m = M.evaluate(y, scores, rule.apply(scores), [str(i) for i in range(y.shape[1])])
    return {k: round(m[k], 4) for k in ("micro_recall_at_3", "mAP", "micro_f1", "samples_f1", "hamming_loss")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", default="docs/ablation")
    a = ap.parse_args()
    ds, _ = load_dataset(a.data)
    y = ds.labels.astype(np.float32)
    tr, va, te = recipe_split(ds.labels, BASE)
    names = ["efficientnet_lite0", "efficientnet_lite0_poster", "efficientnet_lite1", "efficientnet_lite2",
             "mobilenet_v2", "resnet50_ssl"]
    F, cost = {}, {}
    for n in names:
        F[n], cost[n] = backbone_features(n, ds.paths)
        print(f"{n}: {F[n].shape[1]} dims, {cost[n]:.1f} ms/poster", flush=True)

    rows = []

    def row(change: str, feats: list[str], r: Recipe = BASE, seeds=(None,), rule: str = "top_k") -> dict:
        X = np.concatenate([F[n] for n in feats], 1)
        sv, st, secs = scores_of(X, y, tr, va, te, r, seeds)
        dec = DecisionRule("top_k", 3, tune_thresholds(y[va], sv))
        dec = dec if rule == "top_k" else DecisionRule("thresholds", 3, dec.thresholds)
        out = {"change": change, "features": "+".join(feats), "head": r.head, "loss": r.loss,
               "decision": "top-3" if rule == "top_k" else "F1 thresholds",
               "cost_ms_per_poster": round(sum(cost[n] for n in feats), 1), "head_seconds": round(secs, 1),
               "val": summary(y[va], sv, dec), "test": summary(y[te], st, dec)}
        rows.append(out)
        print(json.dumps(out), flush=True)
        return out

    prior = y[tr].mean(0)
    for part, idx in (("val", va), ("test", te)):
        pass
    pv, pt = np.tile(prior, (len(va), 1)), np.tile(prior, (len(te), 1))
    rows.append({"change": "prior: the 3 most frequent genres for every poster", "features": "-", "head": "-", "loss": "-",
                 "decision": "top-3", "cost_ms_per_poster": 0.0, "head_seconds": 0.0,
                 "val": summary(y[va], pv, DecisionRule("top_k", 3)), "test": summary(y[te], pt, DecisionRule("top_k", 3))})

    linear = replace(BASE, head="linear", dropout=0.0)
    row("EfficientNet-Lite0, 224x224 square, linear head, BCE", ["efficientnet_lite0"], linear)
    row("+ poster-shaped input 384x256 and multi-stage pooling", ["efficientnet_lite0_poster"], linear)
    row("+ MLP head (512, dropout 0.7, AdamW wd 0.05): previous default", ["efficientnet_lite0_poster"])
    row("  loss: class-balanced BCE", ["efficientnet_lite0_poster"], replace(BASE, loss="bce_balanced"))
    row("  loss: asymmetric loss (ASL)", ["efficientnet_lite0_poster"], replace(BASE, loss="asl"))
    row("  head: MLP 1024, dropout 0.5", ["efficientnet_lite0_poster"], replace(BASE, hidden=1024, dropout=0.5))
    row("  head: ensemble of 5 seeds", ["efficientnet_lite0_poster"], BASE, seeds=(1, 2, 3, 4, 5))
    for n in ["efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2", "resnet50_ssl"]:
        row(f"backbone alone: {n} (native square input)", [n])
    row("concat: Lite0-poster + MobileNetV2", ["efficientnet_lite0_poster", "mobilenet_v2"])
    row("concat: Lite0-poster + Lite2 + MobileNetV2", ["efficientnet_lite0_poster", "efficientnet_lite2", "mobilenet_v2"])
    row("concat: all six backbones", names)
    row("decision: per-genre F1 thresholds (vs top-3)", ["efficientnet_lite0_poster"], rule="thresholds")

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "n_train": len(tr), "n_val": len(va),
            "n_test": len(te), "split": "test 15% seed 1, then val 15% of the rest seed 1", "cpu_count": os.cpu_count()}
    (out / "ablation.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    head = "| change | features | loss | decision | ms/poster | head s | val r@3 | val mAP | val micro-F1 | test r@3 | test mAP | test micro-F1 |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    body = "".join(
        f"| {r['change']} | {r['features']} | {r['loss']} | {r['decision']} | {r['cost_ms_per_poster']} | {r['head_seconds']} | "
        f"{r['val']['micro_recall_at_3']:.4f} | {r['val']['mAP']:.4f} | {r['val']['micro_f1']:.4f} | "
        f"{r['test']['micro_recall_at_3']:.4f} | {r['test']['mAP']:.4f} | {r['test']['micro_f1']:.4f} |\n" for r in rows)
    (out / "ablation.md").write_text(f"# Ablation\n\n`{meta['command']}`\n\n{meta['n_train']} train / {meta['n_val']} val / {meta['n_test']} test posters ({meta['split']}).\n\n" + head + body)


if __name__ == "__main__":
    main()
