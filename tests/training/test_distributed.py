"""torchrun: 1 and 2 CPU processes (gloo on loopback) train the same model; sharded prediction
splits a catalogue without overlap and merges into the unsharded result."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def torchrun(n: int, *args, env_extra=None) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1"} | (env_extra or {})
    return subprocess.run([TORCHRUN, "--standalone", "--nproc-per-node", str(n), "-m", "postergenre", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("mode,extra", [
    ("frozen", ["--backbone", "efficientnet_lite0", "--epochs", "20"]),
    # 36 train posters, global batch 12 = 2 x 6: each global batch is the single-process batch split in two
    # (the study's recipe: no augmentation, whose draws are per rank)
    ("finetune", ["--backbone", "pixels", "--image-size", "32", "--epochs", "4", "--batch-size", "12", "--dropout", "0", "--workers", "0",
                  "--recipe", "study"]),
])
def test_one_and_two_processes_train_the_same_model(tiny_data, tmp_path, mode, extra):
    results = {}
    for n in (1, 2):
        out = tmp_path / f"m{n}"
        p = torchrun(n, "train", "--data", tiny_data, "--out", out, "--mode", mode, "--val-fraction", "0.25", "--seed", "2",
                     "--cache-dir", tmp_path / f"cache{n}", "-q", *extra)
        assert p.returncode == 0, p.stderr[-3000:]
        assert p.stdout.count("saved ") == 1  # only rank 0 reports and writes
        results[n] = (json.loads((out / "config.json").read_text()), json.loads((out / "history.json").read_text()))
    (c1, h1), (c2, h2) = results[1], results[2]
    assert c1["data"]["split_fingerprint"] == c2["data"]["split_fingerprint"]  # all ranks agree on the split
    for k in ("micro_recall_at_3", "mAP", "micro_f1", "hamming_loss"):
        assert c2["validation_metrics"][k] == pytest.approx(c1["validation_metrics"][k], abs=1e-3), k
    assert [r["val_loss"] for r in h2] == pytest.approx([r["val_loss"] for r in h1], abs=1e-3)
    assert [r["train_loss"] for r in h2] == pytest.approx([r["train_loss"] for r in h1], abs=1e-3)
    assert not list(tmp_path.glob(".m2.checkpoints")) and not list(tmp_path.glob(".m2.tmp*"))


def rows(path: Path) -> list[dict]:
    return sorted(csv.DictReader(path.open()), key=lambda r: r["path"])


def test_shards_split_without_overlap_and_merge_to_the_whole(tiny_model, tiny_data, tmp_path):
    images = tiny_data / "Images"
    whole = tmp_path / "whole.csv"
    assert run("predict", images, "--model", tiny_model, "--engine", "torch", "--output", whole).exit_code == 0
    out = tmp_path / "genres.csv"
    seen = set()
    for i in range(3):
        res = run("predict", images, "--model", tiny_model, "--engine", "torch", "--shard", f"{i}/3", "--output", out)
        assert res.exit_code == 0, res.output
        mine = {r["path"] for r in csv.DictReader((tmp_path / f"genres.shard-{i}-of-3.csv").open())}
        assert mine and not mine & seen  # no overlap
        seen |= mine
    shutil.copy(tmp_path / "genres.shard-2-of-3.csv", tmp_path / "spare.csv")
    (tmp_path / "genres.shard-2-of-3.csv").unlink()
    res = run("merge", out)
    assert res.exit_code == 2 and "shard(s) 2 of 3 are missing" in res.stderr
    shutil.copy(tmp_path / "spare.csv", tmp_path / "genres.shard-2-of-3.csv")
    res = run("merge", out)
    assert res.exit_code == 0, res.output
    assert rows(out) == rows(whole)
    assert not list(tmp_path.glob("genres.shard-*"))
    assert run("predict", images, "--shard", "3/3").exit_code == 2


def test_predict_under_torchrun_shards_by_rank_and_merges(tiny_model, tiny_data, tmp_path):
    images = tiny_data / "Images"
    whole = tmp_path / "whole.csv"
    assert run("predict", images, "--model", tiny_model, "--engine", "torch", "--output", whole).exit_code == 0
    out = tmp_path / "tr.csv"
    p = torchrun(2, "predict", images, "--model", tiny_model, "--engine", "torch", "--output", out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "merged 2 shards" in p.stderr
    assert rows(out) == rows(whole)
