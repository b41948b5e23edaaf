"""Time the extraction that mode tail caches: every poster of the training sources, once.

    .venv/bin/python benchmarks/extract_rows.py --images ../shared/datasets/movie-posters/Images \
        --images ~/.cache/postergenre-data/extra-posters/Images [--engine onnx] [--cache-dir DIR]

Runs :func:`postergenre.backbones.features.extract_features` with ``split`` = 15 (the default model's
rows: the map before the last block, tap statistics, pooled features; float16) over all the
``.jpg`` files given, and prints posters/s. With the default cache dir the rows stay cached, so
a following ``postergenre train --mode tail`` skips the extraction (use an empty
``--cache-dir`` to time a cold run). This is how the 34,927 posters of the built-in model's
training sources were extracted (10.5 minutes, 55 posters/s, 2 cores).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from postergenre.backbones import build_backbone, get_spec
from postergenre.backbones.features import extract_features
from postergenre.data.images import Preprocess


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", action="append", required=True, help="a folder of posters (repeatable)")
    ap.add_argument("--engine", default="onnx", help="onnx, torch or auto")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--split", type=int, default=15)
    a = ap.parse_args()
    spec = get_spec("efficientnet_lite0_poster")
    bb = build_backbone(spec.name)
    pp = Preprocess(spec.input_size, spec.mean, spec.std)
    paths = [p for d in a.images for p in sorted(Path(d).expanduser().glob("*.jpg"))]
    t = time.time()
    rows, errors = extract_features(bb, paths, pp, a.cache_dir, engine=a.engine, split=a.split, batch_size=64)
    dt = time.time() - t
    print(f"{len(paths)} posters, rows {rows.shape} {rows.dtype}, {len(errors)} errors: {dt:.0f} s, {len(paths) / dt:.1f} posters/s")


if __name__ == "__main__":
    main()
