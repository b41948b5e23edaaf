"""The ``postergenre`` command, driven through typer's CliRunner (and once as a real process)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from postergenre.modeling.model import DEFAULT_MODEL_DIR

from conftest import LINE, NEW_POSTERS, needs_shared, parse_table, run

GENRES = ["Action", "Comedy", "Drama", "Horror"]
METRIC_KEYS = {"n_posters", "micro_recall_at_3", "precision_at_3", "recall_at_3", "mAP", "micro_f1", "macro_f1",
               "samples_f1", "hamming_loss", "subset_accuracy", "ece", "brier", "per_genre"}


@pytest.fixture(scope="module")
def mixed_dir(poster_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mixed")
    for name in ("action.jpg", "comedy.jpg"):
        (root / name).write_bytes((poster_dir / name).read_bytes())
    (root / "bad.jpg").write_text("this is text, not a JPEG")
    return root


# --- predict -------------------------------------------------------------------------------


def test_predict_table(tiny_model, poster_dir):
    res = run("predict", poster_dir / "action.jpg", poster_dir / "comedy.jpg", "--model", tiny_model)
    assert res.exit_code == 0, res.output
    table = parse_table(res.stdout)
    assert list(table) == ["action.jpg", "comedy.jpg"]
    for genres in table.values():
        assert len(genres) == 3 and len(set(genres)) == 3 and set(genres) <= set(GENRES)
    first = res.stdout.splitlines()[0]
    # the detail repeats the predicted genres with their scores
    detail = LINE.match(first)["detail"]
    assert re.fullmatch(r"\w+ \d\.\d\d, \w+ \d\.\d\d, \w+ \d\.\d\d", detail)


def test_predict_json(tiny_model, poster_dir):
    res = run("predict", poster_dir, "--model", tiny_model, "--format", "json")
    assert res.exit_code == 0, res.output
    results = json.loads(res.stdout)
    assert isinstance(results, list) and len(results) == 3  # recursive walk, readme.txt skipped
    assert [Path(r["path"]).name for r in results] == ["action.jpg", "comedy.jpg", "drama.png"]
    for r in results:
        assert set(r) == {"path", "genres", "predicted", "text", "error"}
        assert r["text"] is None  # text off: not read
        assert r["error"] is None
        assert sorted(g["genre"] for g in r["genres"]) == GENRES
        scores = [g["score"] for g in r["genres"]]
        assert scores == sorted(scores, reverse=True)
        assert all(0.0 <= s <= 1.0 for s in scores)
        assert r["predicted"] == [g["genre"] for g in r["genres"][:3]]
    res2 = run("predict", poster_dir, "--model", tiny_model, "--format", "json", "--top-k", "2")
    assert res2.exit_code == 0
    results2 = json.loads(res2.stdout)
    assert [r["predicted"] for r in results2] == [r["predicted"][:2] for r in results]


def test_predict_csv(tiny_model, poster_dir, tmp_path):
    out = tmp_path / "preds.csv"
    res = run("predict", poster_dir, "--model", tiny_model, "--format", "csv", "--output", out)
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(rows[0]) == ["path", "predicted", "error", "text", *GENRES]
    assert all(row["text"] == "" for row in rows)  # text off: nothing read
    assert len(rows) == 3
    for row in rows:
        assert row["error"] == ""
        predicted = row["predicted"].split("|")
        assert len(predicted) == 3
        scores = {g: float(row[g]) for g in GENRES}
        assert set(predicted) == set(sorted(scores, key=scores.get, reverse=True)[:3])


def test_predict_thresholds(tiny_model, poster_dir):
    for k in (1, 2, 4):
        res = run("predict", poster_dir, "--model", tiny_model, "--format", "json", "--decision", "thresholds",
                  "--top-k", str(k))
        assert res.exit_code == 0, res.output
        for r in json.loads(res.stdout):
            assert 1 <= len(r["predicted"]) <= k


def test_predict_unknown_decision_or_format(tiny_model, poster_dir):
    res = run("predict", poster_dir, "--model", tiny_model, "--decision", "vote")
    assert res.exit_code == 2 and "vote" in res.stderr
    res = run("predict", poster_dir, "--model", tiny_model, "--format", "xml")
    assert res.exit_code == 2 and "xml" in res.stderr


def test_predict_one_bad_file_among_good(tiny_model, mixed_dir):
    res = run("predict", mixed_dir, "--model", tiny_model, "--format", "json")
    assert res.exit_code == 0, res.output
    results = {Path(r["path"]).name: r for r in json.loads(res.stdout)}
    assert set(results) == {"action.jpg", "bad.jpg", "comedy.jpg"}
    bad = results["bad.jpg"]
    assert "bad.jpg" in bad["error"] and "not an image" in bad["error"]
    assert bad["predicted"] == [] and bad["genres"] == []
    for name in ("action.jpg", "comedy.jpg"):
        assert results[name]["error"] is None and len(results[name]["predicted"]) == 3
    assert "1 of 3 input(s) could not be read" in res.stderr
    # the table shows the error on the bad file's line
    table = run("predict", mixed_dir, "--model", tiny_model)
    assert table.exit_code == 0
    assert any(line.startswith(str(mixed_dir / "bad.jpg") + " -> ERROR: ") for line in table.stdout.splitlines())


def test_predict_strict_fails_on_one_bad(tiny_model, mixed_dir):
    res = run("predict", mixed_dir, "--model", tiny_model, "--strict")
    assert res.exit_code == 1


def test_predict_all_bad(tiny_model, tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    res = run("predict", tmp_path / "a.jpg", tmp_path / "missing.jpg", "--model", tiny_model, "--format", "json")
    assert res.exit_code == 1
    results = json.loads(res.stdout)
    assert [r["error"] is not None for r in results] == [True, True]
    assert "empty" in results[0]["error"] and "No such file" in results[1]["error"]


def test_predict_empty_folder(tiny_model, tmp_path):
    res = run("predict", tmp_path, "--model", tiny_model)
    assert res.exit_code == 2 and "no image files" in res.stderr


def test_predict_missing_model(tmp_path, poster_dir):
    res = run("predict", poster_dir / "action.jpg", "--model", tmp_path / "no-such-model")
    assert res.exit_code == 2
    assert res.stderr.strip() == f"error: {tmp_path / 'no-such-model'}: model directory not found"
    assert "Traceback" not in res.output


@pytest.mark.parametrize("name", ["out.json", "out.csv"])  # written at once / streamed
def test_predict_output_that_cannot_be_written(tiny_model, poster_dir, tmp_path, name):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a file where the output's folder should be
    res = run("predict", poster_dir / "action.jpg", "--model", tiny_model, "--output", blocker / name)
    assert res.exit_code == 2 and res.stderr.startswith(f"error: {blocker / name}: cannot write it")


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyError("boom"), ValueError("boom"), OSError("boom")])
def test_an_internal_bug_is_not_reported_as_a_user_error(monkeypatch, tmp_path, exc):
    """Only a PosterGenreError is the user's to fix (exit 2, one line); anything else is a bug
    in postergenre and must reach the user with its traceback."""
    import postergenre.inference.batch

    def broken(*args, **kwargs):
        raise exc

    monkeypatch.setattr(postergenre.inference.batch, "run_predictions", broken)
    res = run("predict", tmp_path)
    assert res.exit_code != 2 and res.exception is exc
    assert "error:" not in res.stderr


def test_cli_as_a_process(tiny_model, poster_dir):
    exe = Path(sys.executable).with_name("postergenre")
    if not exe.exists():
        pytest.skip("console script not installed")
    proc = subprocess.run([str(exe), "predict", str(poster_dir / "comedy.jpg"), "--model", str(tiny_model),
                           "--format", "json"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    (r,) = json.loads(proc.stdout)
    assert r["error"] is None and len(r["predicted"]) == 3


# --- train, evaluate, data check -----------------------------------------------------------


def test_train_command(tiny_data, cache_dir, tmp_path):
    out = tmp_path / "model"
    res = run("train", "--data", tiny_data, "--out", out, "--backbone", "efficientnet_lite0", "--epochs", "5",
              "--cache-dir", cache_dir, "--quiet", "--hidden", "32")
    assert res.exit_code == 0, res.output
    assert f"saved {out}" in res.stdout and "validation: micro_recall_at_3" in res.stdout
    assert {"config.json", "model.safetensors", "MODEL.md", "split.json", "history.csv"} <= {p.name for p in out.iterdir()}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["recipe"]["epochs"] == 5 and cfg["genres"] == GENRES
    assert len(json.loads((out / "history.json").read_text())) <= 5


def test_train_command_bad_data(tmp_path):
    res = run("train", "--data", tmp_path, "--out", tmp_path / "m", "--quiet")
    assert res.exit_code == 2 and "labels CSV not found" in res.stderr


def test_evaluate_json(tiny_model, tiny_data, cache_dir):
    res = run("evaluate", "--data", tiny_data, "--model", tiny_model, "--format", "json", "--cache-dir", cache_dir)
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout)
    assert set(m) == METRIC_KEYS
    assert m["n_posters"] == 48
    assert set(m["per_genre"]) == set(GENRES)
    assert all(set(v) == {"AP", "F1", "support"} for v in m["per_genre"].values())
    assert sum(v["support"] for v in m["per_genre"].values()) > 48
    assert 0.0 <= m["micro_recall_at_3"] <= 1.0


def test_evaluate_only_split(tiny_model, tiny_data, cache_dir):
    split = json.loads((tiny_model / "split.json").read_text())
    res = run("evaluate", "--data", tiny_data, "--model", tiny_model, "--format", "json", "--cache-dir", cache_dir,
              "--only-split", "val")
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout)
    assert m["n_posters"] == len(split["val"])
    # the validation figures stored at training time are these very numbers
    stored = json.loads((tiny_model / "config.json").read_text())["validation_metrics"]
    assert m["micro_recall_at_3"] == pytest.approx(stored["micro_recall_at_3"], abs=1e-6)
    assert m["mAP"] == pytest.approx(stored["mAP"], abs=1e-6)
    res = run("evaluate", "--data", tiny_data, "--model", tiny_model, "--only-split", "test")
    assert res.exit_code == 2 and "--only-split must be one of train, val" in res.stderr


def test_train_test_fraction_keeps_a_disjoint_test_part(tiny_data, cache_dir, tmp_path):
    out = tmp_path / "model"
    res = run("train", "--data", tiny_data, "--out", out, "--backbone", "pixels", "--epochs", "3", "--loss", "asl",
              "--test-fraction", "0.25", "--cache-dir", cache_dir, "-q")
    assert res.exit_code == 0, res.output
    assert "test: micro_recall_at_3" in res.stdout
    split = json.loads((out / "split.json").read_text())
    parts = [set(split[k]) for k in ("train", "val", "test")]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["recipe"]["loss"] == "asl" and cfg["data"]["n_test"] == len(split["test"])
    assert "Test metrics" in (out / "MODEL.md").read_text()
    # the stored test figures are what evaluate gives on that part
    res = run("evaluate", "--data", tiny_data, "--model", out, "--format", "json", "--cache-dir", cache_dir, "--only-split", "test")
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout)
    assert m["n_posters"] == len(split["test"])
    assert m["mAP"] == pytest.approx(cfg["test_metrics"]["mAP"], abs=1e-6)


def test_train_rejects_unknown_loss(tiny_data, tmp_path):
    res = run("train", "--data", tiny_data, "--out", tmp_path / "m", "--loss", "hinge")
    assert res.exit_code == 2 and "unknown loss 'hinge'" in res.stderr


def test_train_image_size_hxw(tiny_data, cache_dir, tmp_path):
    out = tmp_path / "model"
    res = run("train", "--data", tiny_data, "--out", out, "--backbone", "efficientnet_lite0", "--epochs", "2",
              "--cache-dir", cache_dir, "--quiet", "--hidden", "16", "--image-size", "96x64")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["preprocess"]["size"] == [96, 64]
    res = run("train", "--data", tiny_data, "--out", out, "--image-size", "96x", "--quiet")
    assert res.exit_code == 2 and "--image-size must be" in res.stderr


def test_evaluate_table(tiny_model, tiny_data, cache_dir):
    res = run("evaluate", "--data", tiny_data, "--model", tiny_model, "--cache-dir", cache_dir)
    assert res.exit_code == 0, res.output
    assert "posters evaluated: 48" in res.stdout
    assert re.search(r"micro_recall_at_3\s+\d\.\d{4}", res.stdout)


def test_data_check(tiny_data):
    res = run("data", "check", tiny_data)
    assert res.exit_code == 0, res.output
    assert "usable labelled posters: 48" in res.stdout
    assert "identical duplicate rows merged: 1 [tt0000000]" in res.stdout
    assert "images without a label row (ignored): 1 [tt9999991]" in res.stdout
    assert "posters with only a placeholder label (left out): 1 [tt9999990]" in res.stdout
    assert "unreadable images: 0" in res.stdout
    res = run("data", "check", tiny_data, "--format", "json", "--no-decode")
    assert res.exit_code == 0
    report = json.loads(res.stdout)
    assert report["duplicate_rows_merged"] == ["tt0000000"]
    assert report["images_without_labels"] == ["tt9999991"]


def test_backbones_command():
    from postergenre.training.recipe import DEFAULT_BACKBONE

    res = run("backbones")
    assert res.exit_code == 0
    table, note = res.stdout.rstrip().split("\n\n")
    header, *rows = table.splitlines()
    assert header.split() == ["NAME", "INPUT", "FEATURES", "WEIGHTS", "SOURCE"]
    # aligned: every column starts where its header does
    starts = [header.index(word) for word in ("NAME", "INPUT", "FEATURES", "WEIGHTS")]
    for row in rows:
        assert all(row[i - 2:i] == "  " and row[i] != " " for i in starts[1:]), row
    marked = {row[starts[0]:].split()[0]: row.startswith("*") for row in rows}
    assert {"efficientnet_lite0", "resnet50", "pixels"} <= set(marked)
    assert [name for name, star in marked.items() if star] == [DEFAULT_BACKBONE]
    assert note.startswith("* the default")


# --- the built-in model --------------------------------------------------------------------


@needs_shared(NEW_POSTERS)
@pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "config.json").is_file(), reason="no built-in default model yet")
def test_default_model_on_new_posters():
    res = run("predict", NEW_POSTERS)
    assert res.exit_code == 0, res.output
    table = parse_table(res.stdout)
    assert len(table) == 3
    for genres in table.values():
        assert len(genres) == 3 and len(set(genres)) == 3


def test_train_refuses_a_bad_dataset_before_any_long_work(tmp_path, cache_dir):
    from conftest import write_dataset

    root = write_dataset(tmp_path / "data", n=12, quirks=False)
    (root / "Images" / "tt0000003.jpg").write_bytes((root / "Images" / "tt0000003.jpg").read_bytes()[:200])  # truncated
    (root / "Images" / "tt0000005.jpg").unlink()
    res = run("train", "--data", root, "--out", tmp_path / "m", "--backbone", "pixels", "--cache-dir", cache_dir, "-q")
    assert res.exit_code == 2
    assert "tt0000003: unreadable image" in res.stderr and "tt0000005: image file missing" in res.stderr
    assert "--skip-bad" in res.stderr
    assert not (tmp_path / "m").exists() and not list(Path(cache_dir).glob("pixels-*/*tt00000*"))
    res = run("train", "--data", root, "--out", tmp_path / "m", "--backbone", "pixels", "--epochs", "2",
              "--cache-dir", cache_dir, "--skip-bad", "-q")
    assert res.exit_code == 0, res.output
    assert "skipped 2 poster(s)" in res.stderr and "tt0000003" in res.stderr
    assert json.loads((tmp_path / "m" / "config.json").read_text())["data"]["n_posters"] == 10
