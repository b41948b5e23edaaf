"""ModelConfig: config.json round-trips exactly, older layouts load, malformed ones are named."""

import json

import pytest

from postergenre.modeling.config import ModelConfig
from postergenre.errors import ModelError
from postergenre.modeling.model import CONFIG_FILE, DEFAULT_MODEL_DIR, load_model


def test_builtin_config_round_trips_byte_for_byte():
    raw = json.loads((DEFAULT_MODEL_DIR / CONFIG_FILE).read_text())
    cfg = ModelConfig.from_dict(raw)
    assert cfg.to_dict() == raw
    assert cfg.backbone.tuned and cfg.training.test_metrics["micro_recall_at_3"] > 0.5
    assert cfg.calibrated


def test_older_layout_without_new_fields_loads(tiny_model, tmp_path):
    """A frozen model of an earlier version: no calibration, no tuned blocks, no command."""
    raw = json.loads((tiny_model / CONFIG_FILE).read_text())
    for key in ("calibration", "validation_metrics_uncalibrated"):
        raw.pop(key, None)
    raw["backbone"].pop("tuned", None)
    cfg = ModelConfig.from_dict(raw)
    assert not cfg.calibrated and cfg.backbone.tuned == [] and cfg.training.command is None
    assert cfg.to_dict() == raw


def test_unknown_keys_are_kept():
    raw = json.loads((DEFAULT_MODEL_DIR / CONFIG_FILE).read_text()) | {"from_a_newer_version": {"x": 1}}
    assert ModelConfig.from_dict(raw).to_dict()["from_a_newer_version"] == {"x": 1}


@pytest.mark.parametrize("damage", [lambda d: d.pop("genres"), lambda d: d["backbone"].pop("weights_id"),
                                    lambda d: d.update(preprocess={"size": [1]}), lambda d: d.update(head="mlp")])
def test_malformed_config_is_a_model_error_naming_the_file(tiny_model, tmp_path, damage):
    import shutil

    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    raw = json.loads((model / CONFIG_FILE).read_text())
    damage(raw)
    (model / CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(ModelError, match=CONFIG_FILE):
        load_model(model)
