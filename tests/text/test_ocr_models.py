"""The lean copy of RapidOCR's recognizer: fewer ops, the same text and scores as the original."""

from __future__ import annotations

import collections
import warnings
from pathlib import Path

import numpy as np
import onnx
from PIL import Image

from postergenre.text.ocr_models import lean_copy, lean_model, rapidocr_model

from conftest import MOVIE_POSTERS
from worded import draw_words

# Generated posters, so the comparison is real in a clone without ../shared: words in several
# colours, sizes and lengths on dark and light grounds, each one read by the original.
GENERATED = [(["MIDNIGHT", "SCREAM"], (90, 20, 20), 26), (["LOVE", "IN PARIS"], (20, 40, 90), 30),
             (["THE LAST", "SUMMER"], (30, 30, 30), 24), (["RUN"], (10, 70, 30), 40),
             (["GALAXY", "WARS", "2049"], (60, 0, 60), 22), (["KATE &", "LEOPOLD"], (120, 90, 10), 26)]


def _engine(rec_path=None):
    from rapidocr_onnxruntime import RapidOCR

    kw = {"rec_model_path": str(rec_path)} if rec_path else {}
    return RapidOCR(det_limit_side_len=320, det_limit_type="max", intra_op_num_threads=1, inter_op_num_threads=1, **kw)


def test_the_rewrite_folds_every_affine_block_and_hard_swish(tmp_path):
    done = lean_model(rapidocr_model("Rec"), tmp_path / "rec.onnx")
    assert done["affine_folded"] == 28 and done["hardswish_fused"] == 28 and done["max_abs_diff"] < 1e-4
    ops = lambda p: collections.Counter(n.op_type for n in onnx.load(str(p)).graph.node)
    before, after = ops(rapidocr_model("Rec")), ops(tmp_path / "rec.onnx")
    assert after["Div"] == before["Div"] - 28 and after["Clip"] == before["Clip"] - 28 and after["Conv"] == before["Conv"]
    assert onnx.load(str(tmp_path / "rec.onnx")).metadata_props[0].key == "character"  # the alphabet travels with it


def test_the_lean_recognizer_reads_what_the_original_reads(cache_dir):
    """Same lines and the same confidences (to 3 decimals) on generated posters, and on real ones
    where ../shared is there."""
    images = [np.asarray(draw_words(Image.new("RGB", (200, 300), ground), words, size)) for words, ground, size in GENERATED]
    images += [np.asarray(Image.open(p).convert("RGB")) for p in sorted((MOVIE_POSTERS / "Images").glob("*.jpg"))[::400][:8]]
    lean = lean_copy(rapidocr_model("Rec"), cache_dir)
    assert lean.parent == Path(cache_dir) / "ocr-models"
    orig, new = _engine(), _engine(lean)
    read = lambda eng, a: [(t, round(float(s), 3)) for _, t, s in (eng(a)[0] or [])]
    pairs = [(read(orig, a), read(new, a)) for a in images]
    assert sum(bool(a) for a, _ in pairs) >= 5  # real text was read, so the comparison means something
    assert [a for a, _ in pairs] == [b for _, b in pairs]


def test_a_model_the_rewrite_cannot_load_is_used_as_it_is(tmp_path):
    bad = tmp_path / "rec.onnx"
    bad.write_bytes(b"not an onnx model")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert lean_copy(bad, tmp_path / "cache") == bad
    assert "as it is" in str(w[0].message)
    assert not list((tmp_path / "cache").rglob("*.onnx"))  # nothing half-written left behind
