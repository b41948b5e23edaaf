"""The int8 engine: the built-in model's default on CPU, built from the fp32 export and the shipped
ranges without posters or PyTorch, close to fp32 on real posters; fp32 on request; clear errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import PREDICT_PROBE, needs_shared
from postergenre.data.images import poster_batch
from postergenre.errors import ExportError, UsageError
from postergenre.inference.int8 import INT8_MAX_DIFF, RANGES_FILE, calibrate, int8_plan
from postergenre.inference.int8_head import HEAD_FILE, fit_int8_head
from postergenre.inference.onnx_engine import sample_posters
from postergenre.inference.scorer import load_scorer
from postergenre.modeling.artifact import DEFAULT_MODEL_DIR

STUDY = Path(__file__).parents[3] / "shared" / "datasets" / "movie-posters" / "Images"


def test_the_builtin_model_runs_int8_by_default_and_fp32_on_request(cache_dir):
    auto, fp32 = load_scorer("default", cache_dir=cache_dir), load_scorer("default", "onnx", cache_dir=cache_dir)
    assert auto.engine == "int8" and fp32.engine == "onnx" and "-int8-" in auto.path.name
    assert auto.genres == fp32.genres and auto.decision == fp32.decision


def section_genres() -> list[str]:
    return json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())["genres"]


def test_the_plan_follows_the_cpu_and_the_builtin_model_has_both(monkeypatch):
    section = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())["int8"]
    plain, vnni = int8_plan(section, vnni=False), int8_plan(section, vnni=True)
    assert plain == {"plan": "plain", "blocks": section["blocks"], "head": None, "sample_scores": None}
    assert vnni["plan"] == "vnni" and vnni["blocks"] == list(range(16)) and (DEFAULT_MODEL_DIR / vnni["head"]).is_file()
    assert np.asarray(vnni["sample_scores"]).shape == (len(sample_posters()), len(section_genres()))
    assert int8_plan({"blocks": [7]}, vnni=True)["plan"] == "plain"  # a model without a VNNI plan
    for forced in ("vnni", "plain"):
        monkeypatch.setenv("POSTERGENRE_INT8_PLAN", forced)
        assert int8_plan(section)["plan"] == forced
    monkeypatch.setenv("POSTERGENRE_INT8_PLAN", "fast")
    with pytest.warns(UserWarning, match="POSTERGENRE_INT8_PLAN='fast' is neither"):
        assert int8_plan(section)["plan"] in ("vnni", "plain")


@needs_shared(STUDY)
@pytest.mark.parametrize("plan", ["plain", "vnni"])
def test_int8_scores_stay_close_to_fp32_on_study_posters(cache_dir, monkeypatch, plan):
    monkeypatch.setenv("POSTERGENRE_INT8_PLAN", plan)
    auto, fp32 = load_scorer("default", "int8", cache_dir=cache_dir), load_scorer("default", "onnx", cache_dir=cache_dir)
    assert json.loads(auto.session.get_modelmeta().custom_metadata_map["postergenre"])["int8"]["head"] == (
        HEAD_FILE if plan == "vnni" else None)
    batch = poster_batch(sorted(STUDY.glob("*.jpg"))[::250][:32], fp32.preprocess)
    a, b = auto.predict_proba_tensor(batch), fp32.predict_proba_tensor(batch)
    # the VNNI plan's head was tuned and calibrated again: a little further from fp32 by design
    assert np.abs(a - b).max() < INT8_MAX_DIFF and np.abs(a - b).mean() < (0.005 if plan == "plain" else 0.01)
    top3 = lambda s: [set(r) for r in np.argsort(-s)[:, :3]]
    assert np.mean([x == y for x, y in zip(top3(a), top3(b))]) >= 0.8  # the same three genres on most posters
    assert (a != b).any()  # really a different engine
    from fastapi.testclient import TestClient

    from postergenre.app.serve import create_app

    with TestClient(create_app(str(auto.path), background_load=False)) as c:  # the API says which plan it runs
        h = c.get("/api/health").json()
    assert h["engine"] == "int8" and h["int8"] == {"blocks": list(range(16)) if plan == "vnni" else list(range(7, 16)),
                                                    "head": HEAD_FILE if plan == "vnni" else None}


def test_one_poster_builds_int8_from_the_export_without_torch(tmp_path):
    """A cache holding only the fp32 export (as an older install leaves it): the int8 file is made
    from it and the shipped ranges, in a process that never imports PyTorch."""
    cache = tmp_path / "cache"
    load_scorer("default", "onnx", cache_dir=cache)  # the fp32 export (this one may use torch)
    assert not list((cache / "onnx").glob("*-int8-*"))
    env = {"POSTERGENRE_CACHE": str(cache), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", PREDICT_PROBE, str(sample_posters()[0])], capture_output=True, text=True,
                       env=env, timeout=600)
    probe = json.loads(r.stderr.strip().splitlines()[-1])
    assert probe["code"] in (0, None) and not probe["torch"], r.stderr[-2000:]
    assert len(list((cache / "onnx").glob("*-int8-*.onnx"))) == 1 and not list((cache / "onnx").glob(".*tmp"))


def test_a_model_without_ranges_is_fp32_under_auto_and_refused_for_int8(tiny_model, cache_dir):
    assert load_scorer(str(tiny_model), cache_dir=cache_dir).engine == "onnx"
    with pytest.raises(UsageError, match="no int8 calibration"):
        load_scorer(str(tiny_model), "int8", cache_dir=cache_dir)


def refused_for_int8_and_fp32_under_auto(model: Path, cache: Path, match: str) -> None:
    """``--engine int8`` fails with ``match``; ``auto`` warns and runs fp32; no int8 file is left."""
    with pytest.raises(ExportError, match=match):
        load_scorer(str(model), "int8", cache_dir=cache)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert load_scorer(str(model), cache_dir=cache).engine == "onnx"
    assert any("int8 engine unavailable" in str(x.message) for x in w)
    assert not list((cache / "onnx").glob("*int8*"))  # nothing half-written


def test_damaged_ranges_fall_back_to_fp32_under_auto_and_fail_clearly_for_int8(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    (model / RANGES_FILE).write_text("{not json")
    refused_for_int8_and_fp32_under_auto(model, tmp_path / "cache", "int8")


def test_calibrate_writes_ranges_a_model_can_be_quantized_with(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    (model / RANGES_FILE).unlink()
    section = calibrate(model, sample_posters() * 2, blocks=(14, 15), cache_dir=tmp_path / "cache")
    assert section["blocks"] == [14, 15] and section["calibration_posters"] == 12
    assert json.loads((model / RANGES_FILE).read_text())  # ONNX Runtime's calibration cache, readable JSON
    config = json.loads((model / "config.json").read_text())
    config["int8"] = section
    (model / "config.json").write_text(json.dumps(config))
    scorer = load_scorer(str(model), "int8", cache_dir=tmp_path / "cache")
    assert scorer.engine == "int8"
    assert scorer.predict_proba_tensor(poster_batch(sample_posters(), scorer.preprocess)).shape == (6, len(scorer.genres))


def test_a_head_that_does_not_fit_the_export_is_refused_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTERGENRE_INT8_PLAN", "vnni")
    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    from safetensors.numpy import save_file

    save_file({"model.head.net.1.weight": np.zeros((3, 4), np.float32)}, str(model / HEAD_FILE))
    refused_for_int8_and_fp32_under_auto(model, tmp_path / "cache", "not a head tensor")


def test_fit_int8_head_writes_a_head_the_int8_engine_then_uses(tmp_path, monkeypatch):
    """Tuned on a few posters for one epoch: a real, if tiny, change the built int8 file carries."""
    monkeypatch.setenv("POSTERGENRE_INT8_PLAN", "vnni")
    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    (model / HEAD_FILE).unlink()
    config = json.loads((model / "config.json").read_text())
    posters = sample_posters()
    y = np.zeros((len(posters), len(config["genres"])), np.float32)
    y[:, 0] = 1
    section = fit_int8_head(model, (posters * 2, np.vstack([y, y]), None), (posters, y), blocks=(14, 15),
                            recipe={"epochs": 1, "lr": 1e-3, "batch_size": 4, "weight_decay": 0.0, "seed": 0},
                            cache_dir=tmp_path / "cache")
    assert section["head"] == HEAD_FILE and section["n_train"] == 12 and len(section["history"]) == 1
    assert (model / HEAD_FILE).is_file() and not list(model.glob(".*.tmp*"))  # no temp file left (either naming)
    config["int8"]["vnni"] = section
    config["int8"]["blocks"] = [14, 15]  # the plain plan: the same blocks with the fp32 head
    (model / "config.json").write_text(json.dumps(config))
    batch = poster_batch(posters, load_scorer(str(model), "onnx", cache_dir=tmp_path / "cache").preprocess)
    tuned = load_scorer(str(model), "int8", cache_dir=tmp_path / "cache").predict_proba_tensor(batch)
    monkeypatch.setenv("POSTERGENRE_INT8_PLAN", "plain")
    plain = load_scorer(str(model), "int8", cache_dir=tmp_path / "cache").predict_proba_tensor(batch)
    assert tuned[:, 0].mean() > plain[:, 0].mean()  # it learnt that every one of them is genre 0
