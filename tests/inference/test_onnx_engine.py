"""ONNX export and engine: same scores as PyTorch, self-contained files, loud failures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from postergenre.data.images import load_rgb
from postergenre.modeling.model import load_model
from postergenre.inference.scorer import as_engine, load_scorer
from postergenre.inference.onnx_engine import EXPORT_ATOL, ExportError, OnnxModel, export_onnx, sample_posters
from postergenre.inference.predict import predict_paths

from conftest import run


@pytest.fixture(scope="module")
def default_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "default.onnx"
    report = export_onnx(load_model("default"), out)
    return out, report


def test_export_matches_pytorch_on_real_posters(default_export):
    out, report = default_export
    assert report["n_checked"] == len(sample_posters()) >= 3
    assert report["max_abs_diff"] <= EXPORT_ATOL
    # independently of the export's own check: scores through both engines on the same batch
    torch_model, onnx_model = load_model("default"), OnnxModel(out)
    batch = torch.stack([torch_model.preprocess(load_rgb(p)) for p in sample_posters()])
    np.testing.assert_allclose(onnx_model.predict_proba_tensor(batch), torch_model.predict_proba_tensor(batch), atol=EXPORT_ATOL)


def test_export_is_self_contained(default_export):
    out, _ = default_export
    m = OnnxModel(out)
    ref = load_model("default")
    assert m.genres == ref.genres and m.preprocess == ref.preprocess
    assert m.decision == ref.decision and m.config.weights_sha256 == ref.config.weights_sha256


def test_predict_same_results_with_both_engines(default_export):
    out, _ = default_export
    torch_res = list(predict_paths(load_scorer("default", "torch"), sample_posters()))
    onnx_res = list(predict_paths(load_scorer(out), sample_posters()))
    for a, b in zip(torch_res, onnx_res):
        assert a["predicted"] == b["predicted"]
        sa = {g["genre"]: g["score"] for g in a["genres"]}
        sb = {g["genre"]: g["score"] for g in b["genres"]}
        assert max(abs(sa[g] - sb[g]) for g in sa) <= EXPORT_ATOL


def test_auto_engine_exports_once_into_the_cache(tiny_model, tmp_path):
    m = load_model(tiny_model)
    scorer = as_engine(m, "auto", cache_dir=tmp_path)
    assert isinstance(scorer, OnnxModel)
    files = list((tmp_path / "onnx").glob("*.onnx"))
    assert len(files) == 1 and not list((tmp_path / "onnx").glob(".*tmp"))
    mtime = files[0].stat().st_mtime_ns
    as_engine(m, "auto", cache_dir=tmp_path)
    assert files[0].stat().st_mtime_ns == mtime  # reused, not re-exported
    assert as_engine(m, "torch") is m


def test_export_refuses_a_mismatch_and_leaves_no_file(tiny_model, tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="differ from PyTorch"):
        export_onnx(load_model(tiny_model), out, atol=-1.0)  # no export can pass a negative tolerance
    assert list(tmp_path.iterdir()) == []


def test_cli_export_and_predict_with_onnx_file(tiny_model, poster_dir, tmp_path):
    out = tmp_path / "tiny.onnx"
    res = run("export", "--model", tiny_model, "--out", out, "--check", poster_dir)
    assert res.exit_code == 0, res.output
    assert "max |diff|" in res.stdout
    a = json.loads(run("predict", poster_dir, "--model", out, "--format", "json").stdout)
    b = json.loads(run("predict", poster_dir, "--model", tiny_model, "--engine", "torch", "--format", "json").stdout)
    assert [r["predicted"] for r in a] == [r["predicted"] for r in b]


def test_cli_onnx_errors(tiny_model, tmp_path, poster_dir):
    res = run("export", "--model", tiny_model, "--out", tmp_path / "m.bin")
    assert res.exit_code == 2 and "must end in .onnx" in res.stderr
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    res = run("predict", poster_dir, "--model", bad)
    assert res.exit_code == 2 and "bad.onnx: cannot load ONNX model" in res.stderr
    res = run("predict", poster_dir, "--model", bad, "--engine", "torch")
    assert res.exit_code == 2 and "runs only with the onnx engine" in res.stderr
    res = run("predict", poster_dir, "--model", tiny_model, "--engine", "tensorrt")
    assert res.exit_code == 2 and "unknown engine" in res.stderr


def test_evaluate_same_figures_with_both_engines(tiny_model, tiny_data, cache_dir):
    args = ("evaluate", "--data", tiny_data, "--model", tiny_model, "--format", "json", "--cache-dir", cache_dir)
    a = json.loads(run(*args, "--engine", "torch").stdout)
    b = json.loads(run(*args, "--engine", "onnx").stdout)
    for k in ("micro_recall_at_3", "mAP", "micro_f1"):
        assert a[k] == pytest.approx(b[k], abs=1e-3)
