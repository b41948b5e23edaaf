"""The dataset layout, its quirks and checks, and the seeded stratified split."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from postergenre.data.dataset import DatasetError, load_dataset, resolve_layout, split_indices

from conftest import MOVIE_POSTERS


# --- the generated dataset (see conftest.write_dataset) -----------------------------------


def test_tiny_dataset_quirks(tiny_data):
    ds, report = load_dataset(tiny_data)
    # 48 posters + 1 identical duplicate row + 1 N/A-only row = 50 rows.
    assert report.n_rows == 50
    assert report.duplicate_rows_merged == ["tt0000000"]
    assert ds.ids.count("tt0000000") == 1
    # N/A is a placeholder, not a genre.
    assert ds.genres == ["Action", "Comedy", "Drama", "Horror"]
    assert "N/A" not in report.genre_counts
    # The N/A-only poster is left out and reported.
    assert report.placeholder_only == ["tt9999990"]
    assert "tt9999990" not in ds.ids
    # The image without a label row is counted, and not used.
    assert report.images_without_labels == ["tt9999991"]
    assert "tt9999991" not in ds.ids
    assert report.n_images == 50
    assert report.labels_without_images == []
    assert len(ds) == report.n_posters == 48
    assert ds.labels.shape == (48, 4) and ds.labels.dtype == np.uint8
    assert (ds.labels.sum(1) >= 1).all()
    assert all(p.name == f"{i}.jpg" and p.is_file() for i, p in zip(ds.ids, ds.paths))
    assert report.genre_counts == dict(zip(ds.genres, ds.labels.sum(0).tolist()))
    assert sum(report.genres_per_poster.values()) == 48
    text = report.to_text()
    assert "identical duplicate rows merged: 1 [tt0000000]" in text
    assert "images without a label row (ignored): 1 [tt9999991]" in text


def test_labels_match_csv(tiny_data):
    """Spot-check that each poster's labels are its CSV row's, aligned with ids."""
    import csv

    rows = {r["Id"]: r for r in csv.DictReader((tiny_data / "train.csv").open())}
    ds, _ = load_dataset(tiny_data)
    for i, pid in enumerate(ds.ids):
        assert [int(rows[pid][g]) for g in ds.genres] == ds.labels[i].tolist()


def test_layout_via_labels_and_images(tiny_data):
    labels, images = resolve_layout(labels=tiny_data / "train.csv", images=tiny_data / "Images")
    assert labels == tiny_data / "train.csv" and images == tiny_data / "Images"
    assert resolve_layout(tiny_data) == (labels, images)
    ds1, _ = load_dataset(labels=labels, images=images)
    ds2, _ = load_dataset(tiny_data)
    assert ds1.ids == ds2.ids and np.array_equal(ds1.labels, ds2.labels)


def test_layout_errors(tmp_path, tiny_data):
    with pytest.raises(DatasetError, match="--labels"):
        resolve_layout(labels=tiny_data / "train.csv")
    with pytest.raises(DatasetError, match="labels CSV not found"):
        resolve_layout(tmp_path)
    with pytest.raises(DatasetError, match="images folder not found"):
        resolve_layout(labels=tiny_data / "train.csv", images=tmp_path / "nope")


# --- hand-written CSVs ---------------------------------------------------------------------


def make_layout(root, csv_text: str | bytes, ids=()):
    (root / "Images").mkdir(parents=True, exist_ok=True)
    for pid in ids:
        Image.new("RGB", (8, 12), (100, 50, 0)).save(root / "Images" / f"{pid}.jpg")
    path = root / "train.csv"
    if isinstance(csv_text, bytes):
        path.write_bytes(csv_text)
    else:
        path.write_text(csv_text)
    return root


def test_conflicting_duplicates_name_the_id(tmp_path):
    root = make_layout(tmp_path, "Id,Action,Drama\ntt1,1,0\ntt2,0,1\ntt1,0,1\n", ["tt1", "tt2"])
    with pytest.raises(DatasetError, match=r"Id tt1 appears on rows 2, 4 with different labels"):
        load_dataset(root)


def test_value_not_0_or_1_names_row_and_column(tmp_path):
    # The bad value is on the file's 4th line (header = line 1) and in column Drama.
    root = make_layout(tmp_path, "Id,Action,Drama\ntt1,1,0\ntt2,0,1\ntt3,1,2\n", ["tt1", "tt2", "tt3"])
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    msg = str(info.value)
    assert "row 4" in msg and "tt3" in msg and "'Drama'" in msg and "'2'" in msg


def test_empty_value_is_an_error(tmp_path):
    root = make_layout(tmp_path, "Id,Action,Drama\ntt1,1,\n", ["tt1"])
    with pytest.raises(DatasetError, match="row 2.*'Drama'"):
        load_dataset(root)


def test_missing_id_column(tmp_path):
    root = make_layout(tmp_path, "Name,Action,Drama\ntt1,1,0\n", ["tt1"])
    with pytest.raises(DatasetError, match="no 'Id' column"):
        load_dataset(root)


def test_empty_csv(tmp_path):
    root = make_layout(tmp_path, "")
    with pytest.raises(DatasetError, match="empty"):
        load_dataset(root)


def test_header_only_csv(tmp_path):
    root = make_layout(tmp_path, "Id,Action,Drama\n")
    with pytest.raises(DatasetError, match="no rows"):
        load_dataset(root)


def test_bom_and_crlf(tmp_path):
    text = "Id,Genre,Action,Drama\r\ntt1,\"['Action']\",1,0\r\ntt2,\"['Drama']\",0,1\r\n"
    root = make_layout(tmp_path, b"\xef\xbb\xbf" + text.encode("utf-8"), ["tt1", "tt2"])
    ds, report = load_dataset(root)
    assert ds.ids == ["tt1", "tt2"]
    assert ds.genres == ["Action", "Drama"]  # no "\ufeffId", no "Drama\r", Genre is not a label
    assert ds.labels.tolist() == [[1, 0], [0, 1]]
    assert report.n_rows == 2


def test_label_without_image_is_an_error_unless_skipped(tmp_path):
    root = make_layout(tmp_path, "Id,Action,Drama\ntt1,1,0\ntt2,0,1\ntt3,1,1\n", ["tt1", "tt3"])
    with pytest.raises(DatasetError, match="tt2: image file missing"):
        load_dataset(root)
    ds, report = load_dataset(root, skip_bad=True)
    assert ds.ids == ["tt1", "tt3"]
    assert ds.labels.tolist() == [[1, 0], [1, 1]]
    assert report.skipped == {"tt2": "image file missing"}
    assert report.labels_without_images == ["tt2"]
    assert "rows skipped: 1 [tt2 (image file missing)]" in report.to_text()


def test_unreadable_image_with_verify(tmp_path):
    root = make_layout(tmp_path, "Id,Action,Drama\ntt1,1,0\ntt2,0,1\n", ["tt1"])
    (root / "Images" / "tt2.jpg").write_text("not a jpeg")
    load_dataset(root)  # without verify_images the file is not decoded
    with pytest.raises(DatasetError, match="tt2: unreadable image"):
        load_dataset(root, verify_images=True)
    ds, report = load_dataset(root, skip_bad=True, verify_images=True)
    assert ds.ids == ["tt1"]
    assert "tt2" in report.unreadable_images and "tt2" in report.skipped


# --- split ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def split_labels() -> np.ndarray:
    """The real labels when the shared dataset is here, else synthetic ones of a similar shape."""
    if (MOVIE_POSTERS / "train.csv").is_file():
        ds, _ = load_dataset(MOVIE_POSTERS)
        return ds.labels
    rng = np.random.default_rng(0)
    prevalence = np.array([0.5, 0.4, 0.2, 0.15, 0.1, 0.06, 0.04, 0.03, 0.02, 0.01])
    y = (rng.random((3000, len(prevalence))) < prevalence).astype(np.uint8)
    y[y.sum(1) == 0, 0] = 1
    return y


def test_split_same_seed_same_split(split_labels):
    a = split_indices(split_labels, 0.15, 7)
    b = split_indices(split_labels, 0.15, 7)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_split_different_seed_different_split(split_labels):
    _, held0 = split_indices(split_labels, 0.15, 0)
    _, held1 = split_indices(split_labels, 0.15, 1)
    assert not np.array_equal(held0, held1)


def test_split_disjoint_covering_and_fraction(split_labels):
    n = len(split_labels)
    train, held = split_indices(split_labels, 0.2, 3)
    assert len(np.intersect1d(train, held)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, held])), np.arange(n))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(held) > 0)  # sorted, no repeats
    assert abs(len(held) / n - 0.2) < 0.01


def test_split_is_stratified(split_labels):
    y = split_labels
    train, held = split_indices(y, 0.15, 0)
    f_train, f_held = y[train].mean(0), y[held].mean(0)
    # A plain random split of this size differs by ~0.015 on the common genres.
    assert np.abs(f_train - f_held).max() < 0.006
    # Each genre's held-out count is close to its share (iterative stratification).
    expected = y.sum(0) * 0.15
    assert np.all(np.abs(y[held].sum(0) - expected) <= np.maximum(2, 0.03 * expected))


def test_split_rejects_bad_fraction(split_labels):
    with pytest.raises(ValueError):
        split_indices(split_labels, 0.0, 0)
    with pytest.raises(ValueError):
        split_indices(split_labels, 1.0, 0)




def test_unknown_extra_column_is_named(tmp_path):
    # A column that is not a genre (here a year) is not silently taken as one: its row and column are named.
    root = make_layout(tmp_path, "Id,Action,Drama,Year\ntt1,1,0,1999\n", ["tt1"])
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    assert "row 2" in str(info.value) and "'Year'" in str(info.value) and "'1999'" in str(info.value)
