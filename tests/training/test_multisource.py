"""Training on several datasets (issue 12): extra posters only join training, unknown genres are
masked, duplicates are dropped and counted; mode tail; calibration stored and exported."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from postergenre.data.dataset import DatasetError, add_extra, load_dataset
from postergenre.modeling.losses import build_loss
from postergenre.modeling.model import load_model
from postergenre.training.train import Recipe, train

from conftest import MOVIE_POSTERS, make_poster, needs_shared

EXTRA_GENRES = ["Comedy", "Action", "Drama"]  # no Horror column, another order


def write_extra(root, n=24, seed=7, genres=EXTRA_GENRES, clash_with=None, copy_image_from=None):
    """An extra dataset in the study layout with its own Ids (``xx...``); optionally one Id that
    clashes with the primary and one image byte-identical to a primary poster."""
    rng = np.random.default_rng(seed)
    (root / "Images").mkdir(parents=True, exist_ok=True)
    lines = ["Id," + ",".join(genres)]
    for i in range(n):
        pid = f"xx{i:07d}"
        have = set(rng.choice(genres, size=rng.integers(1, 3), replace=False).tolist())
        make_poster(rng, have).save(root / "Images" / f"{pid}.jpg", quality=90)
        lines.append(pid + "," + ",".join("1" if g in have else "0" for g in genres))
    if clash_with is not None:
        make_poster(rng, {"Comedy"}).save(root / "Images" / f"{clash_with}.jpg")
        lines.append(clash_with + "," + ",".join("1" if g == "Comedy" else "0" for g in genres))
    if copy_image_from is not None:
        shutil.copyfile(copy_image_from, root / "Images" / "xx9999999.jpg")
        lines.append("xx9999999," + ",".join("1" if g == "Drama" else "0" for g in genres))
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def primary(tiny_data):
    return load_dataset(tiny_data)[0]


@pytest.fixture(scope="module")
def combined(primary, tmp_path_factory):
    root = write_extra(tmp_path_factory.mktemp("extra"), clash_with=primary.ids[0], copy_image_from=primary.paths[1])
    extra, _ = load_dataset(root)
    return add_extra(primary, extra, "extra", "tiny")


def test_extra_posters_are_matched_by_genre_name_and_masked(primary, combined):
    ds, report = combined
    assert ds.genres == primary.genres and report.unknown_genres == ["Horror"]
    assert report.n_posters == 26 and report.n_added == 24
    assert report.dropped_same_id == [primary.ids[0]] and report.dropped_same_image == ["xx9999999"]
    extra = np.flatnonzero(np.asarray(ds.sources) == "extra")
    assert len(extra) == 24 and ds.sources[0] == "tiny"
    h = ds.genres.index("Horror")
    assert (ds.known[extra, h] == 0).all() and (ds.known[extra][:, [g != h for g in range(len(ds.genres))]] == 1).all()
    assert (ds.known[ds.primary] == 1).all()
    # labels follow the names, not the column order
    src, _ = load_dataset(ds.paths[extra[0]].parent.parent)
    i = src.ids.index(ds.ids[extra[0]])
    for g in EXTRA_GENRES:
        assert ds.labels[extra[0], ds.genres.index(g)] == src.labels[i, src.genres.index(g)]


def test_a_genre_the_primary_lacks_is_an_error_naming_it(primary, tmp_path):
    extra, _ = load_dataset(write_extra(tmp_path, n=4, genres=["Comedy", "Western"]))
    with pytest.raises(DatasetError, match="Western"):
        add_extra(primary, extra, "extra")


def test_masked_labels_teach_nothing():
    logits = torch.zeros(2, 3, requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    known = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    loss = build_loss("bce", target.numpy())(logits, target, known)
    loss.backward()
    assert logits.grad[0, 2] == 0 and logits.grad[0, 0] != 0
    assert loss.item() == pytest.approx(float(np.log(2)))  # mean over the 5 known labels
    with pytest.raises(ValueError, match="unknown labels"):
        build_loss("asl", target.numpy())(logits, target, known)


@pytest.fixture(scope="module")
def multi_model(combined, cache_dir, tmp_path_factory):
    ds, report = combined
    out = tmp_path_factory.mktemp("multi") / "model"
    train(ds, Recipe(backbone="efficientnet_lite0", epochs=4, tail_epochs=2, mode="tail", val_fraction=0.25,
                     test_fraction=0.2, seed=1, hidden=32, dropout=0.1, batch_size=16, image_size=(64, 64)),
          out, cache_dir=cache_dir, progress=False, extra_reports=[report])
    return out, ds


def test_validation_and_test_come_only_from_the_primary(multi_model):
    out, ds = multi_model
    split = json.loads((out / "split.json").read_text())
    primary_ids = {ds.ids[i] for i in ds.primary}
    assert set(split["val"]) | set(split["test"]) <= primary_ids and split["val"] and split["test"]
    assert set(split["train"]) <= primary_ids
    assert sorted(split["extra_train"]["extra"]) == sorted(i for i, s in zip(ds.ids, ds.sources) if s == "extra")
    cfg = json.loads((out / "config.json").read_text())
    assert [s["name"] for s in cfg["data"]["sources"]] == ["tiny", "extra"]
    assert cfg["data"]["sources"][1]["dropped_same_image"] == 1 and cfg["data"]["n_train"] == len(split["train"]) + 24
    card = (out / "MODEL.md").read_text()
    assert "`extra`: 24 posters; 26 offered, 1 dropped for an Id already used, 1 for an identical image" in card
    assert "unknown (masked) genres: Horror" in card


def test_tail_model_stores_only_its_tuned_blocks_and_reloads(multi_model):
    out, ds = multi_model
    cfg = json.loads((out / "config.json").read_text())
    tuned = tuple(cfg["backbone"]["tuned"])
    assert cfg["mode"] == "tail" and not cfg["backbone"]["in_artifact"] and tuned
    keys = [k[len("backbone."):] for k in load_file(str(out / "model.safetensors")) if k.startswith("backbone.")]
    assert keys and all(k.startswith(tuned) for k in keys)
    m = load_model(out)
    fresh = load_model(out)
    x = torch.stack([m.preprocess.load(p) for p in ds.paths[:4]])
    np.testing.assert_allclose(m.predict_proba_tensor(x), fresh.predict_proba_tensor(x), atol=1e-6)
    # the tuned block really differs from the package weights
    from postergenre.backbones import build_backbone

    pristine = build_backbone("efficientnet_lite0", input_size=(64, 64)).module.state_dict()
    assert any(not torch.equal(pristine[k], m.backbone.state_dict()[k]) for k in keys)


def test_calibration_is_stored_used_and_exported(multi_model, tmp_path):
    from postergenre.inference.onnx_engine import OnnxModel, export_onnx

    out, ds = multi_model
    m = load_model(out)
    cal = m.config.calibration
    assert cal["kind"] == "platt" and len(cal["scale"]) == len(ds.genres)
    x = torch.stack([m.preprocess.load(p) for p in ds.paths[:4]])
    with torch.no_grad():
        raw = torch.sigmoid(m.head(m.backbone(x))).numpy()
    calibrated = m.predict_proba_tensor(x)
    assert not np.allclose(raw, calibrated, atol=1e-3)
    export_onnx(m, tmp_path / "m.onnx", check_images=ds.paths[:4])
    np.testing.assert_allclose(OnnxModel(tmp_path / "m.onnx").predict_proba_tensor(x), calibrated, atol=1e-4)
    assert "calibration" in (out / "MODEL.md").read_text()


@needs_shared(MOVIE_POSTERS)
@pytest.mark.parametrize("split", [None, 15])
def test_onnx_extraction_matches_pytorch_on_real_posters(tmp_path, split):
    from postergenre.backbones import build_backbone, get_spec
    from postergenre.backbones.features import extract_features
    from postergenre.data.images import Preprocess

    spec = get_spec("efficientnet_lite0_poster")
    bb = build_backbone(spec.name)
    pp = Preprocess(spec.input_size, spec.mean, spec.std)
    paths = sorted((MOVIE_POSTERS / "Images").glob("*.jpg"))[:6]
    ref, _ = extract_features(bb, paths, pp, tmp_path / "torch", engine="torch", split=split, progress=False)
    got, _ = extract_features(bb, paths, pp, tmp_path / "onnx", engine="onnx", split=split, progress=False)
    assert (tmp_path / "onnx" / "onnx").is_dir()  # really ran ONNX Runtime
    if split is None:
        assert np.abs(ref - got).max() <= 1e-4
    else:  # tail rows are stored as float16: equal to within one rounding step (maps reach ~60)
        np.testing.assert_allclose(got.astype(np.float32), ref.astype(np.float32), rtol=1e-3, atol=1e-3)


def test_identical_posters_within_an_extra_set_are_kept(primary, tmp_path):
    root = write_extra(tmp_path, n=4)
    shutil.copyfile(root / "Images" / "xx0000000.jpg", root / "Images" / "xx0000009.jpg")  # a box-set cover
    (root / "train.csv").write_text((root / "train.csv").read_text() + "xx0000009,1,0,0\n")
    ds, report = add_extra(primary, load_dataset(root)[0], "extra")
    assert report.n_added == 5 and not report.dropped_same_image


def _cli(*args):
    from typer.testing import CliRunner

    from postergenre.app.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_extra_data_bad_inputs(tiny_data, tmp_path, cache_dir):
    missing = write_extra(tmp_path / "missing", n=6)
    (missing / "Images" / "xx0000002.jpg").unlink()
    res = _cli("train", "--data", tiny_data, "--extra-data", missing, "--out", tmp_path / "m", "--cache-dir", cache_dir, "-q")
    assert res.exit_code == 2 and "xx0000002: image file missing" in res.output and "--skip-bad" in res.output
    foreign = write_extra(tmp_path / "foreign", n=4, genres=["Comedy", "Western"])
    res = _cli("train", "--data", tiny_data, "--extra-data", foreign, "--out", tmp_path / "m", "--cache-dir", cache_dir, "-q")
    assert res.exit_code == 2 and "Western" in res.output and "not genres of the primary" in res.output
    assert not (tmp_path / "m").exists()


def test_cli_train_with_extra_data_reports_what_it_added(tiny_data, tmp_path, cache_dir):
    extra = write_extra(tmp_path / "extra", n=8)
    out = tmp_path / "m"
    res = _cli("train", "--data", tiny_data, "--extra-data", extra, "--out", out, "--backbone", "efficientnet_lite0",
               "--image-size", "64", "--epochs", "2", "--hidden", "16", "--val-fraction", "0.25", "--cache-dir", cache_dir,
               "--skip-bad", "-q")
    assert res.exit_code == 0, res.output
    assert "extra data extra: 8 of 8 posters added to training" in res.output
    assert "- `extra`: 8 posters; 8 offered" in (out / "MODEL.md").read_text()
    assert json.loads((out / "config.json").read_text())["calibration"]["kind"] == "platt"


def test_head_ensemble_trains_saves_and_averages(tiny_data, cache_dir, tmp_path):
    from postergenre.modeling.model import Ensemble

    ds, _ = load_dataset(tiny_data)
    out = tmp_path / "ens"
    train(ds, Recipe(backbone="efficientnet_lite0", epochs=3, heads=3, val_fraction=0.25, seed=1, hidden=16,
                     image_size=(64, 64)), out, cache_dir=cache_dir, progress=False)
    m = load_model(out)
    assert isinstance(m.head, Ensemble) and len(m.head.members) == 3
    assert m.config.head.members == 3
    first = m.head.members[0].net[1].weight
    assert not torch.equal(first, m.head.members[1].net[1].weight)  # different seeds
    f = torch.randn(2, m.backbone_info.feature_dim)
    with torch.no_grad():
        mean = torch.stack([h(f) for h in m.head.members]).mean(0)
        assert torch.allclose(m.head(f), mean)
    phases = [r.get("phase") for r in json.loads((out / "history.json").read_text())]
    assert {"head 1", "head 2", "head 3", "ensemble of 3 heads"} <= set(phases)


def test_tail_blocks_zero_tunes_only_the_head_convolution(tiny_data, cache_dir, tmp_path):
    ds, _ = load_dataset(tiny_data)
    out = tmp_path / "t0"
    train(ds, Recipe(backbone="efficientnet_lite0", mode="tail", tail_blocks=0, epochs=2, tail_epochs=1, val_fraction=0.25,
                     seed=1, hidden=16, image_size=(64, 64)), out, cache_dir=cache_dir, progress=False)
    assert load_model(out).config.backbone.tuned == ["net._conv_head.", "net._bn1."]
    with pytest.raises(ValueError, match="--tail-blocks must be from 0 to 16"):
        train(ds, Recipe(backbone="efficientnet_lite0", mode="tail", tail_blocks=17, epochs=1, image_size=(64, 64)),
              tmp_path / "bad", cache_dir=cache_dir, progress=False)
