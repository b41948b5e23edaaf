"""Build the extra poster set (``../shared/datasets/extra-posters``) yourself, from public sources.

In (all local copies; nothing is downloaded here):

- ``labels_repo``: a clone of ``d-misra/Multi-label-movie-poster-genre-classification``. Its
  ``csv-files/Multi_hot_encoded_data.csv`` has no header; each line is ``Posters/<IMDb number>.jpg``,
  28 genre flags (0/1, in the order of :data:`SOURCE_GENRES`) and the genre string
  (``Crime|Mystery|Drama``), separated by spaces.
- ``images_repo``: a clone of ``srijonsarkar/Movie-Genre-Prediction`` (posters ``en_90/<Id>.jpg`` and
  ``images/<Id>.jpg``). Both repositories are read through git (``HEAD``), so a work-tree clone or a
  bare git directory both work.
- ``study_dir``: the study's dataset (``laxmimerit/Movies-Poster_Dataset``): ``train.csv`` + ``Images/``.

Out: ``out_dir/train.csv`` (``Id,Genre,<the 24 genres>``, sorted by Id, written last, through a temp
file and a rename) and ``out_dir/Images/<Id>.jpg``. A rerun resumes: images already there are kept.

Rules, those of the shared set: the genre string keeps its order; genres outside :data:`STUDY_GENRES`
(Film-Noir, Adult, Talk-Show, Game-Show) are dropped and rows left without a genre removed; every Id
of the study (a ``train.csv`` row or an image name) is left out, and so is every poster whose bytes
are identical to a poster of the study (compared by git blob id, i.e. the SHA-1 of the bytes);
titles without a poster in the images repository are left out. Identical posters shared by several
extra Ids (box-set covers) are kept, as in the shared set, and counted.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .._io import atomic_bytes
from .dataset import DatasetError
from .images import IMAGE_EXTENSIONS

LABELS_CSV = "csv-files/Multi_hot_encoded_data.csv"
IMAGE_FOLDERS = ("en_90", "images")
STUDY_GENRES = ["Action", "Adventure", "Animation", "Biography", "Comedy", "Crime", "Documentary", "Drama",
                "Family", "Fantasy", "History", "Horror", "Music", "Musical", "Mystery", "News", "Reality-TV",
                "Romance", "Sci-Fi", "Short", "Sport", "Thriller", "War", "Western"]
# The flag columns of LABELS_CSV (its csv-files/Encoded_data_column_lookup.csv, less Img-paths and Genre).
SOURCE_GENRES = sorted(STUDY_GENRES + ["Adult", "Film-Noir", "Game-Show", "Talk-Show"])
_POSTER_PATH = re.compile(r"Posters/(\d+)\.jpg")


@dataclass
class BuildReport:
    """What :func:`build_extra_set` did. Id lists are sorted; ``genres_dropped`` counts rows read."""

    out_dir: str
    rows_read: int = 0
    genres_dropped: dict[str, int] = field(default_factory=dict)
    rows_without_genre: list[str] = field(default_factory=list)
    study_ids_left_out: list[str] = field(default_factory=list)
    ids_without_image: list[str] = field(default_factory=list)
    duplicates_of_study: list[str] = field(default_factory=list)  # bytes identical to a study poster
    identical_among_extras: int = 0  # extra Ids sharing their bytes with another extra Id (kept)
    posters: int = 0  # rows of the train.csv written
    images_written: int = 0
    images_kept: int = 0  # already present from an earlier run

    def to_text(self, max_list: int = 5) -> str:
        def few(ids) -> str:
            return f"{len(ids)}" + (f" [{', '.join(ids[:max_list])}{', ...' if len(ids) > max_list else ''}]" if ids else "")

        dropped = ", ".join(f"{g} {n}" for g, n in sorted(self.genres_dropped.items())) or "none"
        return "\n".join([
            f"label rows read: {self.rows_read}",
            f"genres dropped (rows): {dropped}",
            f"rows left without a genre (removed): {few(self.rows_without_genre)}",
            f"Ids of the study left out: {few(self.study_ids_left_out)}",
            f"Ids without a poster in the images repository: {few(self.ids_without_image)}",
            f"posters identical to a study poster (left out): {few(self.duplicates_of_study)}",
            f"Ids sharing an identical poster with another extra Id (kept): {self.identical_among_extras}",
            f"wrote {self.out_dir}/train.csv: {self.posters} posters "
            f"({self.images_written} images written now, {self.images_kept} already there)",
        ])


def build_extra_set(labels_repo, images_repo, study_dir, out_dir) -> BuildReport:
    """Write the extra set into ``out_dir`` (see the module docstring); bad input raises DatasetError."""
    study_dir, out_dir = Path(study_dir), Path(out_dir)
    if out_dir.resolve() == study_dir.resolve():
        raise DatasetError(f"{out_dir}: the output folder must not be the study's dataset")
    labels, report = _read_labels(Path(labels_repo)), BuildReport(str(out_dir))
    git_dir = _git_dir(Path(images_repo))
    blobs = _image_blobs(git_dir)
    study_ids, study_hashes = _study(study_dir, _hash_name(blobs))
    report.rows_read = len(labels)
    rows: dict[str, list[str]] = {}
    for poster_id, genres in labels.items():
        kept = [g for g in genres if g in STUDY_GENRES]
        for g in set(genres) - set(kept):
            report.genres_dropped[g] = report.genres_dropped.get(g, 0) + 1
        if not kept:
            report.rows_without_genre.append(poster_id)
        elif poster_id in study_ids:
            report.study_ids_left_out.append(poster_id)
        elif poster_id not in blobs:
            report.ids_without_image.append(poster_id)
        elif blobs[poster_id] in study_hashes:
            report.duplicates_of_study.append(poster_id)
        else:
            rows[poster_id] = kept
    shared = Counter(blobs[i] for i in rows)
    report.identical_among_extras = sum(1 for i in rows if shared[blobs[i]] > 1)
    for ids in (report.rows_without_genre, report.study_ids_left_out, report.ids_without_image, report.duplicates_of_study):
        ids.sort()
    images = out_dir / "Images"
    images.mkdir(parents=True, exist_ok=True)
    todo = {i: blobs[i] for i in rows if not (images / f"{i}.jpg").is_file()}
    report.images_kept = len(rows) - len(todo)
    report.images_written = _write_blobs(git_dir, todo, images)
    _write_csv(out_dir / "train.csv", rows)
    report.posters = len(rows)
    return report


def _read_labels(repo: Path) -> dict[str, list[str]]:
    """``Id -> genre list`` (source order) from LABELS_CSV of a work-tree clone or a bare git dir."""
    path = repo / LABELS_CSV
    if path.is_file():
        text = path.read_text(encoding="utf-8-sig")
    else:
        git_dir = _git_dir(repo)
        done = subprocess.run(["git", f"--git-dir={git_dir}", "show", f"HEAD:{LABELS_CSV}"], capture_output=True)
        if done.returncode != 0:
            raise DatasetError(f"{path}: labels CSV not found (neither in the work tree nor in the repository's HEAD)")
        text, path = done.stdout.decode("utf-8-sig"), Path(f"{git_dir}:{LABELS_CSV}")
    out: dict[str, list[str]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        poster_id, genres = _parse_line(line, f"{path}, line {n}")
        if out.setdefault(poster_id, genres) != genres:
            raise DatasetError(f"{path}, line {n}: Id {poster_id} appears again with other genres")
    if not out:
        raise DatasetError(f"{path}: no label rows")
    return out


def _parse_line(line: str, where: str) -> tuple[str, list[str]]:
    cells = line.split()
    match = _POSTER_PATH.fullmatch(cells[0])
    if len(cells) != len(SOURCE_GENRES) + 2 or not match or any(c not in ("0", "1") for c in cells[1:-1]):
        raise DatasetError(
            f"{where}: expected 'Posters/<IMDb number>.jpg', {len(SOURCE_GENRES)} genre flags (0/1) and a "
            f"genre string like 'Crime|Drama', separated by spaces; got {line[:80]!r}")
    genres = cells[-1].split("|")
    flagged = {g for g, c in zip(SOURCE_GENRES, cells[1:-1]) if c == "1"}
    if flagged != set(genres):
        raise DatasetError(f"{where}: the genre flags ({', '.join(sorted(flagged))}) disagree with the genre string {cells[-1]!r}")
    return f"tt{int(match.group(1)):07d}", genres


def _git_dir(repo: Path) -> Path:
    """The git directory of a work-tree clone (``repo/.git``) or a bare one (``repo``); checked."""
    if not repo.is_dir():
        raise DatasetError(f"{repo}: folder not found (give a git clone or a bare git directory)")
    git_dir = repo / ".git" if (repo / ".git").exists() else repo
    done = subprocess.run(["git", f"--git-dir={git_dir}", "rev-parse", "--verify", "-q", "HEAD^{tree}"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise DatasetError(f"{repo}: not a git clone or bare git directory with a commit ({done.stderr.strip() or 'no HEAD'})")
    return git_dir


def _image_blobs(git_dir: Path) -> dict[str, str]:
    """``Id -> blob id`` of the posters ``en_90/<Id>.jpg`` and ``images/<Id>.jpg`` at HEAD."""
    tree = subprocess.run(["git", f"--git-dir={git_dir}", "ls-tree", "-r", "HEAD", "--", *IMAGE_FOLDERS],
                          capture_output=True, text=True, check=True).stdout
    blobs = {}
    for line in tree.splitlines():
        meta, path = line.split("\t", 1)
        folder, _, name = path.rpartition("/")
        if folder in IMAGE_FOLDERS and name.endswith(".jpg") and meta.split()[1] == "blob":
            blobs[name[:-4]] = meta.split()[2]
    if not blobs:
        raise DatasetError(f"{git_dir}: no posters {IMAGE_FOLDERS[0]}/<Id>.jpg or {IMAGE_FOLDERS[1]}/<Id>.jpg at HEAD")
    return blobs


def _hash_name(blobs: dict[str, str]) -> str:
    return "sha256" if len(next(iter(blobs.values()))) == 64 else "sha1"


def _study(study_dir: Path, hash_name: str) -> tuple[set[str], set[str]]:
    """(Ids of the study: train.csv rows and image names, git blob ids of its images)."""
    labels, images = study_dir / "train.csv", study_dir / "Images"
    if not labels.is_file():
        raise DatasetError(f"{labels}: the study's labels CSV not found (give the study's dataset folder)")
    if not images.is_dir():
        raise DatasetError(f"{images}: the study's images folder not found (give the study's dataset folder)")
    with open(labels, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if "Id" not in (reader.fieldnames or []):
            raise DatasetError(f"{labels}: no 'Id' column")
        ids = {row["Id"].strip() for row in reader}
    hashes = set()
    for p in images.iterdir():
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
            ids.add(p.stem)
            data = p.read_bytes()
            hashes.add(hashlib.new(hash_name, b"blob %d\0" % len(data) + data).hexdigest())
    return ids, hashes


def _write_blobs(git_dir: Path, todo: dict[str, str], images: Path) -> int:
    """Write each blob as ``images/<Id>.jpg`` (temp file + rename); returns how many were written."""
    if not todo:
        return 0
    proc = subprocess.Popen(["git", f"--git-dir={git_dir}", "cat-file", "--batch"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        for poster_id, blob in todo.items():
            proc.stdin.write(f"{blob}\n".encode())
            proc.stdin.flush()
            header = proc.stdout.readline().split()
            if len(header) < 3 or header[1] != b"blob":
                raise DatasetError(f"{git_dir}: poster {poster_id} (blob {blob}) cannot be read from the repository")
            data = proc.stdout.read(int(header[2]))
            proc.stdout.read(1)
            atomic_bytes(images / f"{poster_id}.jpg", data)
    finally:
        proc.stdin.close()
        proc.wait()
    return len(todo)


def _write_csv(path: Path, rows: dict[str, list[str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)  # \r\n line ends, as in the shared train.csv
    writer.writerow(["Id", "Genre", *STUDY_GENRES])
    for poster_id in sorted(rows):
        genres = rows[poster_id]
        writer.writerow([poster_id, str(genres), *(int(g in genres) for g in STUDY_GENRES)])
    atomic_bytes(path, buf.getvalue().encode("utf-8"))
