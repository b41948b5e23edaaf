"""The poster dataset: the study's layout, its quirks, checks and splits.

Layout: ``train.csv`` (``Id``, optional ``Genre``, then one 0/1 column per genre) and
``Images/<Id>.jpg``. Identical duplicate rows are merged; conflicting ones are an error naming
the Id. ``N/A`` is a placeholder, not a genre: it is dropped, and posters left without any
genre are left out. Images without a label row are ignored (and counted).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DatasetError, UsageError  # noqa: F401 - DatasetError re-exported
from .images import IMAGE_EXTENSIONS, ImageLoadError, file_digest, load_rgb

ID_COLUMN = "Id"
TEXT_COLUMNS = {"Genre"}  # free-text columns in the study's CSV, not labels
PLACEHOLDER_GENRES = {"N/A"}
# Below this many positives a genre's F1/AP says little: the report flags it.
MIN_POSITIVES_TO_JUDGE = 10


@dataclass
class PosterDataset:
    """Labelled posters. ``labels`` is ``(N, G)`` uint8 aligned with ``ids``/``paths``/``genres``.

    ``known`` ``(N, G)`` uint8: 1 where the label is known, 0 where a source lacks that genre
    (masked out of the loss, never read as negative); ``None`` when every label is known.
    ``sources``: the name of the dataset each poster comes from; the first name is the primary
    (validation and test posters come only from it). ``None`` for a single dataset.
    """

    ids: list[str]
    paths: list[Path]
    labels: np.ndarray
    genres: list[str]
    known: np.ndarray | None = None
    sources: list[str] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index) -> "PosterDataset":
        index = np.asarray(index, dtype=int)
        return PosterDataset([self.ids[i] for i in index], [self.paths[i] for i in index], self.labels[index], self.genres,
                             None if self.known is None else self.known[index],
                             None if self.sources is None else [self.sources[i] for i in index])

    def labels_in(self, genres: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The labels in the columns of ``genres`` (a model's): ``(N, len(genres))`` ints, and where
        they are known, bool (a genre this dataset lacks is unknown, as is a source's masked one).
        A genre of this dataset that is not in ``genres`` is a DatasetError."""
        missing = [g for g in self.genres if g not in genres]
        if missing:
            raise DatasetError(f"the dataset has genres the model does not know: {', '.join(missing)}")
        cols = [genres.index(g) for g in self.genres]
        y = np.zeros((len(self), len(genres)), dtype=int)
        known = np.zeros((len(self), len(genres)), dtype=bool)
        y[:, cols] = self.labels
        known[:, cols] = True if self.known is None else self.known.astype(bool)
        return y, known

    @property
    def primary(self) -> np.ndarray:
        """Indices of the primary dataset's posters (all of them for a single dataset)."""
        if self.sources is None:
            return np.arange(len(self))
        return np.flatnonzero(np.asarray(self.sources) == self.sources[0])

    def subset_ids(self, ids) -> "PosterDataset":
        """The posters whose Id is in ``ids`` (in this dataset's order); an Id absent here is an error."""
        wanted = set(ids)
        missing = wanted - set(self.ids)
        if missing:
            raise DatasetError(f"{len(missing)} Id(s) of the split are not in this dataset, e.g. {sorted(missing)[0]}")
        return self.subset([i for i, pid in enumerate(self.ids) if pid in wanted])


@dataclass
class DatasetReport:
    """What :func:`load_dataset` found. Plain data, printable with :meth:`to_text`."""

    labels_csv: str
    images_dir: str
    n_rows: int = 0
    n_posters: int = 0
    n_images: int = 0
    genre_counts: dict[str, int] = field(default_factory=dict)
    duplicate_rows_merged: list[str] = field(default_factory=list)
    placeholder_only: list[str] = field(default_factory=list)  # e.g. only "N/A": left out
    images_without_labels: list[str] = field(default_factory=list)
    labels_without_images: list[str] = field(default_factory=list)
    unreadable_images: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # Id -> why (with skip_bad)
    genres_per_poster: dict[int, int] = field(default_factory=dict)

    @property
    def unjudgeable_genres(self) -> list[str]:
        return [g for g, n in self.genre_counts.items() if n < MIN_POSITIVES_TO_JUDGE]

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["unjudgeable_genres"] = self.unjudgeable_genres
        return d

    def to_text(self, max_list: int = 10) -> str:
        def few(items) -> str:
            items = list(items)
            more = f", ... (+{len(items) - max_list})" if len(items) > max_list else ""
            return ", ".join(map(str, items[:max_list])) + more

        lines = [
            f"labels: {self.labels_csv} ({self.n_rows} rows)",
            f"images: {self.images_dir} ({self.n_images} image files)",
            f"usable labelled posters: {self.n_posters}",
            "genres per poster: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.genres_per_poster.items())),
            "posters per genre:",
        ]
        width = max((len(g) for g in self.genre_counts), default=5)
        for g, n in sorted(self.genre_counts.items(), key=lambda kv: -kv[1]):
            flag = "  (too few to judge)" if n < MIN_POSITIVES_TO_JUDGE else ""
            lines.append(f"  {g:<{width}} {n:>6}{flag}")
        checks = [
            ("identical duplicate rows merged", self.duplicate_rows_merged),
            ("posters with only a placeholder label (left out)", self.placeholder_only),
            ("images without a label row (ignored)", self.images_without_labels),
            ("label rows without an image", self.labels_without_images),
            ("unreadable images", [f"{k} ({v})" for k, v in self.unreadable_images.items()]),
            ("rows skipped", [f"{k} ({v})" for k, v in self.skipped.items()]),
        ]
        for title, items in checks:
            lines.append(f"{title}: {len(items)}" + (f" [{few(items)}]" if items else ""))
        if self.unjudgeable_genres:
            lines.append(f"genres that cannot be judged (< {MIN_POSITIVES_TO_JUDGE} posters): {few(self.unjudgeable_genres)}")
        return "\n".join(lines)


def resolve_layout(data_dir=None, labels=None, images=None) -> tuple[Path, Path]:
    """``--data DIR`` or ``--labels CSV --images DIR`` -> (labels csv, images dir)."""
    if data_dir is not None:
        data_dir = Path(data_dir)
        labels = Path(labels) if labels else data_dir / "train.csv"
        images = Path(images) if images else data_dir / "Images"
    if labels is None or images is None:
        raise DatasetError("give --data DIR, or both --labels CSV and --images DIR")
    labels, images = Path(labels), Path(images)
    if not labels.is_file():
        raise DatasetError(f"{labels}: labels CSV not found")
    if not images.is_dir():
        raise DatasetError(f"{images}: images folder not found")
    return labels, images


def read_labels(labels_csv: Path) -> tuple[pd.DataFrame, list[str], list[str], int]:
    """Parse and validate the labels CSV.

    Returns (rows with unique Ids, genre columns, Ids of merged identical duplicates, raw row count).
    """
    try:
        df = pd.read_csv(labels_csv, dtype=str, encoding="utf-8-sig", keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{labels_csv}: the CSV is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{labels_csv}: not a readable CSV ({exc})") from None
    df.columns = [c.strip() for c in df.columns]
    if ID_COLUMN not in df.columns:
        raise DatasetError(f"{labels_csv}: no '{ID_COLUMN}' column (columns: {', '.join(df.columns[:8])})")
    if df.empty:
        raise DatasetError(f"{labels_csv}: the CSV has a header but no rows")
    genre_cols = [c for c in df.columns if c != ID_COLUMN and c not in TEXT_COLUMNS]
    if not genre_cols:
        raise DatasetError(f"{labels_csv}: no genre columns besides {ID_COLUMN}")
    values = df[genre_cols].apply(lambda s: s.str.strip())
    bad = ~values.isin(["0", "1"])
    if bad.to_numpy().any():
        r, c = np.argwhere(bad.to_numpy())[0]
        raise DatasetError(
            f"{labels_csv}: row {r + 2} (Id {df[ID_COLUMN].iloc[r]}), column '{genre_cols[c]}': "
            f"value {values.iat[r, c]!r} is not 0 or 1"
        )
    df = pd.concat([df[[ID_COLUMN]].apply(lambda s: s.str.strip()), values.astype(np.uint8)], axis=1)
    empty_ids = df.index[df[ID_COLUMN] == ""]
    if len(empty_ids):
        raise DatasetError(f"{labels_csv}: row {empty_ids[0] + 2} has an empty Id")
    merged: list[str] = []
    dup = df[df.duplicated(ID_COLUMN, keep=False)]
    for poster_id, rows in dup.groupby(ID_COLUMN, sort=False):
        if len(rows.drop_duplicates()) > 1:
            lines = ", ".join(str(i + 2) for i in rows.index)
            raise DatasetError(f"{labels_csv}: Id {poster_id} appears on rows {lines} with different labels")
        merged.append(poster_id)
    n_raw = len(df)
    df = df.drop_duplicates(ID_COLUMN).reset_index(drop=True)
    return df, genre_cols, merged, n_raw


def _image_index(images_dir: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(images_dir.iterdir()):
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."):
            out.setdefault(p.stem, p)
    return out


def load_dataset(
    data_dir=None, labels=None, images=None, skip_bad: bool = False, verify_images: bool = False
) -> tuple[PosterDataset, DatasetReport]:
    """Load a dataset in the study's layout.

    Label rows whose image is missing (or, with ``verify_images``, unreadable) are an error
    naming them, unless ``skip_bad`` is set: then they are left out and listed in the report.
    """
    labels_csv, images_dir = resolve_layout(data_dir, labels, images)
    df, genre_cols, merged, n_raw = read_labels(labels_csv)
    report = DatasetReport(str(labels_csv), str(images_dir), n_rows=n_raw, duplicate_rows_merged=merged)
    genres = [g for g in genre_cols if g not in PLACEHOLDER_GENRES]
    y = df[genres].to_numpy(dtype=np.uint8)
    ids = df[ID_COLUMN].tolist()
    keep = y.sum(1) > 0
    report.placeholder_only = [i for i, k in zip(ids, keep) if not k]

    index = _image_index(images_dir)
    report.n_images = len(index)
    labelled = set(ids)
    report.images_without_labels = sorted(set(index) - labelled)
    report.labels_without_images = [i for i in ids if i not in index]

    problems: dict[str, str] = {i: "image file missing" for i in report.labels_without_images}
    if verify_images:
        for i in ids:
            if i in index:
                try:  # JPEG draft decoding reads the whole stream at 1/8 scale: catches truncation, fast
                    load_rgb(index[i], draft_size=(64, 64))
                except ImageLoadError as exc:
                    report.unreadable_images[i] = exc.reason
                    problems[i] = f"unreadable image: {exc.reason}"
    usable = [k and i not in problems for i, k in zip(ids, keep)]
    bad_labelled = {i: why for i, why in problems.items() if i not in report.placeholder_only}
    if bad_labelled and not skip_bad:
        few = "; ".join(f"{i}: {why}" for i, why in list(bad_labelled.items())[:5])
        raise DatasetError(
            f"{labels_csv}: {len(bad_labelled)} labelled poster(s) cannot be used ({few}"
            f"{', ...' if len(bad_labelled) > 5 else ''}); fix them or pass --skip-bad to leave them out"
        )
    report.skipped = bad_labelled
    sel = np.flatnonzero(usable)
    ds = PosterDataset([ids[i] for i in sel], [index[ids[i]] for i in sel], y[sel], genres)
    report.n_posters = len(ds)
    report.genre_counts = {g: int(n) for g, n in zip(genres, ds.labels.sum(0))}
    report.genres_per_poster = dict(sorted(Counter(int(n) for n in ds.labels.sum(1)).items()))
    if len(ds) == 0:
        raise DatasetError(f"{labels_csv}: no usable labelled poster")
    return ds, report


def split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded multi-label iterative stratification: (train indices, held-out indices), sorted.

    Genre frequencies are kept close in both parts (Sechidis et al. 2011, via the
    ``iterative-stratification`` package).
    """
    if not 0.0 < test_fraction < 1.0:
        raise UsageError(f"split fraction must be between 0 and 1, got {test_fraction}")
    if len(labels) < 2:
        raise DatasetError("need at least 2 posters to split")
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
    train, held = next(splitter.split(np.zeros(len(labels)), labels))
    return np.sort(train), np.sort(held)


@dataclass
class ExtraReport:
    """What :func:`add_extra` kept and dropped of one extra dataset. Plain data."""

    name: str
    n_posters: int = 0
    n_added: int = 0
    dropped_same_id: list[str] = field(default_factory=list)  # Id already in the primary (or an earlier extra)
    dropped_same_image: list[str] = field(default_factory=list)  # image bytes identical to a poster already there
    unknown_genres: list[str] = field(default_factory=list)  # primary genres this source lacks: masked

    def to_text(self) -> str:
        masked = f"; genres it lacks (masked out of the loss): {', '.join(self.unknown_genres)}" if self.unknown_genres else ""
        return (f"extra data {self.name}: {self.n_added} of {self.n_posters} posters added to training; dropped "
                f"{len(self.dropped_same_id)} with an Id already used, {len(self.dropped_same_image)} with an identical image{masked}")


def add_extra(base: PosterDataset, extra: PosterDataset, name: str, base_name: str = "primary") -> tuple[PosterDataset, ExtraReport]:
    """``base`` plus the posters of ``extra`` whose Id and image content are new to it.

    Genres are matched by name. A genre of ``base`` that ``extra`` lacks is unknown for its
    posters (``known`` = 0); a genre ``extra`` has and ``base`` lacks is an error naming it, since
    its posters cannot be labelled in the base's taxonomy.
    """
    foreign = [g for g in extra.genres if g not in base.genres]
    if foreign:
        raise DatasetError(f"{name}: genre column(s) {', '.join(foreign)} are not genres of the primary dataset "
                           f"({', '.join(base.genres)}); remove or rename them")
    taken = set(base.sources or [base_name])
    while name in taken:  # two folders of the same name stay two sources
        name += "+"
    report = ExtraReport(name, n_posters=len(extra), unknown_genres=[g for g in base.genres if g not in extra.genres])
    seen_ids = set(base.ids)
    seen_images = {file_digest(Path(p).read_bytes()) for p in base.paths}
    keep = []
    # Compared with what is already there, not within ``extra``: its own identical posters (box
    # sets) are kept, as the dataset gives them.
    for i, (pid, path) in enumerate(zip(extra.ids, extra.paths)):
        if pid in seen_ids:
            report.dropped_same_id.append(pid)
        elif file_digest(Path(path).read_bytes()) in seen_images:
            report.dropped_same_image.append(pid)
        else:
            keep.append(i)
    report.n_added = len(keep)
    cols = [extra.genres.index(g) if g in extra.genres else -1 for g in base.genres]
    labels = np.zeros((len(keep), len(base.genres)), dtype=np.uint8)
    known = np.zeros_like(labels)
    for j, c in enumerate(cols):
        if c >= 0:
            labels[:, j] = extra.labels[keep, c]
            known[:, j] = 1 if extra.known is None else extra.known[keep, c]
    base_known = np.ones_like(base.labels) if base.known is None else base.known
    combined = PosterDataset(
        base.ids + [extra.ids[i] for i in keep], base.paths + [extra.paths[i] for i in keep],
        np.concatenate([base.labels, labels]), base.genres, np.concatenate([base_known, known]),
        (base.sources or [base_name] * len(base)) + [name] * len(keep),
    )
    return combined, report


def load_training_data(data: str | Path | None = None, labels: str | Path | None = None, images: str | Path | None = None,
                       extra: list[str | Path] = (), skip_bad: bool = False, limit: int | None = None,
                       log=lambda message: None) -> tuple[PosterDataset, list[ExtraReport]]:
    """The primary dataset (every image decoded once, so a bad one stops a run before any long
    work), its first ``limit`` posters, plus each ``extra`` folder's new posters (:func:`add_extra`).

    ``log(message)`` receives one line per skipped group of posters and per extra source.
    """
    ds, report = load_dataset(data, labels, images, skip_bad=skip_bad, verify_images=True)
    if report.skipped:
        shown = "; ".join(f"{k} ({v})" for k, v in list(report.skipped.items())[:5])
        log(f"skipped {len(report.skipped)} poster(s): {shown}" + (", ..." if len(report.skipped) > 5 else ""))
    if limit:
        ds = ds.subset(range(min(limit, len(ds))))
    primary = Path(data or labels).resolve().name if (data or labels) else "primary"
    reports = []
    for folder in extra:
        extra_ds, extra_report = load_dataset(folder, skip_bad=skip_bad, verify_images=True)
        if extra_report.skipped:
            log(f"{folder}: skipped {len(extra_report.skipped)} poster(s) with a missing or unreadable image")
        ds, rep = add_extra(ds, extra_ds, Path(folder).resolve().name, primary)
        reports.append(rep)
        log(rep.to_text())
    return ds, reports
