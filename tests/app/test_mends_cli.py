"""Issue 27, the command line: a huge image is one clean error row (with --text on too), --top-k
past the model's genres is a usage error as in the API, and explain writes to --output/-o."""

from __future__ import annotations

import json
import warnings

import pytest
from PIL import Image

from conftest import run

from postergenre.modeling.artifact import read_config


def test_a_huge_png_with_text_on_is_one_clean_error_row(tmp_path):
    """The image decoder and OCR load it in two threads: neither may show PIL's warning."""
    big = tmp_path / "big.png"
    Image.new("1", (12000, 12000), 1).save(big)  # one colour: 41 KB
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run("predict", big, "--text", "on")
    assert res.exit_code == 1  # every input failed
    assert res.stdout.splitlines() == [f"{big} -> ERROR: {big}: image is 12000x12000 (144 megapixels), above the cap of "
                                       "40 megapixels against decompression bombs; raise it with `postergenre serve "
                                       "--max-pixels N` or load_rgb(max_pixels=N)"]
    assert "Traceback" not in res.stderr and "DecompressionBomb" not in res.stderr + res.stdout
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_top_k_past_the_models_genres_is_a_usage_error(command, tiny_model, tiny_data, poster_dir):
    n = len(read_config(tiny_model).genres)
    target = [poster_dir] if command == "predict" else ["--data", tiny_data]
    res = run(command, *target, "--model", tiny_model, "--top-k", n + 1)
    assert res.exit_code == 2
    assert "Invalid value for '--top-k'" in res.output and f"give 1 to {n}" in res.output, res.output
    assert "->" not in res.stdout  # nothing predicted


def test_top_k_of_every_genre_gives_every_genre(tiny_model, poster_dir):
    n = len(read_config(tiny_model).genres)
    res = run("predict", poster_dir, "--model", tiny_model, "--top-k", n, "--format", "json")
    assert res.exit_code == 0, res.output
    assert {len(r["predicted"]) for r in json.loads(res.stdout)} == {n}


def test_an_onnx_models_genre_count_is_read_from_its_metadata(tiny_model):
    from postergenre.inference.scorer import genre_count, load_scorer

    export = load_scorer(tiny_model, "onnx").path
    assert genre_count(export) == len(read_config(tiny_model).genres) == genre_count(tiny_model)


@pytest.mark.parametrize("spelling", ["--output", "-o", "--out"])
def test_explain_writes_to_output_o_or_out(spelling, tiny_model, poster_dir, tmp_path):
    out = tmp_path / "heat.png"
    res = run("explain", poster_dir / "action.jpg", "--genre", "action", spelling, out, "--model", tiny_model)
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(f"wrote {out}") and Image.open(out).size[0] > 0
