"""Load test of the HTTP API: N requests at concurrency C from another process, over loopback.

    .venv/bin/python benchmarks/load_api.py --images ../shared/datasets/movie-posters/Images \
        [--n 500] [--concurrency 8] [--max-seconds 300] [--out benchmarks/results/load_api.json]

Starts ``postergenre serve`` (built-in model, engine auto) on a free port, waits until it is
ready, then sends N single-poster ``POST /api/predict`` requests, C at a time, cycling over the
posters. Reports throughput, p50/p99 latency, status counts and the server's resident memory
before and after. Bounded by N and by --max-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(base: str, posters: list[Path], n: int, c: int, max_seconds: float) -> dict:
    data = [(p.name, p.read_bytes()) for p in posters]
    latencies, statuses = [], {}
    counter = iter(range(n))
    deadline = time.perf_counter() + max_seconds

    async def worker(client: httpx.AsyncClient):
        for i in counter:
            if time.perf_counter() > deadline:
                return
            name, body = data[i % len(data)]
            t = time.perf_counter()
            try:
                r = await client.post(base + "/api/predict", files={"file": (name, body, "image/jpeg")})
                key = str(r.status_code)
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            latencies.append(time.perf_counter() - t)
            statuses[key] = statuses.get(key, 0) + 1

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=c)) as client:
        await asyncio.gather(*(worker(client) for _ in range(c)))
    seconds = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"requests": len(latencies), "seconds": round(seconds, 2), "requests_per_s": round(len(latencies) / seconds, 2),
            "latency_p50_ms": round(float(np.percentile(lat, 50)), 1), "latency_p99_ms": round(float(np.percentile(lat, 99)), 1),
            "statuses": statuses, "errors": sum(v for k, v in statuses.items() if k != "200")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-seconds", type=float, default=300)
    ap.add_argument("--posters", type=int, default=100, help="distinct posters to cycle over")
    ap.add_argument("--out", default="benchmarks/results/load_api.json")
    a = ap.parse_args()
    posters = sorted(Path(a.images).glob("*.jpg"))[: a.posters]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "postergenre", "serve", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t = time.time()
        while True:
            try:
                if httpx.get(base + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() - t > 180 or proc.poll() is not None:
                raise SystemExit("the server did not become ready")
            time.sleep(0.5)
        rss_before = rss_mb(proc.pid)
        result = asyncio.run(load(base, posters, a.n, a.concurrency, a.max_seconds))
        result["server_rss_mb_before"] = round(rss_before, 1)
        result["server_rss_mb_after"] = round(rss_mb(proc.pid), 1)
        result["health_after"] = httpx.get(base + "/api/health", timeout=10).json()["status"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cpu_count": os.cpu_count(),
           "n": a.n, "concurrency": a.concurrency, **result}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
