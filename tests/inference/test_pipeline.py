"""The Python API for one call: ``postergenre.pipeline`` (Hugging Face style), and the model's
``predict``/``predict_proba`` on paths, bytes and PIL images."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import postergenre
from postergenre.errors import ImageLoadError, UsageError
from postergenre.modeling.model import DEFAULT_MODEL_DIR, load_model

from conftest import run


@pytest.fixture(scope="module")
def pipe(tiny_model):
    return postergenre.pipeline(model=str(tiny_model), engine="torch")


def test_one_poster_gives_labels_best_first(pipe, poster_dir):
    path = poster_dir / "action.jpg"
    got = pipe(path, top_k=2)
    assert [set(d) for d in got] == [{"label", "score"}] * 2
    assert got[0]["score"] >= got[1]["score"] and all(0 <= d["score"] <= 1 for d in got)
    every = pipe(str(path), top_k=None)
    assert sorted(d["label"] for d in every) == sorted(pipe.scorer.genres)
    assert every[:2] == got and pipe(path) == every[:3]  # default top_k=3: the study's rule


def test_paths_bytes_and_images_score_alike_and_as_the_cli(pipe, poster_dir, tiny_model):
    path = poster_dir / "comedy.jpg"
    by_path, by_bytes, by_image = pipe([path, path.read_bytes(), Image.open(path)], top_k=None)
    assert by_path == by_bytes
    scores = {d["label"]: d["score"] for d in by_path}
    assert all(abs(d["score"] - scores[d["label"]]) < 1e-3 for d in by_image)  # decoded without JPEG draft mode
    (cli,) = json.loads(run("predict", path, "--model", tiny_model, "--engine", "torch", "--format", "json").stdout)
    assert [(g["genre"], g["score"]) for g in cli["genres"]] == [(d["label"], round(d["score"], 6)) for d in by_path]


def test_the_onnx_engine_gives_the_same_scores(pipe, poster_dir, tiny_model):
    fast = postergenre.pipeline(model=tiny_model, engine="onnx")
    assert fast.scorer.engine == "onnx"
    posters = sorted(poster_dir.rglob("*.*g"))
    for a, b in zip(fast(posters, top_k=None), pipe(posters, top_k=None)):
        assert {d["label"] for d in a[:2]} == {d["label"] for d in b[:2]}
        assert max(abs(x["score"] - y["score"]) for x, y in zip(sorted(a, key=str), sorted(b, key=str))) < 1e-4


def test_a_loaded_model_can_be_wrapped(tiny_model, poster_dir):
    pipe = postergenre.pipeline(model=load_model(tiny_model), engine="torch")
    assert pipe(poster_dir / "action.jpg", top_k=1)[0]["label"] in pipe.scorer.genres


def test_bad_posters_and_arguments_are_user_errors(pipe, tmp_path):
    with pytest.raises(ImageLoadError, match=re.escape(str(tmp_path / "missing.jpg")) + ": file not found"):
        pipe(tmp_path / "missing.jpg")
    with pytest.raises(ImageLoadError, match="not an image"):
        pipe(b"some text, not an image")
    with pytest.raises(UsageError, match="cannot read a poster from a int"):
        pipe([1])
    with pytest.raises(UsageError, match="top_k"):
        pipe(Image.new("RGB", (60, 90)), top_k=0)


def test_model_predict_takes_paths(tiny_model, poster_dir):
    model = load_model(tiny_model)
    path = poster_dir / "sub" / "deeper" / "drama.png"
    by_path = model.predict_proba([str(path), path])
    assert by_path.shape == (2, len(model.genres)) and np.array_equal(by_path[0], by_path[1])
    assert np.allclose(model.predict_proba(path), by_path[:1])  # one poster alone
    image = Image.open(path)
    assert np.allclose(model.predict_proba([image]), by_path[:1], atol=1e-5)  # a PNG: no draft decoding
    assert model.predict([path]) == model.predict([image]) and len(model.predict([path])[0]) == 3
    tensor = model.preprocess.load(path)
    assert np.allclose(model.predict_proba([tensor]), by_path[:1], atol=1e-5)


def test_importing_the_package_stays_light():
    probe = "import sys, postergenre; print('postergenre.inference.pipelines' in sys.modules, 'numpy' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert res.stdout.split() == ["False", "False"], res.stderr


def test_the_samples_are_what_their_readme_says():
    samples = Path(postergenre.__file__).parent / "samples"
    listed = re.findall(r"^\| `(\w+\.jpg)` \| (tt\d+) \|", (samples / "README.md").read_text(), re.M)
    assert sorted(name for name, _ in listed) == sorted(p.name for p in samples.glob("*.jpg"))
    test_ids = set(json.loads((DEFAULT_MODEL_DIR / "split.json").read_text())["test"])
    assert {pid for _, pid in listed} <= test_ids  # none was seen in training or validation
    for p in samples.glob("*.jpg"):
        with Image.open(p) as im:
            assert im.height > im.width and p.stat().st_size < 40_000, p.name  # small portrait posters
