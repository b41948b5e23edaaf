"""Training killed with SIGKILL at random points, resumed with --resume: same model as an
uninterrupted run, and no partial file is ever taken for a finished one."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from postergenre.training.checkpoint import _EPOCH_DIR
from postergenre.modeling.model import load_model
from postergenre.training.train import checkpoint_dir


def latest_epoch(root) -> int:
    if not root.is_dir():
        return 0
    return max([int(m.group(1)) for p in root.iterdir() if (m := _EPOCH_DIR.match(p.name))], default=0)


def assert_checkpoints_complete(root):
    for p in root.iterdir() if root.is_dir() else []:
        if _EPOCH_DIR.match(p.name):  # anything named epoch-NNNN is whole; temp dirs start with "."
            assert (p / "tensors.safetensors").is_file() and json.loads((p / "state.json").read_text())["epoch"] > 0
        else:
            assert p.name.startswith("."), p


@pytest.mark.parametrize("mode,backbone,epochs", [("finetune", "pixels", 30), ("frozen", "efficientnet_lite0", 120)])
def test_sigkill_then_resume_gives_the_uninterrupted_model(tiny_data, tmp_path, mode, backbone, epochs):
    env = os.environ | {"OMP_NUM_THREADS": "1", "POSTERGENRE_CACHE": str(tmp_path / "cache")}
    args = [sys.executable, "-m", "postergenre", "train", "--data", str(tiny_data), "--backbone", backbone, "--mode", mode,
            "--epochs", str(epochs), "--patience", str(epochs), "--hidden", "32", "--seed", "3", "--workers", "0", "-q"]
    if mode == "finetune":
        args += ["--image-size", "32"]  # the pixels model at 350x350 would be a 370k-input layer: slow for no gain here
    ref = tmp_path / "ref"
    subprocess.run(args + ["--out", str(ref)], env=env, check=True, capture_output=True)

    out = tmp_path / "killed"
    root = checkpoint_dir(out)
    rng = random.Random(1234)
    kills = 0
    for attempt in range(4):
        proc = subprocess.Popen(args + ["--out", str(out)] + (["--resume"] if attempt else []), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        target = latest_epoch(root) + rng.randint(2, epochs // 6)
        deadline = time.time() + 120
        while proc.poll() is None and latest_epoch(root) < target and time.time() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.03))  # land anywhere: mid-epoch, mid-checkpoint write
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        assert_checkpoints_complete(root)
        assert not out.exists() or load_model(out)  # either absent or a whole model, never a partial one
    assert kills >= 3

    subprocess.run(args + ["--out", str(out), "--resume"], env=env, check=True, capture_output=True)
    a = json.loads((ref / "config.json").read_text())
    b = json.loads((out / "config.json").read_text())
    for k in ("micro_recall_at_3", "mAP", "micro_f1", "hamming_loss"):
        assert b["validation_metrics"][k] == pytest.approx(a["validation_metrics"][k], abs=1e-4), k
    ha = json.loads((ref / "history.json").read_text())
    hb = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in hb] == [r["epoch"] for r in ha]  # every epoch exactly once
    assert [r["val_mAP"] for r in hb] == pytest.approx([r["val_mAP"] for r in ha], abs=1e-4)
    assert not root.exists()  # checkpoints are cleared once the model is saved


def test_resume_refuses_checkpoints_of_another_run(tiny_data, tmp_path):
    from typer.testing import CliRunner

    from postergenre.app.cli import app

    env = os.environ | {"OMP_NUM_THREADS": "1", "POSTERGENRE_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "m"
    base = [sys.executable, "-m", "postergenre", "train", "--data", str(tiny_data), "--out", str(out), "--backbone", "pixels",
            "--mode", "finetune", "--image-size", "32", "--epochs", "40", "--patience", "40", "--workers", "0", "-q"]
    proc = subprocess.Popen(base, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while latest_epoch(checkpoint_dir(out)) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = CliRunner().invoke(app, [str(a) for a in base[3:]] + ["--lr", "0.5", "--resume"])
    assert res.exit_code == 2 and "different run" in res.stderr
