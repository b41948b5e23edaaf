"""Building the extra set from clones of its sources (``postergenre data build-extra``), on tiny
generated git repositories in the real formats: the labels repository's headerless space-separated
CSV (28 genre flags incl. Film-Noir), the images repository's en_90/ and images/ folders, and a study
dataset in the study's layout."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from postergenre.data.build_extra import SOURCE_GENRES, STUDY_GENRES, build_extra_set
from postergenre.app.cli import app
from postergenre.data.dataset import DatasetError, load_dataset

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}

# IMDb number -> genre string of the labels CSV, and what becomes of each.
LABELS = {
    1: "Drama|Film-Noir|Crime",  # Film-Noir dropped -> ['Drama', 'Crime']
    2: "Short|Comedy",
    3: "Film-Noir",  # no genre left -> removed
    4: "Action|Adventure",  # a row of the study's train.csv -> left out
    5: "Horror",  # an image of the study (no row there) -> left out
    6: "Western",  # no poster in the images repository
    7: "Documentary",  # poster byte-identical to a study poster -> left out
    8: "Animation|Family",  # 8 and 9 share one poster (a box set): both kept
    9: "Animation",
    2872750: "Talk-Show|News|Reality-TV",  # Talk-Show dropped
}
EXPECTED = {"tt0000001": ["Drama", "Crime"], "tt0000002": ["Short", "Comedy"], "tt0000008": ["Animation", "Family"],
            "tt0000009": ["Animation"], "tt2872750": ["News", "Reality-TV"]}


def git(*args, cwd=None):
    subprocess.run(["git", "-c", "init.defaultBranch=main", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True)


def commit_repo(path: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    git("init", "-q", str(path))
    git("add", "-A", cwd=path)
    git("commit", "-q", "-m", "data", cwd=path)
    return path


def jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (18, 27), color).save(buf, "JPEG")
    return buf.getvalue()


def label_line(number: int, genres: str) -> str:
    flags = " ".join("1" if g in genres.split("|") else "0" for g in SOURCE_GENRES)
    return f"Posters/{number}.jpg {flags} {genres}\n"


def write_study(path: Path, rows=("tt0000004", "tt0001000"), images=None) -> Path:
    (path / "Images").mkdir(parents=True)
    cols = ["Action", "Adventure", "N/A"]
    lines = ["Id,Genre," + ",".join(cols)] + [f'{i},"[\'Action\']",1,0,0' for i in rows]
    (path / "train.csv").write_text("\n".join(lines) + "\n")
    for name, data in (images or {}).items():
        (path / "Images" / name).write_bytes(data)
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """(labels repo, images repo, study dir, {Id: poster bytes in the images repo}) as work-tree clones."""
    root = tmp_path_factory.mktemp("sources")
    csv_text = "".join(label_line(n, g) for n, g in LABELS.items())
    labels = commit_repo(root / "labels", {"csv-files/Multi_hot_encoded_data.csv": csv_text.encode(), "README.md": b"x"})
    posters = {f"tt{n:07d}": jpeg((20 * n % 256, 90, 160)) for n in (1, 2, 3, 4, 5, 7, 8, 2872750)}
    posters["tt0000009"] = posters["tt0000008"]
    files = {f"{'en_90' if i < 'tt0000005' else 'images'}/{i}.jpg": data for i, data in posters.items()}
    images = commit_repo(root / "images", {**files, "README.md": b"x", "other/tt0000006.jpg": jpeg("red")})
    study = write_study(root / "study", images={"tt0000005.jpg": jpeg("blue"), "tt0009999.jpg": posters["tt0000007"]})
    return labels, images, study, posters


def check_built(out: Path, report, posters) -> None:
    assert report.rows_read == len(LABELS)
    assert report.genres_dropped == {"Film-Noir": 2, "Talk-Show": 1}
    assert report.rows_without_genre == ["tt0000003"]
    assert report.study_ids_left_out == ["tt0000004", "tt0000005"]
    assert report.ids_without_image == ["tt0000006"]
    assert report.duplicates_of_study == ["tt0000007"]
    assert report.identical_among_extras == 2
    assert report.posters == len(EXPECTED)
    lines = (out / "train.csv").read_bytes().decode().split("\r\n")
    assert lines[0] == "Id,Genre," + ",".join(STUDY_GENRES)
    assert lines[1] == 'tt0000001,"[\'Drama\', \'Crime\']",' + ",".join("1" if g in ("Drama", "Crime") else "0" for g in STUDY_GENRES)
    assert [line.split(",")[0] for line in lines[1:-1]] == sorted(EXPECTED)
    assert sorted(p.name for p in (out / "Images").iterdir()) == [f"{i}.jpg" for i in sorted(EXPECTED)]
    assert all((out / "Images" / f"{i}.jpg").read_bytes() == posters[i] for i in EXPECTED)
    ds, data_report = load_dataset(out, verify_images=True)
    assert ds.genres == STUDY_GENRES and ds.ids == sorted(EXPECTED)
    for i, row in zip(ds.ids, ds.labels):
        assert {g for g, v in zip(ds.genres, row) if v} == set(EXPECTED[i])
    assert data_report.images_without_labels == [] and data_report.skipped == {}


def test_build_from_work_tree_clones(sources, tmp_path):
    labels, images, study, posters = sources
    report = build_extra_set(labels, images, study, tmp_path / "extra")
    check_built(tmp_path / "extra", report, posters)
    assert report.images_written == len(EXPECTED) and report.images_kept == 0
    assert "Ids of the study left out: 2 [tt0000004, tt0000005]" in report.to_text()


def test_bare_clones_give_the_same_set(sources, tmp_path):
    labels, images, study, posters = sources
    git("clone", "-q", "--bare", str(labels), str(tmp_path / "labels.git"))
    git("clone", "-q", "--bare", str(images), str(tmp_path / "images.git"))
    report = build_extra_set(tmp_path / "labels.git", tmp_path / "images.git", study, tmp_path / "extra")
    check_built(tmp_path / "extra", report, posters)
    build_extra_set(labels, images, study, tmp_path / "from-work-tree")
    assert (tmp_path / "extra/train.csv").read_bytes() == (tmp_path / "from-work-tree/train.csv").read_bytes()


def test_rerun_resumes_and_keeps_existing_images(sources, tmp_path):
    labels, images, study, posters = sources
    out = tmp_path / "extra"
    build_extra_set(labels, images, study, out)
    (out / "Images/tt0000002.jpg").unlink()  # as if the first run had stopped before it
    (out / "train.csv").unlink()
    mtime = (out / "Images/tt0000001.jpg").stat().st_mtime_ns
    report = build_extra_set(labels, images, study, out)
    assert report.images_written == 1 and report.images_kept == len(EXPECTED) - 1
    assert (out / "Images/tt0000001.jpg").stat().st_mtime_ns == mtime  # kept, not rewritten
    check_built(out, report, posters)
    assert not [p for p in out.rglob(".*")]  # no temp files left


def test_cli_build_extra(sources, tmp_path):
    labels, images, study, posters = sources
    args = ["data", "build-extra", "--labels-repo", labels, "--images-repo", images, "--study", study]
    res = CliRunner().invoke(app, [str(a) for a in args + ["--out", tmp_path / "extra"]])
    assert res.exit_code == 0, res.output
    assert f"wrote {tmp_path / 'extra'}/train.csv: 5 posters (5 images written now, 0 already there)" in res.stdout
    assert "genres dropped (rows): Film-Noir 2, Talk-Show 1" in res.stdout
    assert load_dataset(tmp_path / "extra")[0].ids == sorted(EXPECTED)
    args[5] = tmp_path  # --images-repo: a plain folder
    res = CliRunner().invoke(app, [str(a) for a in args + ["--out", tmp_path / "extra2"]])
    assert res.exit_code == 2 and res.stderr.startswith(f"error: {tmp_path}: not a git clone or bare git directory")
    assert not (tmp_path / "extra2").exists()


def _labels_repo(tmp_path: Path, text: str) -> Path:
    return commit_repo(tmp_path / "bad-labels", {"csv-files/Multi_hot_encoded_data.csv": text.encode()})


@pytest.mark.parametrize("case, message", [
    ("no labels csv", "Multi_hot_encoded_data.csv: labels CSV not found"),
    ("header line", "Multi_hot_encoded_data.csv, line 1: expected 'Posters/<IMDb number>.jpg', 28 genre flags"),
    ("flags disagree", "line 2: the genre flags (Drama) disagree with the genre string 'Comedy'"),
    ("conflicting rows", "line 2: Id tt0000001 appears again with other genres"),
    ("images not a repo", "not a git clone or bare git directory"),
    ("images missing", "images-nowhere: folder not found"),
    ("images without posters", "no posters en_90/<Id>.jpg or images/<Id>.jpg at HEAD"),
    ("study without train.csv", "train.csv: the study's labels CSV not found"),
    ("study without Id", "train.csv: no 'Id' column"),
    ("out is the study", "the output folder must not be the study's dataset"),
])
def test_bad_input_is_a_clear_error(sources, tmp_path, case, message):
    labels, images, study, _ = sources
    out = tmp_path / "extra"
    if case == "no labels csv":
        labels = commit_repo(tmp_path / "bad-labels", {"README.md": b"x"})
    elif case == "header line":
        labels = _labels_repo(tmp_path, "Img-paths " + " ".join(SOURCE_GENRES) + " Genre\n" + label_line(1, "Drama"))
    elif case == "flags disagree":
        labels = _labels_repo(tmp_path, label_line(1, "Drama") + label_line(2, "Drama").replace("Drama\n", "Comedy\n"))
    elif case == "conflicting rows":
        labels = _labels_repo(tmp_path, label_line(1, "Drama") + label_line(1, "Comedy"))
    elif case == "images not a repo":
        images = tmp_path
    elif case == "images missing":
        images = tmp_path / "images-nowhere"
    elif case == "images without posters":
        images = commit_repo(tmp_path / "bad-images", {"README.md": b"x"})
    elif case == "study without train.csv":
        study = write_study(tmp_path / "study")
        (study / "train.csv").unlink()
    elif case == "study without Id":
        study = write_study(tmp_path / "study")
        (study / "train.csv").write_text("Name,Action\nx,1\n")
    elif case == "out is the study":
        out = study
    with pytest.raises(DatasetError) as err:
        build_extra_set(labels, images, study, out)
    assert message in str(err.value)
    assert case == "out is the study" or not (out / "train.csv").exists()
