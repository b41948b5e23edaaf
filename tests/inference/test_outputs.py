"""Files the user names: the format follows the extension, and nothing existing is replaced
unless --force (overwrite) or, where it makes sense, --resume (continue) says so."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import parse_table, run

PREDICT = ("--engine", "torch")


@pytest.fixture
def model_args(tiny_model):
    return ("--model", tiny_model, *PREDICT)


@pytest.mark.parametrize("name, check", [
    ("o.json", lambda text: len(json.loads(text)) == 3),
    ("o.jsonl", lambda text: len([json.loads(line) for line in text.splitlines()]) == 3),
    ("o.csv", lambda text: len(list(csv.DictReader(text.splitlines()))) == 3),
    ("o.TXT", lambda text: len(parse_table(text)) == 3),
])
def test_the_format_follows_the_extension(model_args, poster_dir, tmp_path, name, check):
    res = run("predict", poster_dir, *model_args, "--output", tmp_path / name)
    assert res.exit_code == 0, res.output
    assert check((tmp_path / name).read_text())


def test_an_extension_that_names_no_format_needs_format(model_args, poster_dir, tmp_path):
    out = tmp_path / "o.dat"
    res = run("predict", poster_dir, *model_args, "--output", out)
    assert res.exit_code == 2 and str(out) in res.stderr and "give --format" in res.stderr and not out.exists()
    res = run("predict", poster_dir, *model_args, "--output", out, "--format", "csv")
    assert res.exit_code == 0 and out.read_text().startswith("path,predicted,error,")


@pytest.mark.parametrize("fmt, name", [("json", "x.csv"), ("jsonl", "x.json"), ("table", "x.json"), ("csv", "x.txt")])
def test_a_format_that_contradicts_the_extension_is_refused(model_args, poster_dir, tmp_path, fmt, name):
    res = run("predict", poster_dir, *model_args, "--format", fmt, "--output", tmp_path / name)
    assert res.exit_code == 2 and f"--format {fmt} does not match the output file {name}" in res.stderr
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("name", ["out.csv", "out.json"])  # streamed / written at once
def test_predict_refuses_to_replace_a_file_unless_forced(model_args, poster_dir, tmp_path, name):
    out = tmp_path / name
    big = "path,predicted,error\n" + "".join(f"/catalogue/{i}.jpg,Drama,\n" for i in range(3000))
    out.write_text(big)
    res = run("predict", poster_dir, *model_args, "--output", out)
    assert res.exit_code == 2
    assert res.stderr.strip().startswith(f"error: {out} already exists; add --force")
    assert ("--resume" in res.stderr) == (name == "out.csv")  # only a streamed file can be continued
    assert out.read_text() == big
    res = run("predict", poster_dir, *model_args, "--output", out, "--force")
    assert res.exit_code == 0, res.output
    assert "/catalogue/" not in out.read_text()


def test_an_output_that_is_a_folder_is_refused(model_args, poster_dir, tmp_path):
    res = run("predict", poster_dir, *model_args, "--output", tmp_path, "--format", "json", "--force")
    assert res.exit_code == 2 and f"{tmp_path} is a folder" in res.stderr


def test_evaluate_output_format_and_overwrite(tiny_model, tiny_data, cache_dir, tmp_path):
    args = ("evaluate", "--data", tiny_data, "--model", tiny_model, "--cache-dir", cache_dir)
    out = tmp_path / "metrics.json"
    assert run(*args, "--output", out).exit_code == 0
    assert json.loads(out.read_text())["n_posters"] == 48  # JSON, as the extension says
    res = run(*args, "--output", out)
    assert res.exit_code == 2 and f"{out} already exists; add --force" in res.stderr
    assert run(*args, "--output", out, "--force").exit_code == 0
    res = run(*args, "--output", tmp_path / "m.csv")
    assert res.exit_code == 2 and "name a .txt, .json file or give --format" in res.stderr
    png = tmp_path / "rel.png"
    png.write_bytes(b"an older diagram")
    res = run(*args, "--reliability", png)
    assert res.exit_code == 2 and f"{png} already exists" in res.stderr and png.read_bytes() == b"an older diagram"


def test_export_refuses_an_existing_file(tiny_model, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"an earlier export")
    res = run("export", "--model", tiny_model, "--out", out)
    assert res.exit_code == 2 and f"{out} already exists; add --force to overwrite it" in res.stderr
    assert out.read_bytes() == b"an earlier export"


def test_train_refuses_an_existing_model_directory(tiny_data, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("{}")
    res = run("train", "--data", tiny_data, "--out", out, "-q")
    assert res.exit_code == 2
    assert res.stderr.strip() == f"error: {out} already exists; add --force to overwrite it or --resume to continue it"
    assert [p.name for p in out.iterdir()] == ["config.json"]


def test_compare_refuses_a_results_folder_in_use(tiny_data, tmp_path):
    (tmp_path / "results.md").write_text("# an earlier study")
    res = run("compare", "--data", tiny_data, "--out", tmp_path, "--backbones", "pixels")
    assert res.exit_code == 2 and f"{tmp_path} already exists; add --force" in res.stderr


def _shards(tmp_path, n=2):
    for i in range(n):
        (tmp_path / f"g.shard-{i}-of-{n}.csv").write_text(f"path,predicted,error,Drama\n/p{i}.jpg,Drama,,0.9\n")


def test_merge_names_what_it_looked_for(tmp_path):
    res = run("merge", tmp_path / "nothing.csv")
    assert res.exit_code == 2
    assert res.stderr.strip() == (f"error: no shards found for {tmp_path / 'nothing.csv'} "
                                  "(expected nothing.shard-I-of-N.csv next to it)")


def test_merge_refuses_to_replace_the_output_unless_forced(tmp_path):
    out = tmp_path / "g.csv"
    _shards(tmp_path)
    out.write_text("path,predicted,error,Drama\n")
    res = run("merge", out, "--keep")
    assert res.exit_code == 2 and f"{out} already exists; add --force" in res.stderr
    res = run("merge", out, "--force")
    assert res.exit_code == 0 and res.stdout.strip() == f"wrote {out}: 2 poster(s)"
    assert [r["path"] for r in csv.DictReader(out.open())] == ["/p0.jpg", "/p1.jpg"]
