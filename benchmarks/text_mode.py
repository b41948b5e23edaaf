"""What reading the poster costs: one poster and a catalogue with ``--text on`` against ``--text off``,
as whole commands, and how OCR best uses the cores (worker processes or ONNX Runtime threads).

    .venv/bin/python benchmarks/text_mode.py --images ../shared/datasets/movie-posters/Images \
        [--n 200] [--out benchmarks/results/text_mode.json]

Every figure is a separate process under ``/usr/bin/time`` (wall, user, sys, peak RSS), with the
model's exports already in a scratch cache and an empty OCR cache, so OCR really runs:

- ``one_poster_text_on`` / ``one_poster_text_off``: ``postergenre predict ONE.jpg [--text on]``,
  median of 5 different posters (each read for the first time).
- ``catalogue_text_on`` / ``catalogue_text_off``: ``postergenre predict DIR --output out.jsonl``
  over ``--n`` posters.
- ``ocr_processes`` vs ``ocr_threads``: reading ``--n`` posters with 2 worker processes of one
  ONNX thread each, or one process with ONNX Runtime's threads on both cores.
"""

from __future__ import annotations

import shutil
import statistics
import sys
from pathlib import Path

from whole_command import CLI, run_benchmark, subset, timed

HERE = Path(__file__).resolve().parent

READ = """
import sys
from postergenre.inference.scorer import load_text_reader
from postergenre.text.ocr import read_posters
paths = sorted(__import__("glob").glob(sys.argv[1] + "/*.jpg"))
settings = load_text_reader("default").branch.ocr  # the built-in model's own setting
print(sum(bool(t) for t in read_posters(paths, settings, use_cache=False, workers=int(sys.argv[2]))))
"""


def measure(images: Path, n: int, tmp: Path) -> dict:
    out: dict = {}
    cache = tmp / "cache"
    env = {"POSTERGENRE_CACHE": str(cache)}
    posters = sorted(images.glob("*.jpg"))
    timed([*CLI, "predict", str(posters[-1]), "--text", "on"], env)  # fills the export cache (image + text encoder)
    for mode in ("on", "off"):
        runs = []
        for p in posters[-6:-1]:
            shutil.rmtree(cache / "ocr", ignore_errors=True)
            runs.append(timed([*CLI, "predict", str(p), "--text", mode], env))
        out[f"one_poster_text_{mode}"] = {"median_wall_s": statistics.median(r["wall_s"] for r in runs),
                                          "max_peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "runs": runs}
    cat = subset(images, n, tmp / "catalogue")
    for mode in ("off", "on"):
        shutil.rmtree(cache / "ocr", ignore_errors=True)
        r = timed([*CLI, "predict", str(cat), "--text", mode, "--output", str(tmp / f"out-{mode}.jsonl")], env)
        out[f"catalogue_text_{mode}"] = r | {"posters_per_s": round(n / r["wall_s"], 2)}
    for name, workers in (("ocr_processes", "2"), ("ocr_threads", "1")):
        r = timed([sys.executable, "-c", READ, str(cat), workers])
        out[name] = r | {"posters_per_s": round(n / r["wall_s"], 2)}
    return out


def main() -> None:
    run_benchmark(measure, __doc__, 200, HERE / "results" / "text_mode.json")


if __name__ == "__main__":
    main()
