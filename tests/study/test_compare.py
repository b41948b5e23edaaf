"""``compare``: the study reproduction on a tiny generated dataset with two fast backbones."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from postergenre.study import compare as compare_mod
from postergenre.app.cli import app
from postergenre.study.compare import STUDY_ACCURACY, CompareConfig, compare
from postergenre.data.dataset import load_dataset

FIGURES = ["loss_per_epoch.png", "loss_per_iteration.png", "batch_grid.png", "predictions.png"]


def _rows(out: Path) -> dict[str, dict]:
    with open(out / "results.csv", newline="") as f:
        return {r["backbone"]: r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def offline_torch_home(tmp_path_factory):
    """No cached hub weights, so resnet50 has none (the machine has no network)."""
    import os

    old = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(tmp_path_factory.mktemp("torch-home"))
    yield
    if old is None:
        os.environ.pop("TORCH_HOME", None)
    else:
        os.environ["TORCH_HOME"] = old


@pytest.fixture(scope="module")
def compared(tiny_data, cache_dir, tmp_path_factory, offline_torch_home):
    out = tmp_path_factory.mktemp("compare")
    new = tmp_path_factory.mktemp("new")
    Image.new("RGB", (90, 60), (200, 30, 30)).save(new / "wide.jpg")
    Image.new("RGB", (40, 80), (30, 200, 30)).save(new / "tall.jpg")
    res = CliRunner().invoke(app, [
        "compare", "--data", str(tiny_data), "--out", str(out), "--backbones", "pixels,efficientnet_lite0,resnet50",
        "--epochs", "4", "--image-size", "64", "--test-fraction", "0.25", "--seed", "3", "--quiet",
        "--cache-dir", str(cache_dir), "--new-posters", str(new),
    ])
    assert res.exit_code == 0, res.output
    return out, res


def test_compare_writes_table_figures_and_models(compared):
    out, res = compared
    rows = _rows(out)
    assert list(rows) == ["pixels", "efficientnet_lite0", "resnet50"]
    for name in ("pixels", "efficientnet_lite0"):
        r = rows[name]
        assert r["status"] == "ok"
        for k in ("test_micro_recall_at_3", "train_micro_recall_at_3", "test_precision_at_3", "test_mAP",
                  "test_micro_f1", "test_macro_f1", "test_hamming_loss", "test_subset_accuracy"):
            assert 0.0 <= float(r[k]) <= 1.0, (name, k)
        assert float(r["train_seconds"]) > 0 and float(r["inference_posters_per_s"]) > 0
        model = out / "models" / name
        assert {"config.json", "model.safetensors", "history.csv", "history.json", "test_metrics.json"} <= {p.name for p in model.iterdir()}
        hist = json.loads((model / "history.json").read_text())
        assert "test_loss" in hist[0] and len(hist) <= 4
    assert rows["pixels"]["study_accuracy"] == f"{STUDY_ACCURACY['pixels']:.4f}"
    assert "ImageNet" in rows["efficientnet_lite0"]["weights"]
    md = (out / "results.md").read_text()
    assert "| pixels |" in md and "23.00%" in md and "60.21%" in md
    for fig in FIGURES:
        assert (out / fig).stat().st_size > 5000, fig
    assert "| efficientnet_lite0 |" in res.stdout


def test_missing_weights_row_is_not_trained(compared):
    out, _ = compared
    r = _rows(out)["resnet50"]
    assert r["status"].startswith("no pretrained weights")
    assert "--weights" in r["weights"]
    assert r["test_micro_recall_at_3"] == ""
    assert not (out / "models" / "resnet50").exists()
    assert "--weights resnet50=FILE" in (out / "results.md").read_text()


def test_allow_random_init_trains_and_says_so(tiny_data, cache_dir, tmp_path, offline_torch_home):
    ds, _ = load_dataset(tiny_data)
    cfg = CompareConfig(backbones=["mobilenet_v2"], epochs=2, image_size=48, test_fraction=0.25, seed=3,
                        allow_random_init=False, speed_posters=4)
    # mobilenet_v2 has offline weights: a package origin, not random
    rows = compare(ds, cfg, tmp_path / "a", cache_dir=cache_dir, progress=False, log=lambda m: None)
    assert rows["mobilenet_v2"]["weights"].startswith("ImageNet")
    cfg = CompareConfig(backbones=["efficientnet_b0"], epochs=1, image_size=48, test_fraction=0.25, seed=3,
                        allow_random_init=True, speed_posters=4)
    rows = compare(ds, cfg, tmp_path / "b", cache_dir=cache_dir, progress=False, log=lambda m: None)
    assert rows["efficientnet_b0"]["status"] == "ok" and rows["efficientnet_b0"]["weights"] == "random init"


def test_resume_after_interruption_keeps_finished_rows(tiny_data, cache_dir, tmp_path, monkeypatch):
    ds, _ = load_dataset(tiny_data)
    out = tmp_path / "run"
    cfg = CompareConfig(backbones=["pixels", "efficientnet_lite0"], epochs=2, image_size=48, test_fraction=0.25,
                        seed=5, speed_posters=4)
    real_train = compare_mod.train

    def dies_on_second(dataset, recipe, *a, **kw):
        if recipe.backbone == "efficientnet_lite0":
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the second model
        return real_train(dataset, recipe, *a, **kw)

    monkeypatch.setattr(compare_mod, "train", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        compare(ds, cfg, out, cache_dir=cache_dir, progress=False, log=lambda m: None)
    rows = _rows(out)
    assert list(rows) == ["pixels"] and rows["pixels"]["status"] == "ok"
    first_model = (out / "models" / "pixels" / "model.safetensors").stat().st_mtime_ns

    monkeypatch.setattr(compare_mod, "train", real_train)
    trained = []
    monkeypatch.setattr(compare_mod, "train", lambda d, r, *a, **kw: trained.append(r.backbone) or real_train(d, r, *a, **kw))
    compare(ds, cfg, out, cache_dir=cache_dir, resume=True, progress=False, log=lambda m: None)
    assert trained == ["efficientnet_lite0"]  # pixels was not trained again
    assert (out / "models" / "pixels" / "model.safetensors").stat().st_mtime_ns == first_model
    assert list(_rows(out)) == ["pixels", "efficientnet_lite0"]

    # resuming with another split is refused rather than mixing two protocols
    other = CompareConfig(**{**cfg.__dict__, "seed": 6})
    with pytest.raises(ValueError, match="different split"):
        compare(ds, other, out, cache_dir=cache_dir, resume=True, progress=False, log=lambda m: None)


def test_compare_rejects_bad_weights_option(tiny_data, tmp_path):
    res = CliRunner().invoke(app, ["compare", "--data", str(tiny_data), "--out", str(tmp_path / "o"),
                                   "--backbones", "pixels", "--weights", "resnet50"])
    assert res.exit_code == 2 and "NAME=FILE" in res.stderr
