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
from postergenre.inference.int8 import INT8_MAX_DIFF, RANGES_FILE, calibrate
from postergenre.inference.onnx_engine import sample_posters
from postergenre.inference.scorer import load_scorer
from postergenre.modeling.artifact import DEFAULT_MODEL_DIR

STUDY = Path(__file__).parents[3] / "shared" / "datasets" / "movie-posters" / "Images"


def test_the_builtin_model_runs_int8_by_default_and_fp32_on_request(cache_dir):
    auto, fp32 = load_scorer("default", cache_dir=cache_dir), load_scorer("default", "onnx", cache_dir=cache_dir)
    assert auto.engine == "int8" and fp32.engine == "onnx" and "-int8-" in auto.path.name
    assert auto.genres == fp32.genres and auto.decision == fp32.decision


@needs_shared(STUDY)
def test_int8_scores_stay_close_to_fp32_on_study_posters(cache_dir):
    auto, fp32 = load_scorer("default", "int8", cache_dir=cache_dir), load_scorer("default", "onnx", cache_dir=cache_dir)
    batch = poster_batch(sorted(STUDY.glob("*.jpg"))[::250][:32], fp32.preprocess)
    a, b = auto.predict_proba_tensor(batch), fp32.predict_proba_tensor(batch)
    assert np.abs(a - b).max() < INT8_MAX_DIFF and np.abs(a - b).mean() < 0.005
    top3 = lambda s: [set(r) for r in np.argsort(-s)[:, :3]]
    assert np.mean([x == y for x, y in zip(top3(a), top3(b))]) >= 0.8  # the same three genres on most posters
    assert (a != b).any()  # really a different engine


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


def test_damaged_ranges_fall_back_to_fp32_under_auto_and_fail_clearly_for_int8(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    (model / RANGES_FILE).write_text("{not json")
    cache = tmp_path / "cache"
    with pytest.raises(ExportError, match="int8"):
        load_scorer(str(model), "int8", cache_dir=cache)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert load_scorer(str(model), cache_dir=cache).engine == "onnx"
    assert any("int8 engine unavailable" in str(x.message) for x in w)
    assert not list((cache / "onnx").glob("*int8*"))  # nothing half-written


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
