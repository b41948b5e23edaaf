#!/usr/bin/env python3
"""Pack poster datasets for the GPU machine as they are: the original image files, byte for byte,
in the dataset layout (DIR/train.csv + DIR/Images/<Id>.jpg), in tars of at most --max-mb MiB, the
first holding every train.csv. The same layout as /work/shared/tools/gpu/pack_dataset.py writes,
without its WebP re-encoding (which moves the built-in model's validation scores: mAP 0.3788 ->
0.3658 on WebP quality-60 copies of its validation posters; the extra posters' JPEGs are no larger
than their WebP copies). Used by pack_posters.sh with RAW=1.

    python3 scripts/gpu/pack_originals.py --out .gpu-packs --max-mb 30 DATA [DATA ...]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import tarfile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+", help="dataset folders (train.csv + Images/)")
    ap.add_argument("--out", required=True, help="folder for p0.tar, p1.tar, ...")
    ap.add_argument("--max-mb", type=float, default=30, help="largest tar in MiB")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for old in os.listdir(a.out):
        if old.startswith("p") and old.endswith(".tar"):
            os.remove(os.path.join(a.out, old))
    heads, files = [], []
    for d in a.datasets:
        d = os.path.abspath(os.path.expanduser(d))
        name = os.path.basename(d.rstrip("/"))
        with open(f"{d}/train.csv", "rb") as f:
            heads.append((f"{name}/train.csv", f.read()))
        with open(f"{d}/train.csv", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                src = f"{d}/Images/{row['Id']}.jpg"
                if os.path.exists(src):
                    files.append((f"{name}/Images/{row['Id']}.jpg", src))
    limit, n, size, tf, total, seen = int(a.max_mb * 1024 * 1024), 0, 0, None, 0, set()

    def add(member: str, data: bytes) -> None:
        nonlocal tf, n, size
        if tf is None or size + len(data) + 1024 > limit:
            if tf:
                tf.close()
            tf = tarfile.open(os.path.join(a.out, f"p{n}.tar"), "w")
            n, size = n + 1, 0
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        size += len(data) + 1024

    for member, data in heads:
        add(member, data)
    for member, src in files:
        if member in seen:  # a duplicated label row
            continue
        seen.add(member)
        with open(src, "rb") as f:
            data = f.read()
        add(member, data)
        total += len(data)
    tf.close()
    print(f"{len(seen)} posters, {total / 2**20:.0f} MiB, in {n} tars under {a.out} (original files)")


if __name__ == "__main__":
    main()
