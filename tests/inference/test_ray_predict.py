"""``predict --cluster ray`` (issue 29): the same rows as plain ``predict`` in both output formats,
error rows for bad files, ``--resume`` after an interruption, fast failure on a missing model.
One local Ray (2 CPUs) for the whole module; skipped when Ray is not installed."""

from __future__ import annotations

import io
import json
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import make_poster, run

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'postergenre[ray]'")
pytest.importorskip("ray.data")
pq = pytest.importorskip("pyarrow.parquet")

N = 100


@pytest.fixture(scope="module")
def local_ray():
    """One Ray start for the module (the runner uses a Ray already started, and leaves it running)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalogue")
    rng = np.random.default_rng(29)
    kinds = [{"Action"}, {"Comedy"}, {"Drama"}, {"Horror", "Drama"}, {"Action", "Comedy"}]
    for i in range(N):
        sub = root / f"shelf{i % 3}"
        sub.mkdir(exist_ok=True)
        make_poster(rng, kinds[i % len(kinds)]).save(sub / f"p{i:03d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(1)
    for i in range(3):
        make_poster(rng, {"Drama"}).save(root / f"good{i}.jpg")
    (root / "empty.jpg").write_bytes(b"")
    whole = io.BytesIO()
    make_poster(rng, {"Action"}).save(whole, format="JPEG")
    (root / "truncated.jpg").write_bytes(whole.getvalue()[:200])
    (root / "not_an_image.jpg").write_text("a text file with an image's name")
    huge = io.BytesIO()
    Image.new("1", (10100, 10100), 1).save(huge, format="PNG")  # 102 megapixels, a small file: a bomb
    (root / "huge.png").write_bytes(huge.getvalue())
    return root


def rows_of(out):
    if out.suffix == ".parquet":
        return pq.read_table(out).to_pylist()
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture(scope="module")
def plain(tiny_model, catalogue, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "plain.jsonl"
    res = run("predict", catalogue, "--model", tiny_model, "--output", out)
    assert res.exit_code == 0, res.output
    return {r["path"]: r for r in rows_of(out)}


def assert_same(rows, expected):
    by_path = {r["path"]: r for r in rows}
    assert len(by_path) == len(rows) == len(expected)  # every poster once
    assert by_path.keys() == expected.keys()
    for path, want in expected.items():
        got = by_path[path]
        assert got["predicted"] == want["predicted"] and got["error"] is None and got["text"] is None
        assert [g["genre"] for g in got["genres"]][:3] == [g["genre"] for g in want["genres"]][:3]
        scores = {g["genre"]: g["score"] for g in got["genres"]}
        assert max(abs(scores[g["genre"]] - g["score"]) for g in want["genres"]) <= 1e-6


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_same_rows_as_plain_predict(local_ray, tiny_model, catalogue, plain, tmp_path, suffix):
    out = tmp_path / f"genres{suffix}"
    res = run("predict", catalogue, "--model", tiny_model, "--cluster", "ray", "--output", out, "--quiet")
    assert res.exit_code == 0, res.output
    assert f"{N} poster(s)" in res.stderr
    assert_same(rows_of(out), plain)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_bad_files_are_error_rows(local_ray, tiny_model, bad_files, tmp_path):
    out = tmp_path / "bad.jsonl"
    res = run("predict", bad_files, "--model", tiny_model, "--cluster", "ray", "--output", out, "--quiet")
    assert res.exit_code == 0, res.output
    rows = {r["path"].rsplit("/", 1)[1]: r for r in rows_of(out)}
    assert sorted(rows) == sorted(p.name for p in bad_files.iterdir())
    failed = sorted(name for name, r in rows.items() if r["error"])
    assert failed == ["empty.jpg", "huge.png", "not_an_image.jpg", "truncated.jpg"]
    assert all(name in rows[name]["error"] for name in failed)  # each error names its file
    assert "4 of 7 input(s) could not be read" in res.stderr
    strict = run("predict", bad_files, "--model", tiny_model, "--cluster", "ray", "--output", out, "--force", "--strict", "--quiet")
    assert strict.exit_code == 1, strict.output


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_resume_reads_only_the_rest(local_ray, tiny_model, catalogue, plain, tmp_path, suffix):
    out = tmp_path / f"genres{suffix}"
    first = sorted(plain)[:40]  # an interrupted run: 40 posters done (and, in jsonl, a torn row)
    if suffix == ".jsonl":
        lines = [json.dumps(plain[p]) for p in first]
        out.write_text("\n".join(lines) + "\n" + lines[0][:30])
    else:
        from postergenre.inference.ray_output import rows_table

        out.mkdir()
        pq.write_table(rows_table([plain[p] for p in first]), out / "part-first.parquet")
    res = run("predict", catalogue, "--model", tiny_model, "--cluster", "ray", "--output", out, "--resume", "--quiet")
    assert res.exit_code == 0, res.output
    assert f"{N - 40} poster(s), 40 kept from before" in res.stderr  # only the rest was read
    assert_same(rows_of(out), plain)


def test_existing_output_is_refused(local_ray, tiny_model, catalogue, tmp_path):
    out = tmp_path / "genres.jsonl"
    out.write_text("hours of work\n")
    res = run("predict", catalogue, "--model", tiny_model, "--cluster", "ray", "--output", out)
    assert res.exit_code == 2 and "already exists" in res.stderr
    assert out.read_text() == "hours of work\n"


def test_missing_model_fails_fast(catalogue, tmp_path):
    start = time.monotonic()
    res = run("predict", catalogue, "--model", tmp_path / "no-such-model", "--cluster", "ray", "--output", tmp_path / "o.jsonl")
    assert res.exit_code == 2 and "no-such-model" in res.stderr and "not found" in res.stderr
    assert time.monotonic() - start < 10
    assert not (tmp_path / "o.jsonl").exists()


def test_output_must_be_jsonl_or_parquet(catalogue, tmp_path):
    res = run("predict", catalogue, "--cluster", "ray", "--output", tmp_path / "o.csv")
    assert res.exit_code == 2 and ".parquet" in res.stderr
    res = run("predict", catalogue, "--cluster", "ray")
    assert res.exit_code == 2 and "--output" in res.stderr


def test_a_clear_message_without_ray(catalogue, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    res = run("predict", catalogue, "--cluster", "ray", "--output", tmp_path / "o.jsonl")
    assert res.exit_code == 2 and "pip install 'postergenre[ray]'" in res.stderr


def test_sources_globs_and_list_files(catalogue, tmp_path):
    from postergenre.inference.predict import iter_image_paths
    from postergenre.inference.ray_runner import expand_sources

    listing = tmp_path / "posters.txt"
    listing.write_text(f"# two shelves\n{catalogue / 'shelf0'}\n\n{catalogue}/shelf1/p00*.jpg\n")
    got = [str(p) for p in iter_image_paths(expand_sources([listing, f"{catalogue}/shelf2/*.jpg"]))]
    want = sorted(str(p) for p in (catalogue / "shelf0").iterdir())
    want += sorted(str(p) for p in (catalogue / "shelf1").glob("p00*.jpg"))
    want += sorted(str(p) for p in (catalogue / "shelf2").glob("*.jpg"))
    assert got == want


@pytest.mark.slow
def test_text_on_reads_as_plain_predict(local_ray, tmp_path, monkeypatch):
    """The built-in model with --text on: each actor reads with its own OCR engine (its own cache
    here: the plain run gets another), and the rows are plain predict's."""
    from conftest import REPO

    posters = [REPO / "examples" / "horror.jpg", REPO / "examples" / "scifi.jpg"]
    out = tmp_path / "text.jsonl"
    res = run("predict", *posters, "--text", "on", "--cluster", "ray", "--output", out, "--quiet")
    assert res.exit_code == 0, res.output
    monkeypatch.setenv("POSTERGENRE_CACHE", str(tmp_path / "plain-cache"))  # nothing read by the actors is reused
    plain_out = tmp_path / "plain.jsonl"
    assert run("predict", *posters, "--text", "on", "--output", plain_out).exit_code == 0
    want = {r["path"]: r for r in rows_of(plain_out)}
    got = {r["path"]: r for r in rows_of(out)}
    assert got.keys() == want.keys()
    for path, r in want.items():
        assert got[path]["text"] == r["text"] and r["text"]  # the same words read
        assert got[path]["predicted"] == r["predicted"]
        scores = {g["genre"]: g["score"] for g in got[path]["genres"]}
        assert max(abs(scores[g["genre"]] - g["score"]) for g in r["genres"]) <= 1e-6


def test_uris_go_through_pyarrow(local_ray, tiny_model, bad_files, tmp_path):
    """``file://`` URIs take the path S3/GCS URIs take (listed and read through pyarrow's
    filesystems; S3 and GCS themselves cannot be reached offline): the same rows, named by URI."""
    uri = f"file://{bad_files}"
    out = tmp_path / "uris.jsonl"
    res = run("predict", uri, "--model", tiny_model, "--cluster", "ray", "--output", out, "--quiet")
    assert res.exit_code == 0, res.output
    rows = {r["path"]: r for r in rows_of(out)}
    assert sorted(rows) == sorted(f"{uri}/{p.name}" for p in bad_files.iterdir())
    local = tmp_path / "local.jsonl"
    assert run("predict", bad_files, "--model", tiny_model, "--cluster", "ray", "--output", local, "--quiet").exit_code == 0
    for r in rows_of(local):
        got = rows[f"file://{r['path']}"]
        assert got["predicted"] == r["predicted"] and got["genres"] == r["genres"]
        assert (got["error"] is None) == (r["error"] is None)
        assert got["error"] is None or f"file://{r['path']}" in got["error"]  # named by its URI


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_ctrl_c_publishes_the_rows_done(local_ray, tiny_model, catalogue, plain, tmp_path, monkeypatch, suffix):
    """Ctrl-C after the first batch came back: its rows are published whole, and --resume does the rest."""
    from postergenre.inference import ray_output
    from postergenre.inference.batch import Interrupted
    from postergenre.inference.ray_runner import run_on_ray

    add = ray_output.RayOutput.add

    def add_then_interrupt(self, table):
        add(self, table)
        raise KeyboardInterrupt

    out = tmp_path / f"genres{suffix}"
    monkeypatch.setattr(ray_output.RayOutput, "add", add_then_interrupt)
    with pytest.raises(Interrupted) as stopped:
        run_on_ray([catalogue], tiny_model, output=out, quiet=True)
    monkeypatch.undo()
    first = rows_of(out)
    assert 0 < len(first) == stopped.value.rows < N
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    res = run("predict", catalogue, "--model", tiny_model, "--cluster", "ray", "--output", out, "--resume", "--quiet")
    assert res.exit_code == 0 and f"{N - len(first)} poster(s), {len(first)} kept from before" in res.stderr
    assert_same(rows_of(out), plain)
