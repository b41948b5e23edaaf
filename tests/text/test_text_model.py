"""A model with a text branch, end to end: train-text, predict/evaluate --text on|off, the
pipeline, the API, and the cold path with text on (no PyTorch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from conftest import PREDICT_PROBE as PROBE
from conftest import run
from worded import WORDS, draw_words, text_model, worded_data  # noqa: F401 - fixtures

import postergenre
import postergenre.app.serve


def _predict_json(*args) -> list[dict]:
    res = run("predict", *args, "--format", "json", "--quiet")
    assert res.exit_code == 0, res.stdout + res.stderr
    return json.loads(res.stdout)


def _scores(r: dict) -> dict:
    return {g["genre"]: g["score"] for g in r["genres"]}


def test_train_text_writes_the_branch_and_records_it(text_model):
    config = json.loads((text_model / "config.json").read_text())
    assert (text_model / "text.safetensors").is_file()
    text = config["text"]
    assert text["ocr"]["det_limit_side_len"] == 320 and text["ocr"]["engine"] == "rapidocr-onnxruntime"
    assert [e["kind"] for e in text["encoders"]] == ["char_ngrams_tfidf", "sentence_embedding"]
    assert text["posters_with_text"]["train"] > 0
    assert set(text["validation"]) == {"text_off", "text_on"}
    assert "Text (`--text on`): OCR with rapidocr-onnxruntime" in (text_model / "MODEL.md").read_text()


def test_text_off_is_the_image_model_and_text_on_reads_and_fuses(text_model, worded_data, tmp_path):
    posters = sorted((worded_data / "Images").glob("*.jpg"))[:6]
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 300), (120, 120, 120)).save(blank)
    off = _predict_json(*posters, blank, "--model", text_model)
    on = _predict_json(*posters, blank, "--model", text_model, "--text", "on")
    assert all(r["text"] is None for r in off)
    assert all(isinstance(r["text"], str) for r in on)
    assert sum(any(w in r["text"] for w in WORDS.values()) for r in on) >= 4  # OCR reads the drawn words
    assert on[-1]["text"] == "" and _scores(on[-1]) == _scores(off[-1])  # no text: the image scores exactly
    assert any(_scores(a) != _scores(b) for a, b in zip(on, off) if a["text"])


def test_text_on_scores_are_the_branch_fusion_of_the_image_scores(text_model, worded_data):
    from postergenre.inference.scorer import load_scorer, load_text_reader

    posters = [str(p) for p in sorted((worded_data / "Images").glob("*.jpg"))[:4]]
    reader = load_text_reader(text_model)
    texts = reader.read(posters)
    pipe = postergenre.pipeline(str(text_model), text=True)
    image = postergenre.pipeline(str(text_model)).scores(posters)
    np.testing.assert_allclose(pipe.scores(posters), reader.branch.combine(image, texts), atol=1e-6)
    assert pipe.read(posters) == texts and pipe.read(posters[0]) == texts[0]
    on = _predict_json(*posters, "--model", text_model, "--text", "on")
    for r, row in zip(on, pipe.scores(posters)):
        genres = load_scorer(text_model).genres
        assert abs(_scores(r)[genres[int(row.argmax())]] - float(row.max())) < 1e-5


def test_bad_inputs_with_text_on_give_results_not_crashes(text_model, tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    Image.new("RGB", (2, 3), (0, 0, 0)).save(tmp_path / "tiny.png")
    draw_words(Image.new("RGB", (200, 300)), ["ΑΘΗΝΑ", "東京"]).save(tmp_path / "nonlatin.png")
    results = _predict_json(tmp_path, "--model", text_model, "--text", "on")
    by_name = {os.path.basename(r["path"]): r for r in results}
    assert by_name["empty.jpg"]["error"] and by_name["junk.jpg"]["error"]
    assert by_name["tiny.png"]["error"] is None and by_name["tiny.png"]["text"] == ""
    assert by_name["nonlatin.png"]["error"] is None and isinstance(by_name["nonlatin.png"]["text"], str)
    csv_out = tmp_path / "out.csv"
    assert run("predict", tmp_path / "tiny.png", "--model", text_model, "--text", "on", "-o", csv_out, "-q").exit_code == 0
    assert csv_out.read_text().splitlines()[0].startswith("path,predicted,error,text,")


def test_a_model_without_text_branch_says_so(tiny_model, tmp_path):
    Image.new("RGB", (40, 60)).save(tmp_path / "p.png")
    res = run("predict", tmp_path / "p.png", "--model", tiny_model, "--text", "on")
    assert res.exit_code == 2 and "no text branch" in res.stderr


def test_evaluate_with_text_on_and_off(text_model, worded_data):
    out = {}
    for mode in ("off", "on"):
        res = run("evaluate", "--data", worded_data, "--model", text_model, "--text", mode, "--format", "json", "--quiet")
        assert res.exit_code == 0, res.stdout + res.stderr
        out[mode] = json.loads(res.stdout)
    assert out["on"]["n_posters"] == out["off"]["n_posters"]
    assert 0 <= out["on"]["mAP"] <= 1 and out["on"]["mAP"] != out["off"]["mAP"]


def test_the_api_reads_the_text_when_asked_and_not_by_default(text_model, worded_data):
    poster = sorted((worded_data / "Images").glob("*.jpg"))[0].read_bytes()
    with TestClient(postergenre.app.serve.create_app(str(text_model), background_load=False)) as client:
        assert client.get("/api/health").json()["text"] is True
        on = client.post("/api/predict", files={"file": ("p.jpg", poster, "image/jpeg")}, data={"text": "true"}).json()[0]
        default = client.post("/api/predict", files={"file": ("p.jpg", poster, "image/jpeg")}).json()[0]
    assert any(w in on["text"] for w in WORDS.values()) and default["text"] is None
    assert on["genres"] != default["genres"]  # the words moved the scores




def test_one_poster_with_text_on_imports_no_torch_once_exported(text_model, worded_data, tmp_path):
    poster = sorted((worded_data / "Images").glob("*.jpg"))[1]
    env = dict(os.environ, POSTERGENRE_CACHE=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", PROBE, str(poster), "--model", str(text_model), "--text", "on"],
                           capture_output=True, text=True, env=env, timeout=600) for _ in range(2)]
    first, again = (json.loads(r.stderr.strip().splitlines()[-1]) for r in runs)
    assert first["code"] in (0, None) and again["code"] in (0, None), runs[1].stderr
    assert not again["torch"] and not again["sklearn"]
    assert json.loads(runs[0].stdout) == json.loads(runs[1].stdout)
