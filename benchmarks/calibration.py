"""Which calibration, measured on a trained model's validation part; reliability diagrams.

    .venv/bin/python benchmarks/calibration.py --data ../shared/datasets/movie-posters \
        [--model src/postergenre/default_model] [--out docs/calibration]

Scores the model's own validation posters (``split.json``) with its calibration switched off,
then compares no calibration, one temperature per genre, Platt scaling per genre and isotonic
regression per genre, each scored on validation posters it was not fitted on (5-fold cross
validation): ECE (15 equal-width bins over every poster x genre score), Brier score, BCE.
Draws the reliability diagram of the model as shipped (calibrated) on its validation and test
parts, and of the raw scores on validation. Writes ``calibration.json`` and PNGs into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from postergenre.modeling.calibration import Calibration, compare_calibrators
from postergenre.data.dataset import load_dataset
from postergenre.modeling.model import load_model, read_split
from postergenre.inference.predict import score_paths
from postergenre.modeling.reliability import reliability_diagram


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", default="docs/calibration")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ds, _ = load_dataset(a.data)
    split = read_split(a.model)
    model = load_model(a.model)
    shipped = model.calibration
    parts = {name: ds.subset_ids(split[name]) for name in ("val", "test") if name in split}
    scores = {}
    for name, part in parts.items():
        scores[name], errors = score_paths(model, part.paths)
        assert not errors, errors
    model.calibration = Calibration(len(model.genres))  # raw logits, to compare calibrators on
    raw, _ = score_paths(model, parts["val"].paths)
    y_val = parts["val"].labels
    z = np.log(np.clip(raw, 1e-7, 1 - 1e-7) / np.clip(1 - raw, 1e-7, 1))
    result = {"command": " ".join(["python", *sys.argv]), "model": model.name, "shipped": shipped.kind,
              "validation_cv": compare_calibrators(z, y_val, folds=5)}
    reliability_diagram(y_val, raw, out / "reliability_val_raw.png", title=f"{model.name}: validation, raw scores")
    for name, part in parts.items():
        reliability_diagram(part.labels, scores[name], out / f"reliability_{name}.png",
                            title=f"{model.name}: {name} part, {shipped.kind} calibration (as shipped)")
    (out / "calibration.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["validation_cv"]["methods"], indent=1))


if __name__ == "__main__":
    main()
