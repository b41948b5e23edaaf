"""Whole commands as a user runs them: cold start, peak memory, catalogue throughput against the
study's configuration in the same run, extraction speed, and user/sys CPU of the PyTorch paths.

    .venv/bin/python benchmarks/whole_command.py --images ../shared/datasets/movie-posters/Images \
        [--n 1000] [--out benchmarks/results/whole_command.json]

Every figure is a separate process measured by ``/usr/bin/time`` (wall, user, sys, peak RSS):

- ``cold_start``: ``postergenre predict ONE.jpg``, median (and all) of 5 runs after one warm-up
  that fills the export cache, as a person tagging one poster gets it.
- ``predict_catalogue``: ``postergenre predict DIR --output out.jsonl`` over ``--n`` posters, and
  ``study_catalogue``: the study's configuration (PyTorch eager ResNet50 at 350x350, batch 33,
  random weights: speed does not depend on them) over the same posters in a whole process too,
  as is and with our allocator setting; ``x_study`` divides by the faster of the two.
- ``extraction``: frozen features of ``--n`` posters into an empty cache (ONNX Runtime and PyTorch).
- ``evaluate_torch`` / ``finetune_epoch``: the PyTorch paths on 300 posters, with and without
  keeping freed memory in the heap (``POSTERGENRE_KEEP_FREED_MEMORY``; see ``backbones/_malloc.py``).

``WHOLE_COMMAND_QUICK=1`` stops after the catalogue and the study's (the figures issue 21 asks for);
``predict_catalogue_fp32`` is the same catalogue with ``--engine onnx``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLI = [str(Path(sys.executable).parent / "postergenre")]

STUDY = """
import sys, time, numpy as np, torch, torchvision
from postergenre.modeling.decision import DecisionRule
from postergenre.data.images import Preprocess
from postergenre.inference.predict import iter_image_paths, predict_paths
class Study:
    engine, genres = "torch", [f"g{i}" for i in range(25)]
    preprocess = Preprocess((350, 350), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    decision = DecisionRule("top_k", 3)
    def __init__(self):
        self.net = torchvision.models.resnet50(weights=None)
        self.net.fc = torch.nn.Linear(2048, 25)
        self.net.eval()
    @torch.inference_mode()
    def predict_proba_tensor(self, batch):
        return torch.sigmoid(self.net(torch.as_tensor(batch))).numpy()
if sys.argv[2:] == ["keep"]:  # the same allocator setting our PyTorch paths get
    from postergenre.backbones._malloc import keep_freed_memory
    keep_freed_memory()
n = sum(1 for _ in predict_paths(Study(), [sys.argv[1]], batch_size=33))
print(n)
"""

EXTRACT = """
import sys
from postergenre.backbones import build_backbone, get_spec
from postergenre.backbones.features import extract_features
from postergenre.inference.predict import iter_image_paths
spec = get_spec("efficientnet_lite0_poster")
paths = list(iter_image_paths([sys.argv[1]]))
rows, errors = extract_features(build_backbone(spec.name), paths, spec.preprocess(), sys.argv[2], engine=sys.argv[3],
                                progress=False)
print(len(paths) - len(errors))
"""


def timed(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd`` under /usr/bin/time: wall/user/sys seconds and peak RSS in MB."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as f:
        res = subprocess.run(["/usr/bin/time", "-f", "%e %U %S %M", "-o", f.name, *cmd], capture_output=True, text=True,
                             env=dict(os.environ, **(env or {})))
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
        wall, user, sys_, rss = f.read().split()[-4:]
    total = float(user) + float(sys_)
    return {"wall_s": float(wall), "user_s": float(user), "sys_s": float(sys_),
            "sys_share": round(float(sys_) / total, 3) if total else 0.0, "peak_rss_mb": round(int(rss) / 1024, 1)}


def subset(images: Path, n: int, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for p in sorted(images.glob("*.jpg"))[:n]:
        (folder / p.name).symlink_to(p.resolve())
    return folder


def labelled_subset(data: Path, n: int, folder: Path) -> Path:
    """The first ``n`` labelled posters of a dataset in its layout (symlinked images)."""
    rows = list(csv.reader((data / "train.csv").open()))[: n + 1]
    (folder / "Images").mkdir(parents=True, exist_ok=True)
    with (folder / "train.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    for r in rows[1:]:
        (folder / "Images" / f"{r[0]}.jpg").symlink_to((data / "Images" / f"{r[0]}.jpg").resolve())
    return folder


def measure(images: Path, n: int, tmp: Path) -> dict:
    out: dict = {}
    poster = sorted(images.glob("*.jpg"))[0]
    cache = {"POSTERGENRE_CACHE": str(tmp / "cache")}
    timed([*CLI, "predict", str(poster)], cache)  # warm-up: exports the model into the cache once
    runs = [timed([*CLI, "predict", str(poster)], cache) for _ in range(5)]
    out["cold_start"] = {"median_wall_s": statistics.median(r["wall_s"] for r in runs),
                         "max_peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "runs": runs}
    cat = subset(images, n, tmp / "catalogue")
    ours = timed([*CLI, "predict", str(cat), "--output", str(tmp / "out.jsonl")], cache)
    studies = {kind: timed([sys.executable, "-c", STUDY, str(cat), kind]) for kind in ("plain", "keep")}
    study = min(studies.values(), key=lambda r: r["wall_s"])  # the faster study: the conservative ratio
    fp32 = timed([*CLI, "predict", str(cat), "--engine", "onnx", "--output", str(tmp / "out-fp32.jsonl")], cache)
    out["predict_catalogue_fp32"] = fp32 | {"posters_per_s": round(n / fp32["wall_s"], 2)}
    ours["posters_per_s"] = round(n / ours["wall_s"], 2)
    out["predict_catalogue"] = ours | {"x_study": round(study["wall_s"] / ours["wall_s"], 2)}
    out["study_catalogue"] = {k: r | {"posters_per_s": round(n / r["wall_s"], 2)} for k, r in studies.items()}
    if os.environ.get("WHOLE_COMMAND_QUICK"):  # cold start and catalogue only (issue 21's figures)
        return out
    for engine in ("onnx", "torch"):
        r = timed([sys.executable, "-c", EXTRACT, str(cat), str(tmp / f"features-{engine}"), engine])
        out[f"extraction_{engine}"] = r | {"posters_per_s": round(n / r["wall_s"], 2)}
    data = labelled_subset(images.parent, 300, tmp / "ds300")
    for keep in ("0", "1"):
        env = cache | {"POSTERGENRE_KEEP_FREED_MEMORY": keep}
        out[f"evaluate_torch_keep{keep}"] = timed([*CLI, "evaluate", "--data", str(data), "--engine", "torch",
                                                   "--cache-dir", str(tmp / f"ev{keep}"), "-f", "json"], env)
        out[f"finetune_epoch_keep{keep}"] = timed([*CLI, "train", "--data", str(data), "--out", str(tmp / f"ft{keep}"),
                                                   "--mode", "finetune", "--epochs", "1", "--image-size", "384x256",
                                                   "--cache-dir", str(tmp / f"ftc{keep}"), "-q"], env)
    return out


def run_benchmark(measure, doc: str, default_n: int, default_out: Path) -> None:
    """The command line of a whole-command benchmark: ``measure(images, n, scratch)`` in a scratch
    folder, its figures written to ``--out`` (with the command and core count) and printed."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True, type=Path, help="the Images folder of a dataset in the study's layout")
    ap.add_argument("--n", type=int, default=default_n)
    ap.add_argument("--out", type=Path, default=default_out)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="postergenre-bench-") as tmp:
        result = measure(a.images.resolve(), a.n, Path(tmp))
    result = {"command": " ".join(["python", *sys.argv]), "cpu_count": os.cpu_count(), "n": a.n} | result
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: {x: y for x, y in v.items() if x != "runs"} if isinstance(v, dict) else v
                      for k, v in result.items()}, indent=1))


def main() -> None:
    run_benchmark(measure, __doc__, 1000, HERE / "results" / "whole_command.json")


if __name__ == "__main__":
    main()
