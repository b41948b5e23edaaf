"""The server under abuse (benchmarks/load_api.py --fuzz against a real server): never a 5xx,
and it still answers a good request correctly afterwards."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from conftest import REPO, make_poster

VALID = {"many headers", "slow client"}  # well-formed requests: these must succeed


def test_fuzz_gets_no_5xx_and_the_server_survives(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, g in enumerate(["Action", "Comedy", "Drama"]):
        make_poster(rng, {g}, (200, 300)).save(images / f"p{i}.jpg")
    out = tmp_path / "fuzz.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "load_api.py"), "--images", str(images), "--n", "12",
                           "--fuzz", "38", "--concurrency", "4", "--max-upload-mb", "1", "--max-seconds", "90", "--out", str(out)],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    f = r["fuzz"]
    assert f["sent"] == 38 and f["count_5xx"] == 0, f["statuses"]
    for kind, statuses in f["by_kind"].items():
        ok = {"200"} if kind in VALID else {"400", "404", "405", "413", "422"}
        assert set(statuses) <= ok, (kind, statuses)
    assert r["errors"] == 0 and r["requests"] == 12
    assert r["good_request_after"]["status"] == 200 and len(r["good_request_after"]["predicted"]) == 3
