"""scripts/rebuild_builtin.py (issue 28) end to end on a tiny generated dataset, on CPU: every
step runs (finetune, calibrate, text branch, int8, the test part, card), a second run skips every
step, and the model it built predicts with the default engine and with --text on. Also: the GPU
step's model comes back as a tar in parts, and the rebuild joins them."""

from __future__ import annotations

import functools
import importlib.util
import io
import json
import re
import shutil
import sys
import tarfile
import time
from contextlib import redirect_stdout
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from conftest import REPO, run, write_dataset

sys.path.insert(0, str(Path(__file__).parents[1] / "text"))
from worded import WORDS, draw_words  # noqa: E402

SCRIPT = REPO / "scripts" / "rebuild_builtin.py"
STEPS = ("split", "finetune", "calibrate", "text", "int8", "test", "card")


@functools.cache
def rebuild_module():
    spec = importlib.util.spec_from_file_location("rebuild_builtin", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def worded_dataset(root: Path, n: int, seed: int, prefix: str, quirks: bool) -> Path:
    """write_dataset's posters with their genres' words drawn on them (what OCR reads), Ids ``<prefix>NNNNNNN``."""
    write_dataset(root, n=n, seed=seed, quirks=quirks)
    csv = root / "train.csv"
    csv.write_text(csv.read_text().replace("\ntt", f"\n{prefix}"))
    labels = pd.read_csv(csv).drop_duplicates("Id").set_index("Id")
    for path in sorted((root / "Images").glob("*.jpg")):
        pid = prefix + path.stem[2:]
        words = [w for g, w in WORDS.items() if pid in labels.index and labels.loc[pid, g] == 1]
        draw_words(Image.open(path), words).save(root / "Images" / f"{pid}.jpg", quality=92)
        if pid != path.stem:
            path.unlink()
    return root


def rebuild(*args) -> tuple[dict[str, tuple[str, str]], float]:
    """The script in this process: ``{step: (state, detail)}`` from its status lines, and its seconds."""
    out, t = io.StringIO(), time.time()
    with redirect_stdout(out):
        code = rebuild_module().main([str(a) for a in args])
    assert code == 0, out.getvalue()
    lines = [re.match(r"^(\w+)\s+(done|skipped|FAILED)\s+[\d.]+ s\s*(.*)$", line) for line in out.getvalue().splitlines()]
    return {m[1]: (m[2], m[3]) for m in lines if m}, time.time() - t


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    root = tmp_path_factory.mktemp("rebuild")
    data = worded_dataset(root / "movie-posters", 24, 0, "tt", quirks=True)
    extra = worded_dataset(root / "extra-posters", 8, 5, "xt", quirks=False)
    args = ["--data", data, "--extra-data", extra, "--out", root / "out", "--epochs", 1, "--image-size", "64x48",
            "--device", "cpu", "--quiet"]
    first, _ = rebuild(*args)
    second, seconds = rebuild(*args)
    return root / "out" / "model", data, first, second, seconds


def test_every_step_runs_and_leaves_its_output(rebuilt):
    model, _, first, _, _ = rebuilt
    assert {step: state for step, (state, _) in first.items()} == {step: "done" for step in STEPS}, first
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["mode"] == "finetune" and cfg["backbone"]["in_artifact"] and cfg["recipe"]["seed"] == 1
    assert cfg["data"]["split_fingerprint"] == first["split"][1].split()[0]
    # train fitted it on one view of these very posters, as every engine scores: nothing to fit again
    assert cfg["calibration"]["kind"] == "platt" and not cfg["recipe"]["mirror_eval"] and "calibrated_on" not in cfg["data"]
    assert cfg["text"]["test"]["text_on"] and (model / "text.safetensors").is_file()
    int8 = cfg["int8"]
    assert (model / int8["ranges"]).is_file() and (model / int8["vnni"]["head"]).is_file()
    assert int8["blocks"] == list(range(7, 16)) and int8["vnni"]["blocks"] == list(range(16))
    assert len(int8["vnni"]["sample_scores"]) == 6 and "fp32" in int8["validation"] and "fp32" in int8["test"]
    test = json.loads((model / "test_default_engine.json").read_text())
    assert set(test) >= {"fp32", "int8_plain", "int8_vnni"} and all(set(test[e]) == {"text_off", "text_on"}
                                                                    for e in ("fp32", "int8_plain", "int8_vnni"))
    assert cfg["test_metrics"]["mAP"] == test["fp32"]["text_off"]["mAP"]  # the test part, scored as deployed
    card = (model / "MODEL.md").read_text()
    assert "every layer tuned end to end" in card and "int8 engine" in card and "Test metrics" in card


def test_a_second_run_skips_every_step(rebuilt):
    _, _, _, second, seconds = rebuilt
    assert {step: state for step, (state, _) in second.items()} == {"split": "done"} | {s: "skipped" for s in STEPS[1:]}
    assert seconds < 30


def test_the_rebuilt_model_predicts_with_the_default_engine_and_with_text(rebuilt):
    model, data, _, _, _ = rebuilt
    poster = sorted((data / "Images").glob("*.jpg"))[1]
    for extra in ([], ["--text", "on"]):
        r = run("predict", poster, "--model", model, "--format", "json", *extra)
        assert r.exit_code == 0, r.stdout + r.stderr
        (row,) = json.loads(r.stdout)
        assert row["error"] is None and len(row["genres"]) == 4 and len(row["predicted"]) == 3
        assert all(0.0 <= g["score"] <= 1.0 for g in row["genres"])
        if extra:
            assert set(row["text"].split()) & set(WORDS.values()), row["text"]  # it read the words


def test_the_gpu_steps_model_comes_back_in_parts_and_is_joined(rebuilt, tmp_path):
    """The GPU step sends the model directory back as model.tar.00, .01, ... (16 MiB a file at most)."""
    model = rebuilt[0]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for p in sorted(model.iterdir()):
            t.add(p, arcname=p.name)
    blob, parts = buf.getvalue(), tmp_path / "from-gpu"
    parts.mkdir()
    size = len(blob) // 3 + 1
    for i in range(3):
        (parts / f"model.tar.{i:02d}").write_bytes(blob[i * size:(i + 1) * size])
    dest = tmp_path / "model"
    assert "3 part(s)" in rebuild_module().import_finetuned(parts, dest)
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in model.iterdir())
    assert all((dest / p.name).read_bytes() == p.read_bytes() for p in model.iterdir())
    with pytest.raises(rebuild_module().StepFailed, match="neither a model directory"):
        rebuild_module().import_finetuned(tmp_path / "empty-or-missing", tmp_path / "nothing")
    shutil.rmtree(dest)


def test_install_swaps_the_whole_folder_and_says_what_to_pin(rebuilt, tmp_path):
    model, dest = rebuilt[0], tmp_path / "default_model"
    dest.mkdir()
    (dest / "old_only.json").write_text("{}")  # a file of the old model the new one lacks
    changed, detail = rebuild_module().step_install(model, dest)
    assert changed and "test_builtin_scores.py --write" in detail and re.search(r"fingerprint there: [0-9a-f]{16}$", detail)
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in model.iterdir())
    assert rebuild_module().step_install(model, dest) == (False, f"{dest} already holds it")
    assert not list(tmp_path.glob(".default_model.*"))
