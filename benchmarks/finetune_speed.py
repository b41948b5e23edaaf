"""What an epoch of `train --mode finetune` costs, as the whole command runs it, on this machine's
device: posters/s of the training steps (from the model's history), seconds per epoch, and the
whole command's wall time and peak memory.

    .venv/bin/python benchmarks/finetune_speed.py --data ../shared/datasets/movie-posters \
        [--limit 400] [--epochs 1] [--device cpu] [--recipe poster] [--out benchmarks/results/finetune_speed_cpu.json]

On a GPU (issue 28's goal: Lite0 at 384x256 over the 33,115 training posters <= 20 s an epoch),
the same script with ``--device cuda``, no ``--limit`` and ``--extra-data``. The pixel cache is
filled in a first, untimed run, so the figure is training, not decoding (its seconds are reported).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from whole_command import CLI, timed

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--extra-data", action="append", default=[])
    ap.add_argument("--limit", type=int)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--recipe", default="poster")
    ap.add_argument("--extra", default="", help="more train options, e.g. '--compile'")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "finetune_speed_cpu.json")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="postergenre-ft-") as tmp:
        args = [*CLI, "train", "--data", a.data, "--mode", "finetune", "--recipe", a.recipe, "--device", a.device,
                "--cache-dir", f"{tmp}/cache", "--quiet", "--seed", "1", "--test-fraction", "0.15",
                *[x for d in a.extra_data for x in ("--extra-data", d)], *(["--limit", str(a.limit)] if a.limit else []),
                *a.extra.split()]
        fill = timed([*args, "--epochs", "1", "--out", f"{tmp}/fill"])  # decodes every poster into the pixel cache
        run = timed([*args, "--epochs", str(a.epochs), "--out", f"{tmp}/model"])
        rows = json.loads(Path(f"{tmp}/model/history.json").read_text())
        cfg = json.loads(Path(f"{tmp}/model/config.json").read_text())
    result = {"command": " ".join(["python", *sys.argv]), "cpu_count": os.cpu_count(), "device": a.device,
              "n_train": cfg["data"]["n_train"], "n_val": cfg["data"]["n_val"], "image_size": cfg["preprocess"]["size"],
              "recipe": {k: cfg["recipe"].get(k) for k in ("preset", "batch_size", "micro_batch", "ema", "augment")},
              "first_run_with_decoding": fill, "run": run,
              "epochs": [{k: r.get(k) for k in ("epoch", "posters_per_s", "seconds", "val_mAP", "val_mAP_mirror")} for r in rows]}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
