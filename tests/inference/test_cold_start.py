"""The cold path: with the model's export in the cache, one-poster prediction never imports
PyTorch or scikit-learn, and a weights file that no longer matches its config is refused."""

import json
import os
import shutil
import subprocess
import sys

from postergenre.inference.onnx_engine import sample_posters

from conftest import PREDICT_PROBE as PROBE



def _predict(*args, cache) -> tuple[dict, list, str]:
    env = dict(os.environ, POSTERGENRE_CACHE=str(cache))
    res = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)
    probe = json.loads(res.stderr.strip().splitlines()[-1])
    return probe, json.loads(res.stdout) if res.stdout.strip() else [], res.stderr


def test_one_poster_with_a_cached_export_imports_no_torch(tiny_model, tmp_path):
    poster = sample_posters()[0]
    first, scores_first, _ = _predict(poster, "--model", tiny_model, cache=tmp_path)  # exports once
    assert first["code"] in (0, None) and first["torch"]
    again, scores_again, _ = _predict(poster, "--model", tiny_model, cache=tmp_path)
    assert again["code"] in (0, None)
    assert not again["torch"] and not again["sklearn"]
    assert scores_again == scores_first  # the same export, the same numbers


def test_replaced_weights_do_not_meet_a_stale_export(tiny_model, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    poster = sample_posters()[0]
    _predict(poster, "--model", model, cache=tmp_path / "cache")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    probe, _, err = _predict(poster, "--model", model, cache=tmp_path / "cache")
    assert probe["code"] == 2 and "checksum does not match" in err


def test_keeping_freed_memory_is_on_for_pytorch_and_can_be_turned_off(tiny_model):
    """build_backbone sets glibc's thresholds once (the fix for kernel time in PyTorch paths);
    POSTERGENRE_KEEP_FREED_MEMORY=0 leaves the allocator alone."""
    probe = ("import sys, postergenre.backbones._malloc as m; from postergenre.modeling.model import load_model; "
             "load_model(sys.argv[1]); print(m._done)")
    for value, expected in (("1", "True"), ("0", "False")):
        env = dict(os.environ, POSTERGENRE_KEEP_FREED_MEMORY=value)
        res = subprocess.run([sys.executable, "-c", probe, str(tiny_model)], capture_output=True, text=True, env=env, timeout=300)
        assert res.stdout.strip().splitlines()[-1] == expected, res.stderr
