"""Load and abuse test of the HTTP API, from another process, over loopback.

    .venv/bin/python benchmarks/load_api.py --images ../shared/datasets/movie-posters/Images \
        [--n 500] [--concurrency 8] [--fuzz 0] [--max-seconds 300] [--out benchmarks/results/load_api.json]

With ``--fuzz M`` it first sends M abusive requests (raw sockets, C at a time): malformed
multipart, wrong or missing content types, garbage bytes named .jpg, huge headers, bodies over
the cap (declared and streamed), slow clients that trickle their request, wrong methods and
paths. It counts the answers by status (any 5xx is a failure), then runs the load test, and
checks the server still answers a good request correctly.

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


BOUNDARY = "fuzzb0undary"


def _multipart(parts: list[tuple[str, str, bytes, str]]) -> bytes:
    out = b""
    for field, filename, data, ctype in parts:
        out += (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
                f"Content-Type: {ctype}\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def fuzz_cases(rng: np.random.Generator, poster: bytes, cap_bytes: int) -> list[tuple[str, bytes, float]]:
    """(kind, raw HTTP request, seconds to trickle it over) for one round of every abuse."""
    def req(body: bytes, ctype: str | None = f"multipart/form-data; boundary={BOUNDARY}", path="/api/predict",
            method="POST", extra: str = "", length: bool = True) -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + (f"Content-Type: {ctype}\r\n" if ctype else "")
        head += (f"Content-Length: {len(body)}\r\n" if length else "Transfer-Encoding: chunked\r\n") + extra + "\r\n"
        if not length:
            body = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in (body[i:i + 65536] for i in range(0, len(body), 65536))) + b"0\r\n\r\n"
        return head.encode() + body

    from postergenre.app.serve import MAX_FILES

    request_cap = cap_bytes * MAX_FILES + 64 * 1024  # what serve.BodyLimit enforces
    garbage = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    good = _multipart([("file", "p.jpg", poster, "image/jpeg")])
    return [
        ("multipart without closing boundary", req(good[: len(good) // 2]), 0),
        ("multipart with a wrong boundary", req(good, ctype="multipart/form-data; boundary=other"), 0),
        ("multipart without boundary", req(good, ctype="multipart/form-data"), 0),
        ("json body", req(b'{"file": "x"}', ctype="application/json"), 0),
        ("text body", req(b"hello", ctype="text/plain"), 0),
        ("no content type", req(good, ctype=None), 0),
        ("garbage bytes as a .jpg", req(_multipart([("file", "g.jpg", garbage, "image/jpeg")])), 0),
        ("half a JPEG", req(_multipart([("file", "h.jpg", poster[: len(poster) // 2], "image/jpeg")])), 0),
        ("wrong field name", req(_multipart([("image", "p.jpg", poster, "image/jpeg")])), 0),
        ("bad top_k", req(_multipart([("file", "p.jpg", poster, "image/jpeg")])[:-len(f"--{BOUNDARY}--\r\n")]
                         + f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"top_k\"\r\n\r\n-5\r\n--{BOUNDARY}--\r\n".encode()), 0),
        ("huge header", req(good, extra=f"X-Junk: {'a' * 200_000}\r\n"), 0),
        ("many headers", req(good, extra="".join(f"X-H{i}: {i}\r\n" for i in range(2000))), 0),
        ("declared body over the request cap", (f"POST /api/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                               f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                                               f"Content-Length: {request_cap + 1}\r\n\r\n").encode() + good, 0),
        ("streamed body over the cap", req(_multipart([("file", "big.jpg", b"\xff" * (cap_bytes + 1024), "image/jpeg")]), length=False), 0),
        ("slow client", req(good), 3.0),
        ("wrong method", req(b"", method="DELETE"), 0),
        ("unknown path", req(b"", method="GET", path="/../../etc/passwd", ctype=None), 0),
        ("not HTTP at all", garbage[:300] + b"\r\n\r\n", 0),
    ]


async def _raw(host: str, port: int, data: bytes, trickle_s: float, timeout: float = 30) -> str:
    """Send raw bytes (trickled over ``trickle_s``), return the response's status code or what happened."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        try:
            if trickle_s:
                step = max(1, len(data) // 30)
                for i in range(0, len(data), step):
                    writer.write(data[i:i + step])
                    await writer.drain()
                    await asyncio.sleep(trickle_s / 30)
            else:
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass  # the server may refuse (and close) before the whole body is sent
        line = await asyncio.wait_for(reader.readline(), timeout)
        writer.close()
        parts = line.split()
        return parts[1].decode() if len(parts) >= 2 and parts[0].startswith(b"HTTP/") else "closed without answer"
    except asyncio.TimeoutError:
        return "timeout"
    except (ConnectionError, OSError) as exc:
        return type(exc).__name__


async def fuzz(host: str, port: int, poster: bytes, cap_bytes: int, m: int, c: int, max_seconds: float) -> dict:
    rng = np.random.default_rng(0)
    cases = fuzz_cases(rng, poster, cap_bytes)
    statuses: dict[str, dict[str, int]] = {}
    counter = iter(range(m))
    deadline = time.perf_counter() + max_seconds

    async def worker():
        for i in counter:
            if time.perf_counter() > deadline:
                return
            kind, data, trickle = cases[i % len(cases)]
            status = await _raw(host, port, data, trickle)
            statuses.setdefault(kind, {}).setdefault(status, 0)
            statuses[kind][status] += 1

    await asyncio.gather(*(worker() for _ in range(c)))
    flat: dict[str, int] = {}
    for by in statuses.values():
        for k, v in by.items():
            flat[k] = flat.get(k, 0) + v
    return {"sent": sum(flat.values()), "statuses": flat, "by_kind": statuses,
            "count_5xx": sum(v for k, v in flat.items() if k.startswith("5")),
            "count_4xx": sum(v for k, v in flat.items() if k.startswith("4"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-seconds", type=float, default=300)
    ap.add_argument("--posters", type=int, default=100, help="distinct posters to cycle over")
    ap.add_argument("--fuzz", type=int, default=0, help="abusive requests to send before the load test")
    ap.add_argument("--max-upload-mb", type=float, default=10.0)
    ap.add_argument("--out", default="benchmarks/results/load_api.json")
    a = ap.parse_args()
    posters = sorted(Path(a.images).glob("*.jpg"))[: a.posters]
    if not posters:
        raise SystemExit(f"{a.images}: no .jpg posters")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "postergenre", "serve", "--port", str(port), "--max-upload-mb", str(a.max_upload_mb)],
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
        result = {}
        if a.fuzz:
            cap = int(a.max_upload_mb * 1024 * 1024)
            result["fuzz"] = asyncio.run(fuzz("127.0.0.1", port, posters[0].read_bytes(), cap, a.fuzz, a.concurrency, a.max_seconds))
            result["server_rss_mb_after_fuzz"] = round(rss_mb(proc.pid), 1)
        result |= asyncio.run(load(base, posters, a.n, a.concurrency, a.max_seconds))
        check = httpx.post(base + "/api/predict", files={"file": (posters[0].name, posters[0].read_bytes(), "image/jpeg")}, timeout=30)
        result["good_request_after"] = {"status": check.status_code, "predicted": check.json()[0]["predicted"] if check.status_code == 200 else None}
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
