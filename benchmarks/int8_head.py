"""The int8 engine's VNNI plan (issue 21): every MBConv block quantized, with the head tuned on
the int8 model's own features of the training posters (inference/int8_head.py), against fp32
and the plain plan (blocks 7-15, the fp32 head), on validation and the test part.

    .venv/bin/python benchmarks/int8_head.py --data ../shared/datasets/movie-posters \
        --extra-data ~/.cache/postergenre-data/extra-posters [--model src/postergenre/default_model] \
        [--fit] [--out benchmarks/results/int8_head.json]

``--fit`` tunes the head (33,115 training posters through the int8 model, then 5 epochs on
their features) and writes ``int8_head.safetensors`` and the ``int8.vnni`` section of the
model's config (validation and test figures included); without it the head already in the
model folder is scored. The int8 kernels differ by CPU: the figures hold for the CPU that ran
this (``cpu`` in the results), and the VNNI plan is only chosen on CPUs with VNNI.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np

from postergenre._io import atomic_file
from postergenre.data.dataset import load_dataset
from postergenre.inference.int8 import RANGES_FILE, build_int8, cpu_has_vnni
from postergenre.inference.int8_head import HEAD_FILE, RECIPE, fit_int8_head, recorded_sample_scores
from postergenre.inference.onnx_scorer import OnnxModel
from postergenre.inference.predict import score_paths
from postergenre.inference.scorer import load_scorer
from postergenre.modeling import metrics as M
from postergenre.modeling.artifact import DEFAULT_MODEL_DIR, read_split

HERE = Path(__file__).resolve().parent
ALL_BLOCKS = list(range(16))


def cpu_name() -> str:
    try:
        return next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                    if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def figures(scorer, part) -> dict:
    y, _ = part.labels_in(scorer.genres)
    s, errors = score_paths(scorer, [str(p) for p in part.paths])
    assert not errors, errors
    return {"micro_recall_at_3": round(M.micro_recall_at_k(y, s, 3), 4), "mAP": round(M.macro_average_precision(y, s), 4),
            "ece": round(M.expected_calibration_error(y, s), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--extra-data", required=True, type=Path)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--fit", action="store_true", help="tune the head and write it (implies --config)")
    ap.add_argument("--config", action="store_true", help="write the int8.vnni section of the model's config")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "int8_head.json")
    a = ap.parse_args()
    parts, (primary, _) = read_split(a.model), load_dataset(a.data)
    extra_dir = a.extra_data.expanduser()
    extra, _ = load_dataset(extra_dir)
    train = [primary.subset_ids(parts["train"]), extra.subset_ids(parts["extra_train"][extra_dir.name])]
    val, test = primary.subset_ids(parts["val"]), primary.subset_ids(parts["test"])
    fp32 = load_scorer(a.model, "onnx")
    config = json.loads((a.model / "config.json").read_text())
    result = {"cpu": cpu_name(), "vnni": cpu_has_vnni(), "n_train": sum(len(t) for t in train), "n_val": len(val),
              "n_test": len(test)}
    if a.fit:
        labels = [t.labels_in(fp32.genres) for t in train]
        y = np.concatenate([l[0] for l in labels])
        known = np.concatenate([l[1] if l[1] is not None else np.ones_like(l[0]) for l in labels])
        section = fit_int8_head(a.model, ([p for t in train for p in t.paths], y, known),
                                (val.paths, val.labels_in(fp32.genres)[0]), ALL_BLOCKS, RECIPE)
        result["history"] = section["history"]
    elif a.config:
        section = {"history": config["int8"].get("vnni", {}).get("history"),
                   "sample_scores": recorded_sample_scores(a.model, ALL_BLOCKS)}
    else:  # score what the model folder holds
        section = config["int8"]["vnni"]
    ranges = a.model / config["int8"].get("ranges", RANGES_FILE)
    rows = {"fp32": fp32}
    with tempfile.TemporaryDirectory(prefix="int8-head-") as tmp:
        variants = {"plain plan: blocks 7-15, fp32 head": (config["int8"]["blocks"], None),
                    "every block, fp32 head": (ALL_BLOCKS, None),
                    "vnni plan: every block, int8 head": (ALL_BLOCKS, a.model / HEAD_FILE)}
        for i, (name, (blocks, head)) in enumerate(variants.items()):
            path = Path(tmp) / f"{i}.onnx"
            build_int8(fp32.path, ranges, blocks, path, head, section["sample_scores"] if head else None)
            rows[name] = OnnxModel(path)
        result["rows"] = [{"variant": name, "validation": figures(s, val), "test": figures(s, test)} for name, s in rows.items()]
    for row in result["rows"]:
        print(json.dumps(row), flush=True)
    if a.fit or a.config:
        tuned = result["rows"][-1]
        config["int8"]["vnni"] = {
            "blocks": ALL_BLOCKS, "head": HEAD_FILE, "head_recipe": RECIPE, "head_trained_on": result["n_train"],
            "history": section["history"], "sample_scores": section["sample_scores"],
            "validation": tuned["validation"], "test": tuned["test"], "measured_on": result["cpu"],
            "rule": "on CPUs with VNNI: every block in int8 and the head tuned on the int8 features of the training "
                    "posters (epoch chosen on validation); test micro recall@3 and mAP within 0.003 of fp32 (issue 21)"}
        atomic_file(a.model / "config.json", json.dumps(config, indent=2) + "\n")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
