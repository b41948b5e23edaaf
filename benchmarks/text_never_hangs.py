"""Reading the poster never hangs and stops on Ctrl-C (issue 27), as whole commands.

    .venv/bin/python benchmarks/text_never_hangs.py --images ../shared/datasets/movie-posters/Images \
        [--n 50] [--out benchmarks/results/text_never_hangs.json]

- ``repeated``: ``postergenre predict DIR --text on --format csv`` over 30 posters, ``--n``
  times in a row, each with an empty OCR cache (so OCR's worker processes really start and read),
  each killed if it passes 40 s: how many finished, the slowest, and that every run printed the
  same rows. Before the fix 2-3 runs in 8 hung (worker processes forked while a decoding thread
  held the import lock).
- ``sigint``: ``postergenre predict DIR --text on --output FILE.csv`` over 300 posters, SIGINT
  5 s after the start: the exit code, the seconds from the signal to the exit, the rows in FILE
  (each whole) against the count the command printed.
- ``worker_start``: seconds from creating a pool of 2 OCR workers to both having read a small
  poster, per start method (median of 3 fresh processes): what never forking costs.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from whole_command import CLI, run_benchmark, subset

HERE = Path(__file__).resolve().parent

START = """
import sys, time
from concurrent.futures import ProcessPoolExecutor
import multiprocessing
from postergenre.text import ocr
settings = ocr.OcrSettings()
t = time.perf_counter()
with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(sys.argv[1]), initializer=ocr._init_worker,
                         initargs=(settings,)) as pool:
    list(pool.map(ocr._read_in_worker, sys.argv[2:4]))
print(time.perf_counter() - t)
"""


def repeated(folder: Path, runs: int, env: dict) -> dict:
    walls, outputs, failed = [], set(), []
    for i in range(runs):
        shutil.rmtree(Path(env["POSTERGENRE_CACHE"]) / "ocr", ignore_errors=True)
        t = time.perf_counter()
        try:
            done = subprocess.run([*CLI, "predict", str(folder), "--text", "on", "--format", "csv"], capture_output=True,
                                  text=True, timeout=40, env=env)
            ok = done.returncode == 0
            outputs.add(done.stdout) if ok else failed.append({"run": i, "rc": done.returncode, "stderr": done.stderr[-500:]})
        except subprocess.TimeoutExpired:
            failed.append({"run": i, "rc": "killed at 40 s"})
        walls.append(round(time.perf_counter() - t, 2))
    return {"runs": runs, "finished": runs - len(failed), "max_wall_s": max(walls), "median_wall_s": statistics.median(walls),
            "over_10_s": sum(w > 10 for w in walls), "same_rows_every_run": len(outputs) == 1, "failed": failed,
            "walls_s": walls}


def sigint(folder: Path, tmp: Path, env: dict, after_s: float = 5.0) -> dict:
    shutil.rmtree(Path(env["POSTERGENRE_CACHE"]) / "ocr", ignore_errors=True)
    out = tmp / "interrupted.csv"
    proc = subprocess.Popen([*CLI, "predict", str(folder), "--text", "on", "--output", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(after_s)
    sent = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    exit_s = round(time.perf_counter() - sent, 2)
    said = re.search(r"interrupted: (\d+) rows saved", err)
    text = out.read_text() if out.exists() else ""
    rows = list(csv.DictReader(text.splitlines()))
    whole = text.endswith("\n") and all(None not in r and None not in r.values() for r in rows)
    return {"signal_after_s": after_s, "exit_code": proc.returncode, "exit_s_after_signal": exit_s,
            "rows_in_file": len(rows), "rows_said": int(said[1]) if said else None, "rows_whole": whole,
            "last_line": err.strip().splitlines()[-1] if err.strip() else ""}


def worker_start(posters: list[Path]) -> dict:
    out = {}
    for method in ("fork", "forkserver", "spawn"):
        runs = [float(subprocess.run([sys.executable, "-c", START, method, *map(str, posters[:2])], capture_output=True,
                                     text=True, check=True).stdout) for _ in range(3)]
        out[method] = {"median_s": round(statistics.median(runs), 3), "runs_s": [round(r, 3) for r in runs]}
    return out


def measure(images: Path, runs: int, tmp: Path) -> dict:
    env = dict(os.environ, POSTERGENRE_CACHE=str(tmp / "cache"))
    posters = sorted(images.glob("*.jpg"))
    subprocess.run([*CLI, "predict", str(posters[-1]), "--text", "on"], check=True, capture_output=True, env=env)  # exports
    return {"worker_start": worker_start(posters[-3:]),
            "repeated_30_posters": repeated(subset(images, 30, tmp / "p30"), runs, env),
            "sigint_300_posters": sigint(subset(images, 300, tmp / "p300"), tmp, env)}


def main() -> None:
    run_benchmark(measure, __doc__, 50, HERE / "results" / "text_never_hangs.json")


if __name__ == "__main__":
    main()
