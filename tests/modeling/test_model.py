"""The model directory: contents, round trip, refusals, atomic saves."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from postergenre.modeling.model import CONFIG_FILE, WEIGHTS_FILE, ModelError, load_model, read_config

from conftest import make_poster


@pytest.fixture(scope="module")
def posters():
    rng = np.random.default_rng(5)
    return [make_poster(rng, g) for g in ({"Action"}, {"Comedy", "Drama"}, {"Horror"}, set())]


@pytest.fixture(scope="module")
def loaded(tiny_model):
    return load_model(tiny_model)


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(tiny_model, out)
    return out


def listing(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_config_has_required_fields(tiny_model):
    cfg = read_config(tiny_model).to_dict()
    for key in ("backbone", "preprocess", "genres", "decision", "recipe", "data", "validation_metrics",
                "package_version", "weights_sha256"):
        assert key in cfg, key
    assert cfg["backbone"]["name"] == "efficientnet_lite0"
    assert cfg["backbone"]["weights_origin"] == "package"
    assert cfg["backbone"]["in_artifact"] is False
    assert cfg["preprocess"]["size"] == [224, 224]
    assert cfg["genres"] == ["Action", "Comedy", "Drama", "Horror"]
    assert "N/A" not in cfg["genres"]
    thresholds = cfg["decision"]["thresholds"]
    assert len(thresholds) == len(cfg["genres"]) and all(0 < t < 1 for t in thresholds)
    assert cfg["decision"]["kind"] == "top_k" and cfg["decision"]["k"] == 3
    assert len(cfg["data"]["split_fingerprint"]) == 16
    assert cfg["data"]["n_train"] + cfg["data"]["n_val"] == cfg["data"]["n_posters"] == 48
    assert cfg["recipe"]["backbone"] == "efficientnet_lite0" and cfg["recipe"]["seed"] == 1
    vm = cfg["validation_metrics"]
    assert 0.0 <= vm["mAP"] <= 1.0 and 0.0 <= vm["micro_recall_at_3"] <= 1.0
    import postergenre

    assert cfg["package_version"] == postergenre.__version__
    import hashlib

    assert cfg["weights_sha256"] == hashlib.sha256((tiny_model / WEIGHTS_FILE).read_bytes()).hexdigest()


def test_model_card_and_files(tiny_model):
    names = {p.name for p in tiny_model.iterdir()}
    assert {"config.json", "model.safetensors", "MODEL.md"} <= names
    card = (tiny_model / "MODEL.md").read_text()
    assert card.startswith("# Model card")
    assert "efficientnet_lite0" in card and "Action" in card
    # nothing pickle-capable is ever written
    assert not any(n.endswith((".pt", ".pth", ".pkl", ".npy", ".npz", ".bin")) for n in names)


def test_predict_outputs(loaded, posters):
    scores = loaded.predict_proba(posters)
    assert scores.shape == (4, 4) and scores.dtype == np.float32
    assert np.all((scores >= 0) & (scores <= 1))
    preds = loaded.predict(posters)
    assert all(len(p) == 3 and set(p) <= set(loaded.genres) for p in preds)
    assert "N/A" not in loaded.genres


def test_model_learnt_the_colour_code(loaded, tiny_model):
    """The generated posters encode their genres (red Action, green Comedy, dark Horror, blue
    Drama stripes): a head trained on them must rank a fresh single-genre poster's genre first."""
    rng = np.random.default_rng(11)
    genres = loaded.genres
    posters = [make_poster(rng, {g}) for g in genres]
    scores = loaded.predict_proba(posters)
    assert [genres[i] for i in scores.argmax(1)] == genres
    # scores stay graded: a feature (nearly) constant in training must not saturate them
    assert scores.max() < 0.9999 and scores.min() > 1e-4
    assert read_config(tiny_model).to_dict()["validation_metrics"]["mAP"] > 0.8


def test_save_load_round_trip(loaded, posters, tmp_path):
    before = loaded.predict_proba(posters)
    out = loaded.save(tmp_path / "saved")
    assert out == (tmp_path / "saved").resolve()
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors"}  # no card asked for
    again = load_model(out)
    after = again.predict_proba(posters)
    assert np.array_equal(before, after)
    assert again.genres == loaded.genres
    assert again.config.decision == loaded.config.decision
    assert again.predict(posters) == [[g for g, m in zip(loaded.genres, row) if m] for row in loaded.decision.apply(before)]


def test_missing_dir_and_not_a_model(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_model(tmp_path / "empty")


@pytest.mark.parametrize("name", ["model.pkl", "extra.pt"])
def test_pickle_files_are_refused(model_copy, name):
    (model_copy / name).write_bytes(b"\x80\x04K\x01.")  # a tiny pickle
    with pytest.raises(ModelError, match=name.replace(".", r"\.")):
        load_model(model_copy)


def test_tampered_weights_are_refused(model_copy):
    path = model_copy / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # flip the last byte of the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum"):
        load_model(model_copy)


def test_damaged_config_and_unknown_format(model_copy):
    cfg = json.loads((model_copy / CONFIG_FILE).read_text())
    (model_copy / CONFIG_FILE).write_text(json.dumps(dict(cfg, format_version=99)))
    with pytest.raises(ModelError, match="format"):
        load_model(model_copy)
    (model_copy / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ModelError, match="damaged config"):
        load_model(model_copy)


def test_head_shape_mismatch_is_refused(model_copy):
    cfg = json.loads((model_copy / CONFIG_FILE).read_text())
    cfg["genres"] = cfg["genres"] + ["Western"]  # 5 outputs expected, 4 stored
    (model_copy / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="head weights do not fit"):
        load_model(model_copy)


def test_overwrite_replaces_and_leaves_nothing_behind(loaded, tmp_path):
    out = tmp_path / "m"
    loaded.save(out, card="first")
    loaded.save(out, card="second")
    assert (out / "MODEL.md").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_atomic_save_when_weights_write_fails(loaded, tmp_path, monkeypatch):
    import safetensors.torch

    out = tmp_path / "m"
    loaded.save(out, card="the original")
    before = listing(out)
    real_save = safetensors.torch.save_file
    seen = []

    def failing_save(tensors, filename, *args, **kwargs):
        real_save(tensors, filename, *args, **kwargs)  # a file really lands in the temp dir ...
        seen.append(filename)
        raise OSError("disk full")  # ... then the write fails

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        loaded.save(out, card="the replacement")
    assert seen and ".m.tmp-" in seen[0]  # the failure happened inside a temp dir
    assert listing(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp dir left
    monkeypatch.undo()
    load_model(out)  # still a working model


def test_atomic_save_when_card_write_fails(loaded, tmp_path):
    out = tmp_path / "m"
    loaded.save(out, card="the original")
    before = listing(out)
    with pytest.raises(TypeError):
        loaded.save(out, card=object())  # fails after weights and config are written
    assert listing(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.parametrize("name", [WEIGHTS_FILE, CONFIG_FILE])
def test_files_pointing_outside_the_directory_are_refused(model_copy, tmp_path, name):
    outside = tmp_path / f"elsewhere-{name}"
    outside.write_bytes((model_copy / name).read_bytes())
    (model_copy / name).unlink()
    (model_copy / name).symlink_to(outside)
    with pytest.raises(ModelError, match=f"point outside it \\({name}\\)"):
        load_model(model_copy)
