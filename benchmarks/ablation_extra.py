"""Issue 12's ablation: more data, calibration, and tuning the last blocks; validation only.

    .venv/bin/python benchmarks/ablation_extra.py --data ../shared/datasets/movie-posters \
        --extra-data ~/.cache/postergenre-data/extra-posters [--rows head,tail] [--out docs/ablation]

The split is the one ``postergenre train --test-fraction 0.15 --seed 1`` makes of the study's
posters; the extra posters only join training. Every figure here is on the validation part: the
test part is never scored (it is scored once, by the final ``postergenre train`` run).
Per row: micro recall@3 and mAP of the raw scores, ECE of the raw scores, and ECE / recall@3
after per-genre Platt calibration cross-validated on the validation part (2 folds), so the
calibration is never scored on the posters it was fitted on.

Rows are appended to ``<out>/ablation_extra.json`` as they finish (a rerun skips finished rows).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from postergenre.modeling import metrics as M
from postergenre.backbones import build_backbone, get_spec
from postergenre.modeling.calibration import fit_platt
from postergenre.data.dataset import add_extra, load_dataset
from postergenre.backbones.features import extract_features, row_layout
from postergenre.data.images import Preprocess
from postergenre.modeling.model import HEADS
from postergenre.training.tail import TailNet, fit_tail, tail_logits
from postergenre.training.loops import Fit, History, fit_head
from postergenre.training.recipe import Recipe, recipe_split

BASE = Recipe(test_fraction=0.15, seed=1, batch_size=64)


def crossfit_platt(z: np.ndarray, y: np.ndarray, seed: int = 0) -> np.ndarray:
    """Platt-calibrated probabilities of every validation poster, each from a fit on the other half."""
    order = np.random.default_rng(seed).permutation(len(z))
    halves = [order[: len(z) // 2], order[len(z) // 2:]]
    out = np.zeros_like(z)
    for a, b in (halves, halves[::-1]):
        out[b] = fit_platt(z[a], y[a]).probabilities(z[b])
    return out


def measure(name: str, z: np.ndarray, y: np.ndarray, seconds: float, **extra) -> dict:
    p = 1 / (1 + np.exp(-z))
    cal = crossfit_platt(z, y)
    return {"row": name, "val_micro_recall_at_3": round(M.micro_recall_at_k(y, p, 3), 4),
            "val_mAP": round(M.macro_average_precision(y, p), 4),
            "val_ece_raw": round(M.expected_calibration_error(y, p), 4),
            "val_ece_platt_cv": round(M.expected_calibration_error(y, cal), 4),
            "val_micro_recall_at_3_platt_cv": round(M.micro_recall_at_k(y, cal, 3), 4),
            "val_mAP_platt_cv": round(M.macro_average_precision(y, cal), 4), "seconds": round(seconds, 1)} | extra


def head_logits(X, y, tr, va, r: Recipe, seeds=(None,)) -> np.ndarray:
    zs = []
    for s in seeds:
        rs = r if s is None else replace(r, seed=s)
        head = HEADS[rs.head](X.shape[1], y.shape[1], rs.hidden, rs.dropout)
        fit_head(head, X, Fit(recipe=rs, y=y, train_idx=tr, val_idx=va))
        head.eval()
        with torch.no_grad():
            zs.append(head(torch.as_tensor(X[va])).numpy())
    return np.mean(zs, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--extra-data", required=True)
    ap.add_argument("--rows", default="head,tail", help="comma-separated groups: head, ensemble, tail, tail0")
    ap.add_argument("--tail-epochs", type=int, default=6)
    ap.add_argument("--out", default="docs/ablation")
    a = ap.parse_args()
    out = Path(a.out) / "ablation_extra.json"
    done = json.loads(out.read_text()) if out.is_file() else {"command": " ".join(["python", *sys.argv]), "rows": []}
    finished = {r["row"] for r in done["rows"]}

    primary, _ = load_dataset(a.data)
    extra, _ = load_dataset(a.extra_data)
    ds, rep = add_extra(primary, extra, "extra-posters", "movie-posters")
    print(rep.to_text(), flush=True)
    y = ds.labels.astype(np.float32)
    tr, va, _ = recipe_split(ds.labels, BASE, ds.primary)  # the test part is not even kept
    tr_primary = tr[np.isin(tr, ds.primary)]
    spec = get_spec("efficientnet_lite0_poster")
    bb = build_backbone(spec.name)
    pp = Preprocess(spec.input_size, spec.mean, spec.std)
    split = len(bb.module.net._blocks) - 1
    rows, errors = extract_features(bb, ds.paths, pp, split=split)
    assert not errors, list(errors.values())[:3]
    layout = row_layout(bb, pp, split)
    X = rows[:, -layout["features"]:].astype(np.float32)
    done["split"] = {"n_train_primary": len(tr_primary), "n_train_with_extra": len(tr), "n_val": len(va)}

    def row(name: str, fn) -> None:
        if name in finished:
            return
        t = time.time()
        z, extra_fields = fn()
        result = measure(name, z, y[va], time.time() - t, **extra_fields)
        done["rows"].append(result)
        print(json.dumps(result), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(done, indent=1) + "\n")

    groups = set(a.rows.split(","))
    if "head" in groups:
        row("study posters only, MLP, ASL (previous default recipe)", lambda: (head_logits(X, y, tr_primary, va, replace(BASE, loss="asl")), {}))
        row("study posters only, MLP, BCE", lambda: (head_logits(X, y, tr_primary, va, BASE), {}))
        row("+ extra posters, MLP, BCE", lambda: (head_logits(X, y, tr, va, BASE), {}))
        row("+ extra posters, MLP, ASL", lambda: (head_logits(X, y, tr, va, replace(BASE, loss="asl")), {}))
        row("+ extra posters, MLP 1024, dropout 0.5", lambda: (head_logits(X, y, tr, va, replace(BASE, hidden=1024, dropout=0.5)), {}))
        row("+ extra posters, MLP, 20 epochs", lambda: (head_logits(X, y, tr, va, replace(BASE, epochs=20)), {}))
        row("+ extra posters, MLP, lr 1e-3", lambda: (head_logits(X, y, tr, va, replace(BASE, lr=1e-3)), {}))
    if "ensemble" in groups:
        row("+ extra posters, MLP, 5-seed ensemble", lambda: (head_logits(X, y, tr, va, BASE, seeds=(1, 2, 3, 4, 5)), {}))
    for blocks, group in ((1, "tail"), (0, "tail0")):
        if group not in groups:
            continue
        r = replace(BASE, mode="tail", tail_blocks=blocks, tail_epochs=a.tail_epochs).resolved()

        def tune(blocks=blocks, r=r):
            b = build_backbone(spec.name)
            head = HEADS[r.head](X.shape[1], y.shape[1], r.hidden, r.dropout)
            fit_head(head, X, Fit(recipe=r, y=y, train_idx=tr, val_idx=va))
            net = TailNet(b.module, split, head, tuned_from=len(b.module.net._blocks) - blocks)
            hist = History()
            fit_tail(net, rows, layout, Fit(recipe=r, y=y, train_idx=tr, val_idx=va, history=hist,
                                            gen=torch.Generator().manual_seed(r.seed), progress=True))
            z = tail_logits(net, rows[va], layout)
            flipped = rows[va].copy()
            m = int(np.prod(layout["map"]))
            flipped[:, :m] = flipped[:, :m].reshape(-1, *layout["map"])[..., ::-1].reshape(len(va), m)
            p_tta = 1 / (1 + np.exp(-(z + tail_logits(net, flipped, layout)) / 2))
            return z, {"epochs": [{k: h[k] for k in ("epoch", "val_micro_recall_at_3", "val_mAP", "seconds")} for h in hist.epochs],
                       "flip_tta_val_micro_recall_at_3": round(M.micro_recall_at_k(y[va], p_tta, 3), 4),
                       "flip_tta_val_mAP": round(M.macro_average_precision(y[va], p_tta), 4)}

        what = "last block + head conv" if blocks else "head conv only"
        row(f"+ extra posters, tail: {what} tuned ({a.tail_epochs} epochs, lr {r.tail_lr})", tune)

if __name__ == "__main__":
    main()
