"""The first heatmap a user asks for on a fresh `postergenre serve`, with the warm-up (the default)
and with `--no-warm`: seconds of the first and later `/api/explain`, and the idle server's RSS.

    .venv/bin/python benchmarks/first_heatmap.py [--runs 5] [--wait 10] [--out benchmarks/results/first_heatmap.json]

Each run starts a new server on a free port, waits until `/api/health` answers 200 and then
``--wait`` seconds (a user looking at the page), reads the server's RSS, and asks three
heatmaps of the sample horror.jpg (Horror, Drama, Horror).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def one_run(extra: list[str], wait: float, poster: bytes) -> dict:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "postergenre", "serve", "--port", str(port), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while True:
            try:
                if httpx.get(base + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.time() - t0 > 120:
                raise SystemExit("the server did not become ready")
            time.sleep(0.05)
        ready = time.time() - t0
        time.sleep(wait)
        idle = rss_mb(proc.pid)
        times = []
        for genre in ("Horror", "Drama", "Horror"):
            t = time.time()
            r = httpx.post(base + "/api/explain", files={"file": ("horror.jpg", poster, "image/jpeg")},
                           data={"genre": genre}, timeout=120)
            r.raise_for_status()
            times.append(round(time.time() - t, 3))
        return {"ready_s": round(ready, 2), "idle_rss_mb": round(idle, 1), "explain_s": times}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--wait", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "first_heatmap.json")
    a = ap.parse_args()
    from postergenre.inference.onnx_scorer import sample_posters

    poster = next(p for p in sample_posters() if p.name == "horror.jpg").read_bytes()
    result: dict = {"command": " ".join(["python", *sys.argv]), "cpu_count": os.cpu_count()}
    for name, extra in (("warm", []), ("no_warm", ["--no-warm"])):
        runs = [one_run(extra, a.wait, poster) for _ in range(a.runs)]
        result[name] = {"first_explain_median_s": statistics.median(r["explain_s"][0] for r in runs),
                        "later_explain_median_s": statistics.median(x for r in runs for x in r["explain_s"][1:]),
                        "idle_rss_median_mb": statistics.median(r["idle_rss_mb"] for r in runs), "runs": runs}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: {x: y for x, y in v.items() if x != "runs"} if isinstance(v, dict) else v for k, v in result.items()},
                     indent=1))


if __name__ == "__main__":
    main()
