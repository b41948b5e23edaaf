"""Training: the feature cache, reproducibility, the files a run writes, finetune and pixels."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from postergenre.backbones import build_backbone, get_spec
from postergenre.data.dataset import load_dataset, split_indices
from postergenre.backbones.features import FeatureCache, extract_features
from postergenre.data.images import Preprocess
from postergenre.modeling.model import load_model, read_config
from postergenre.training.train import Recipe, split_fingerprint, train

from conftest import make_poster

SIZE = (64, 64)


@pytest.fixture(scope="module")
def tiny_ds(tiny_data):
    ds, _ = load_dataset(tiny_data)
    return ds


@pytest.fixture(scope="module")
def lite0_small():
    return build_backbone("efficientnet_lite0", input_size=SIZE)


def lite0_preprocess(size=SIZE) -> Preprocess:
    spec = get_spec("efficientnet_lite0")
    return Preprocess(size, spec.mean, spec.std)


def chunk_files(root):
    """The feature chunks in the cache (not the ONNX exports the extraction keeps beside them)."""
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.parent.name != "onnx")


# --- the feature cache ---------------------------------------------------------------------


def test_feature_cache_is_reused(tiny_ds, lite0_small, tmp_path):
    cache = tmp_path / "cache"
    pp = lite0_preprocess()
    paths = tiny_ds.paths[:20]
    first, errors = extract_features(lite0_small, paths, pp, cache, batch_size=64, progress=False)
    assert errors == {}
    assert first.shape == (20, 1280) and first.dtype == np.float32
    assert np.abs(first).sum(1).min() > 0  # every row filled
    files = chunk_files(cache)
    assert len(files) == 1 and files[0].suffix == ".npz"

    calls = []
    module = lite0_small.module
    real_forward = module.forward

    def spy(*args, **kwargs):
        calls.append(1)
        return real_forward(*args, **kwargs)

    module.forward = spy
    try:
        again, errors = extract_features(lite0_small, paths, pp, cache, batch_size=64, progress=False)
        assert errors == {}
        assert calls == []  # the backbone never ran
        assert chunk_files(cache) == files  # no new chunk
        assert np.array_equal(first, again)

        # Features are keyed by content: a copy under another name is a cache hit too.
        renamed = tmp_path / "renamed.jpg"
        renamed.write_bytes(paths[3].read_bytes())
        moved, _ = extract_features(lite0_small, [renamed], pp, cache, batch_size=64, progress=False)
        assert calls == [] and np.array_equal(moved[0], first[3])

        # A new image runs the backbone once, adds one chunk and leaves the old rows alone.
        new_img = tmp_path / "new.jpg"
        make_poster(np.random.default_rng(3), {"Drama"}).save(new_img)
        mixed, _ = extract_features(lite0_small, [paths[0], new_img], pp, cache, batch_size=64, progress=False)
        assert len(calls) == 1
        assert len(chunk_files(cache)) == 2
        assert np.array_equal(mixed[0], first[0])
    finally:
        del module.forward
    # the cached value is the backbone's: recompute one row directly
    direct = lite0_small.module(pp.load(paths[5])[None].contiguous(memory_format=torch.channels_last))
    assert np.allclose(direct.detach().numpy()[0], first[5], atol=1e-4)


def test_cache_key_changes_with_preprocessing(lite0_small, tiny_ds, tmp_path):
    base = lite0_preprocess()
    key = FeatureCache.key_for(lite0_small, base)
    assert key == FeatureCache.key_for(lite0_small, lite0_preprocess())  # deterministic
    others = {
        FeatureCache.key_for(lite0_small, lite0_preprocess((72, 64))),
        FeatureCache.key_for(lite0_small, Preprocess(SIZE, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),
        FeatureCache.key_for(lite0_small, Preprocess(SIZE, base.mean, (0.4, 0.5, 0.5))),
        FeatureCache.key_for(lite0_small, base, flip=True),
    }
    assert key not in others and len(others) == 4
    # in practice: another preprocessing gets its own cache folder and other features
    cache = tmp_path / "cache"
    a, _ = extract_features(lite0_small, tiny_ds.paths[:2], base, cache, batch_size=8, progress=False)
    b, _ = extract_features(lite0_small, tiny_ds.paths[:2], lite0_preprocess((72, 64)), cache, batch_size=8, progress=False)
    assert len([p for p in cache.iterdir() if p.is_dir() and p.name != "onnx"]) == 2
    assert not np.allclose(a, b)


def test_unreadable_file_gives_zero_row_and_error(lite0_small, tiny_ds, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("no image here")
    feats, errors = extract_features(lite0_small, [tiny_ds.paths[0], bad, tmp_path / "gone.jpg"],
                                     lite0_preprocess(), tmp_path / "cache", batch_size=8, progress=False)
    assert set(errors) == {1, 2}
    assert "bad.jpg" in errors[1] and "gone.jpg" in errors[2]
    assert np.abs(feats[0]).sum() > 0 and not feats[1].any() and not feats[2].any()


# --- the frozen recipe ---------------------------------------------------------------------

# conftest's tiny_model recipe; training it again must give the very same model.
TINY_RECIPE = dict(backbone="efficientnet_lite0", epochs=30, val_fraction=0.25, seed=1, hidden=64, dropout=0.1)


@pytest.fixture(scope="module")
def retrained(tiny_ds, cache_dir, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("retrain") / "again"
    train(tiny_ds, Recipe(**TINY_RECIPE), out, cache_dir=cache_dir, progress=False)
    return out


def test_same_recipe_same_seed_same_results(tiny_model, retrained):
    a, b = read_config(tiny_model).to_dict(), read_config(retrained).to_dict()
    assert a["validation_metrics"] == b["validation_metrics"]
    assert a["decision"] == b["decision"]
    assert a["data"]["split_fingerprint"] == b["data"]["split_fingerprint"]

    def losses(model_dir):  # every column but the wall time
        return [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads((model_dir / "history.json").read_text())]

    assert losses(tiny_model) == losses(retrained)
    assert a["weights_sha256"] == b["weights_sha256"]  # the head weights are bit-identical


def test_split_is_saved_and_reproducible(tiny_model, tiny_ds):
    split = json.loads((tiny_model / "split.json").read_text())
    assert set(split) == {"train", "val"}
    train_idx, val_idx = split_indices(tiny_ds.labels, 0.25, 1)
    assert split["train"] == [tiny_ds.ids[i] for i in train_idx]
    assert split["val"] == [tiny_ds.ids[i] for i in val_idx]
    assert not set(split["train"]) & set(split["val"])
    assert sorted(split["train"] + split["val"]) == sorted(tiny_ds.ids)
    cfg = read_config(tiny_model).to_dict()
    assert cfg["data"]["split_fingerprint"] == split_fingerprint(tiny_ds.ids, train_idx, val_idx)
    assert cfg["data"]["n_val"] == len(split["val"]) == 12


def test_history_files(tiny_model):
    history = json.loads((tiny_model / "history.json").read_text())
    n_epochs = len(history)
    assert 1 <= n_epochs <= 30
    assert [r["epoch"] for r in history] == list(range(1, n_epochs + 1))
    assert {"epoch", "train_loss", "val_loss", "val_mAP", "val_micro_recall_at_3", "seconds"} <= set(history[0])
    with open(tiny_model / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_epochs
    assert [int(r["epoch"]) for r in rows] == list(range(1, n_epochs + 1))
    assert float(rows[0]["train_loss"]) == pytest.approx(history[0]["train_loss"], rel=1e-5)
    with open(tiny_model / "iterations.csv") as f:
        its = list(csv.DictReader(f))
    n_train = read_config(tiny_model).to_dict()["data"]["n_train"]
    assert len(its) == n_epochs * math.ceil(n_train / 33)  # batch size 33
    assert all(float(r["train_loss"]) > 0 for r in its)
    # the loss goes down on this easy data
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    vm = json.loads((tiny_model / "validation_metrics.json").read_text())
    assert vm["n_posters"] == 12 and "per_genre" in vm


# --- finetune and pixels -------------------------------------------------------------------


def test_finetune_one_epoch_on_cpu(tiny_ds, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "ft"
    recipe = Recipe(mode="finetune", backbone="efficientnet_lite0", epochs=1, image_size=64, batch_size=8, workers=0)
    model = train(tiny_ds, recipe, out, progress=False)
    cfg = read_config(out).to_dict()
    assert cfg["mode"] == "finetune" and cfg["backbone"]["in_artifact"] is True
    assert cfg["preprocess"]["size"] == [64, 64]
    assert len(json.loads((out / "history.json").read_text())) == 1

    saved = load_file(str(out / "model.safetensors"))
    pretrained = get_spec("efficientnet_lite0").load_weights()
    backbone_keys = [k for k in saved if k.startswith("backbone.net.")]
    assert len(backbone_keys) > 100  # the backbone travels with the model
    stem = saved["backbone.net._conv_stem.weight"]
    assert stem.shape == pretrained["_conv_stem.weight"].shape
    assert not torch.equal(stem, pretrained["_conv_stem.weight"])  # it was trained
    changed = sum(not torch.equal(saved[f"backbone.net.{k}"], v) for k, v in pretrained.items()
                  if f"backbone.net.{k}" in saved)
    assert changed > 0.9 * len(backbone_keys)

    loaded = load_model(out)
    rng = np.random.default_rng(2)
    posters = [make_poster(rng, {"Action"}), Image.new("L", (30, 50), 128)]
    preds = loaded.predict(posters)
    assert len(preds) == 2 and all(len(p) == 3 for p in preds)
    assert np.allclose(loaded.predict_proba(posters), model.predict_proba(posters), atol=1e-5)


def test_pixels_backbone_trains(tiny_ds, tmp_path):
    out = tmp_path / "px"
    train(tiny_ds, Recipe(backbone="pixels", epochs=3, val_fraction=0.25, hidden=32), out,
          cache_dir=tmp_path / "cache", progress=False)
    cfg = read_config(out).to_dict()
    assert cfg["backbone"]["name"] == "pixels" and cfg["backbone"]["weights_origin"] == "none"
    assert cfg["preprocess"]["size"] == [48, 48]
    model = load_model(out)
    assert model.backbone_info.feature_dim == 3 * 48 * 48
    preds = model.predict([make_poster(np.random.default_rng(0), {"Comedy"})])
    assert len(preds[0]) == 3
