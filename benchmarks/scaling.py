"""Feature extraction with 1 process vs N processes under torchrun, on this machine.

    .venv/bin/python benchmarks/scaling.py --data ../shared/datasets/movie-posters [--limit 600] [--nproc 2]

Each run trains the default recipe (frozen) on the first --limit posters with an empty feature
cache, so it extracts them all, and reports the run's ``feature_extraction_seconds``.
- 1 process: plain ``postergenre train``, PyTorch using every core.
- N processes: ``torchrun --standalone --nproc-per-node N``, each with cores/N threads.
Writes ``benchmarks/results/scaling.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run(cmd: list[str], threads: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model"
        env = os.environ | {"OMP_NUM_THREADS": str(threads)}
        subprocess.run(cmd + ["--out", str(out), "--cache-dir", str(Path(tmp) / "cache")], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return json.loads((out / "config.json").read_text())["feature_extraction_seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--limit", type=int, default=600)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/scaling.json")
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    train = ["train", "--data", a.data, "--limit", str(a.limit), "--epochs", "1", "-q"]
    bin_dir = Path(sys.executable).parent
    single = run([str(bin_dir / "postergenre"), *train], cores)
    multi = run([str(bin_dir / "torchrun"), "--standalone", "--nproc-per-node", str(a.nproc), "-m", "postergenre", *train],
                max(1, cores // a.nproc))
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cpu_count": cores, "posters": a.limit,
              "one_process_seconds": single, f"{a.nproc}_processes_seconds": multi,
              "one_process_posters_per_s": round(a.limit / single, 2), f"{a.nproc}_processes_posters_per_s": round(a.limit / multi, 2),
              "speedup": round(single / multi, 2)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
