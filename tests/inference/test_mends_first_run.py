"""Issue 27, the first run after install: one line on stderr says the engine is being prepared
(once), and no other library's progress bar shows."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from postergenre import _io
from postergenre.text import ocr_models


@pytest.fixture
def fresh_process(monkeypatch):
    monkeypatch.setattr(_io, "_announced", False)  # as in a new process


def test_preparing_says_so_once(fresh_process, tiny_model, tmp_path, capsys):
    from postergenre.inference.scorer import load_scorer

    lean = ocr_models.lean_copy(ocr_models.rapidocr_model("Rec"), tmp_path)  # two things built: one line
    load_scorer(tiny_model, "onnx", cache_dir=tmp_path)
    assert lean.parent == tmp_path / "ocr-models" and list((tmp_path / "onnx").glob("*.onnx"))
    err = capsys.readouterr().err
    assert err.splitlines() == [f"preparing the CPU engine in {tmp_path} (once: ~{_io.PREPARE_SECONDS} s, "
                                f"with --text on ~{_io.PREPARE_TEXT_SECONDS} s)"], err
    load_scorer(tiny_model, "onnx", cache_dir=tmp_path / "elsewhere")
    assert capsys.readouterr().err == ""  # once a process


def test_a_cache_under_home_is_shown_with_a_tilde(fresh_process, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    _io.announce_preparation(tmp_path / ".cache" / "postergenre")
    assert capsys.readouterr().err.startswith("preparing the CPU engine in ~/.cache/postergenre (once")


def test_nothing_is_said_when_everything_is_cached(fresh_process, tiny_model, tmp_path, capsys):
    from postergenre.inference.scorer import load_scorer

    load_scorer(tiny_model, "onnx", cache_dir=tmp_path)
    capsys.readouterr()
    _io._announced = False
    load_scorer(tiny_model, "onnx", cache_dir=tmp_path)
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_the_text_encoder_export_shows_no_foreign_bar_and_skips_sentence_transformers(tmp_path):
    """In a process whose stderr is a pipe, as under CI: transformers drew its "Loading weights" bar
    anyway. Checking against sentence-transformers there cost its import (~0.3 GB of the first
    run's peak); the test suite holds the two equal instead (tests/text/test_branch.py)."""
    code = ("import sys; from pathlib import Path; from postergenre.text import embedding; "
            "embedding.export(Path(sys.argv[1])); from transformers.utils import logging; "
            "print('sentence_transformers' in sys.modules, logging.is_progress_bar_enabled())")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "encoder.onnx")], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, POSTERGENRE_CACHE=str(tmp_path)))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "True"]  # not imported; the bars are back on for whoever wants them
    assert "Loading weights" not in res.stderr and "it/s" not in res.stderr, res.stderr
    assert (tmp_path / "encoder.onnx").is_file()
