"""``predict --cluster ray`` against plain ``predict`` (issue 29): posters/s on this machine, image
only and ``--text on``, and a two-node run on one machine through ``--address``.

    .venv/bin/python benchmarks/ray_predict.py --images ../shared/datasets/movie-posters/Images \
        [--n 1000] [--n-text 200] [--n-large 6000] [--out benchmarks/results/ray_predict.json]

Every figure is a whole command in its own process under ``/usr/bin/time``, with the model's
exports already in a scratch cache (and, for ``--text on``, an empty OCR cache: OCR really runs):

- ``plain_text_off`` / ``ray_text_off``: ``postergenre predict DIR --output out.jsonl [--cluster ray]``
  over ``--n`` posters (Ray's start-up included: what a user waits for), the posters already in
  the page cache; each figure the fastest of two runs (``walls_s``: both).
- ``ray_text_off_1x2``: one actor on both cores (ONNX Runtime on 2 threads) instead of the
  default, one actor per core: how ``ACTOR_CPUS`` was chosen.
- ``*_large``: the same once over ``--n-large`` posters: Ray's fixed cost (start, the actors'
  model load, shutdown: ~6 s on 2 cores) spread over a catalogue.
- ``plain_text_on`` / ``ray_text_on``: the same with ``--text on`` over ``--n-text`` posters.
- ``two_nodes``: ``ray.cluster_utils.Cluster`` with two nodes of one CPU each, the command run
  through ``--address``; ``rows_by_node`` counts the rows each node's actor scored.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from whole_command import CLI, subset, timed

HERE = Path(__file__).resolve().parent
REPEATS = 2

ONE_ACTOR = """
import sys
from pathlib import Path
from postergenre.inference.ray_runner import run_on_ray
run = run_on_ray([sys.argv[1]], output=Path(sys.argv[2]), quiet=True, actor_cpus=2)
print(run.done)
"""

TWO_NODES = """
import json, subprocess, sys, time
import ray
from ray.cluster_utils import Cluster
import postergenre.inference.ray_runner as R

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)

@ray.remote(num_cpus=0)
class Tally:
    def __init__(self):
        self.rows = {}
    def add(self, node, n):
        self.rows[node] = self.rows.get(node, 0) + n
    def get(self):
        return self.rows

tally = Tally.options(name="tally").remote()

class Counted(R.PosterPredictor):  # each call says which node scored how many rows
    def __call__(self, batch):
        out = super().__call__(batch)
        ray.get_actor("tally").add.remote(ray.get_runtime_context().get_node_id(), out.num_rows)
        return out

R.PosterPredictor = Counted
try:
    t = time.perf_counter()
    run = R.run_on_ray([sys.argv[1]], output=__import__("pathlib").Path(sys.argv[2]), quiet=True)
    wall = time.perf_counter() - t
    time.sleep(0.5)
    rows = ray.get(tally.get.remote())
    print(json.dumps({"rows": run.done, "wall_s": round(wall, 2), "nodes": len(ray.nodes()),
                      "rows_by_node": sorted(rows.values())}))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def _rate(r: dict, n: int) -> dict:
    return r | {"posters_per_s": round(n / r["wall_s"], 2)}


def best(cmd: list[str], env: dict, n: int, before=None, repeats: int = REPEATS) -> dict:
    """The fastest of ``repeats`` runs (each after ``before()``, a pause so that a Ray just shut
    down is gone), with every run's wall time."""
    runs = []
    for _ in range(repeats):
        time.sleep(3)
        if before:
            before()
        runs.append(timed(cmd, env))
    return _rate(min(runs, key=lambda r: r["wall_s"]), n) | {"walls_s": [r["wall_s"] for r in runs]}


def measure(images: Path, n: int, n_text: int, n_large: int, tmp: Path) -> dict:
    out: dict = {}
    cache = tmp / "cache"
    env = {"POSTERGENRE_CACHE": str(cache)}
    posters = sorted(images.glob("*.jpg"))
    timed([*CLI, "predict", str(posters[-1]), "--text", "on"], env)  # fills the export cache (image + text encoder)
    cat = subset(images, n, tmp / "catalogue")
    for p in cat.iterdir():  # the posters in the page cache: no run pays for the first read
        p.read_bytes()
    out["plain_text_off"] = best([*CLI, "predict", str(cat), "--output", str(tmp / "plain.jsonl"), "--force"], env, n)
    out["ray_text_off"] = best([*CLI, "predict", str(cat), "--cluster", "ray", "--quiet", "--force",
                                "--output", str(tmp / "ray.jsonl")], env, n)
    out["ray_text_off_1x2"] = best([sys.executable, "-c", ONE_ACTOR, str(cat), str(tmp / "ray1x2.jsonl")], env, n,
                                   before=lambda: (tmp / "ray1x2.jsonl").unlink(missing_ok=True))
    out["ray_overhead_text_off"] = round(out["ray_text_off"]["wall_s"] / out["plain_text_off"]["wall_s"] - 1, 3)
    if n_large:  # Ray's start (~6 s: the local Ray, the actors' model load, the shutdown) spread over more posters
        big = subset(images, n_large, tmp / "catalogue_large")
        for p in big.iterdir():
            p.read_bytes()
        out["plain_text_off_large"] = best([*CLI, "predict", str(big), "--output", str(tmp / "pl.jsonl"), "--force"], env,
                                           n_large, repeats=1)
        out["ray_text_off_large"] = best([*CLI, "predict", str(big), "--cluster", "ray", "--quiet", "--force",
                                          "--output", str(tmp / "rl.jsonl")], env, n_large, repeats=1)
        out["ray_overhead_text_off_large"] = round(out["ray_text_off_large"]["wall_s"] / out["plain_text_off_large"]["wall_s"] - 1, 3)
    cat_text = subset(images, n_text, tmp / "catalogue_text")
    for name, extra in (("plain_text_on", []), ("ray_text_on", ["--cluster", "ray", "--quiet"])):
        out[name] = best([*CLI, "predict", str(cat_text), "--text", "on", *extra, "--force",
                          "--output", str(tmp / f"{name}.jsonl")], env, n_text,
                         before=lambda: shutil.rmtree(cache / "ocr", ignore_errors=True))
    out["ray_speedup_text_on"] = round(out["ray_text_on"]["posters_per_s"] / out["plain_text_on"]["posters_per_s"], 3)
    time.sleep(3)
    import subprocess

    res = subprocess.run([sys.executable, "-c", TWO_NODES, str(cat), str(tmp / "two.jsonl")], capture_output=True, text=True,
                         env=dict(os.environ, **env), timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"two-node run failed:\n{res.stderr[-3000:]}")
    out["two_nodes"] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True, type=Path, help="the Images folder of a dataset in the study's layout")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--n-text", type=int, default=200)
    ap.add_argument("--n-large", type=int, default=6000, help="image only, once each: the overhead past Ray's start (0: skip)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "ray_predict.json")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="postergenre-bench-") as tmp:
        result = measure(a.images.resolve(), a.n, a.n_text, a.n_large, Path(tmp))
    result = {"command": " ".join(["python", *sys.argv]), "cpu_count": os.cpu_count(), "n": a.n, "n_text": a.n_text, "n_large": a.n_large} | result
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
