"""The uint8 pixel cache: each poster decoded once (the very pixels decode_for_model gives), found
again by content in any order or run, unreadable files reported, an interrupted fill resumed."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import MOVIE_POSTERS, make_poster, needs_shared
from PIL import Image

from postergenre.data import pixel_cache
from postergenre.data.images import Preprocess, decode_for_model
from postergenre.data.pixel_cache import decoded_pixels

PP = Preprocess((48, 32), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def posters(tmp_path_factory) -> list:
    """Twelve posters of different sizes and formats (JPEG, PNG, greyscale, RGBA)."""
    root = tmp_path_factory.mktemp("pixel-posters")
    rng = np.random.default_rng(3)
    paths = []
    for i in range(12):
        img = make_poster(rng, {["Action", "Comedy", "Drama", "Horror"][i % 4]}, size=(40 + 7 * i, 60 + 5 * i))
        path = root / f"p{i:02d}.{'png' if i % 3 == 0 else 'jpg'}"
        if i == 4:
            img = img.convert("L")
        if i == 6:
            img = img.convert("RGBA")
            img.putalpha(128)
        img.save(path)
        paths.append(path)
    return paths


@pytest.fixture
def count_decodes(monkeypatch):
    """Counts the decodes done in this process (workers=0), and can fail after ``fail_after`` of them."""
    state = {"n": 0, "fail_after": None}
    real = pixel_cache.decode_for_model

    def counting(path, preprocess, flip=False):
        if state["fail_after"] is not None and state["n"] >= state["fail_after"]:
            raise RuntimeError("injected failure")
        state["n"] += 1
        return real(path, preprocess, flip)

    monkeypatch.setattr(pixel_cache, "decode_for_model", counting)
    return state


def expected(paths) -> np.ndarray:
    return np.stack([decode_for_model(p, PP)[0] for p in paths])


def test_rows_are_decode_for_model_bit_for_bit_and_read_only(posters, tmp_path, count_decodes):
    x, errors = decoded_pixels(posters, PP, cache_dir=tmp_path, workers=0)
    assert errors == {} and count_decodes["n"] == len(posters)
    assert x.shape == (len(posters), 48, 32, 3) and x.dtype == np.uint8
    assert np.array_equal(x, expected(posters))
    assert isinstance(x, np.memmap) and not x.flags.writeable  # a view of the cache, never written through
    with pytest.raises(ValueError):
        x[0, 0, 0, 0] = 1
    folder = tmp_path / "pixels" / "48x32"
    assert len(list(folder.glob("*.u8"))) == 1 and len(list(folder.glob("*.npz"))) == 1


@pytest.mark.parametrize("pool", ["process", "thread"])
def test_worker_pools_give_the_same_pixels(posters, tmp_path, monkeypatch, pool):
    monkeypatch.setattr(pixel_cache, "POOL", pool)
    x, errors = decoded_pixels(posters, PP, cache_dir=tmp_path, workers=2)
    assert errors == {} and np.array_equal(x, expected(posters))


def test_a_second_call_decodes_nothing(posters, tmp_path, count_decodes):
    first, _ = decoded_pixels(posters, PP, cache_dir=tmp_path, workers=0)
    count_decodes["n"] = 0
    again, errors = decoded_pixels(posters, PP, cache_dir=tmp_path, workers=0, progress=True)
    assert count_decodes["n"] == 0 and errors == {}
    assert np.array_equal(first, again)


def test_reordered_duplicated_and_renamed_posters_reuse_the_cache(posters, tmp_path, count_decodes):
    decoded_pixels(posters[:8], PP, cache_dir=tmp_path, workers=0)
    renamed = tmp_path / "renamed.jpg"
    shutil.copy(posters[2], renamed)
    count_decodes["n"] = 0
    order = [posters[5], posters[1], posters[5], renamed, posters[0]]
    x, errors = decoded_pixels(order, PP, cache_dir=tmp_path, workers=0)
    assert count_decodes["n"] == 0 and errors == {}
    assert np.array_equal(x, expected(order)) and not x.flags.writeable
    # Only the posters the cache lacks are decoded, each once however often it is asked for.
    y, _ = decoded_pixels(posters + posters[9:], PP, cache_dir=tmp_path, workers=0)
    assert count_decodes["n"] == 4
    assert np.array_equal(y, expected(posters + posters[9:]))
    # Mostly cached, so the new segment holds just the four: no second copy of the other eight.
    sizes = sorted(f.stat().st_size for f in (tmp_path / "pixels" / "48x32").glob("*.u8"))
    assert sizes == [4 * 48 * 32 * 3, 8 * 48 * 32 * 3]


def test_a_first_fill_with_duplicates_decodes_each_content_once_and_reads_back_as_one_view(posters, tmp_path,
                                                                                         count_decodes):
    copy = tmp_path / "copy.jpg"
    shutil.copy(posters[2], copy)
    paths = [*posters[:5], posters[1], copy, tmp_path / "missing.jpg"]
    x, errors = decoded_pixels(paths, PP, cache_dir=tmp_path, workers=0)
    assert count_decodes["n"] == 5 and list(errors) == [7]
    assert isinstance(x, np.memmap)  # the list's own segment: a row per path, duplicates copied
    assert np.array_equal(x[:7], expected(paths[:7])) and not x[7].any()
    again, errors_again = decoded_pixels(paths, PP, cache_dir=tmp_path, workers=0)
    assert count_decodes["n"] == 5 and isinstance(again, np.memmap) and errors_again == errors


def test_another_size_is_another_cache(posters, tmp_path, count_decodes):
    decoded_pixels(posters[:3], PP, cache_dir=tmp_path, workers=0)
    other = Preprocess((20, 30), PP.mean, PP.std)
    x, _ = decoded_pixels(posters[:3], other, cache_dir=tmp_path, workers=0)
    assert count_decodes["n"] == 6 and x.shape == (3, 20, 30, 3)
    assert (tmp_path / "pixels" / "20x30").is_dir()


def test_unreadable_files_give_their_error_and_a_zero_row(posters, tmp_path, count_decodes):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "text.jpg").write_text("not an image")
    (bad / "empty.jpg").write_bytes(b"")
    truncated = bad / "truncated.jpg"
    truncated.write_bytes(posters[1].read_bytes()[:200])
    paths = [posters[0], bad / "text.jpg", bad / "missing.jpg", posters[1], bad / "empty.jpg", truncated, bad]
    x, errors = decoded_pixels(paths, PP, cache_dir=tmp_path, workers=0)
    assert set(errors) == {1, 2, 4, 5, 6}
    for i, message in errors.items():
        assert message == decode_for_model(paths[i], PP)[1]
        assert not x[i].any()
    assert np.array_equal(x[[0, 3]], expected([posters[0], posters[1]]))
    # The errors are cached by content too: asked again, under another name, nothing is decoded.
    count_decodes["n"] = 0
    renamed = bad / "renamed.jpg"
    shutil.copy(bad / "text.jpg", renamed)
    again, errors_again = decoded_pixels(paths + [renamed], PP, cache_dir=tmp_path, workers=0)
    assert count_decodes["n"] == 0 and errors_again == {**errors, 7: decode_for_model(renamed, PP)[1]}
    assert "renamed.jpg" in errors_again[7] and np.array_equal(again[:7], x)


def test_an_interrupted_fill_keeps_what_it_did_and_resumes(posters, tmp_path, count_decodes):
    count_decodes["fail_after"] = 5
    with pytest.raises(RuntimeError, match="injected"):
        decoded_pixels(posters, PP, cache_dir=tmp_path, workers=0)
    folder = tmp_path / "pixels" / "48x32"
    (seg,) = pixel_cache._load_segments(folder, (48, 32))
    assert int(seg.done.sum()) == 5  # the mask vouches for exactly the rows that were finished
    count_decodes.update(n=0, fail_after=None)
    x, errors = decoded_pixels(posters, PP, cache_dir=tmp_path, workers=0)
    assert count_decodes["n"] == len(posters) - 5 and errors == {}
    assert np.array_equal(x, expected(posters))
    assert isinstance(x, np.memmap)  # resumed in the same segment: still one view, in order
    assert len(list(folder.glob("*.u8"))) == 1


def test_rows_not_marked_done_and_damaged_segments_are_decoded_again(posters, tmp_path, count_decodes):
    decoded_pixels(posters[:4], PP, cache_dir=tmp_path, workers=0)
    folder = tmp_path / "pixels" / "48x32"
    (meta,) = folder.glob("*.npz")
    meta.write_bytes(meta.read_bytes()[:50])  # a damaged mask: its rows are not trusted
    (folder / "orphan.u8").write_bytes(b"\1" * 100)  # rows whose mask was never written
    count_decodes["n"] = 0
    x, _ = decoded_pixels(posters[:4], PP, cache_dir=tmp_path, workers=0)
    assert count_decodes["n"] == 4 and np.array_equal(x, expected(posters[:4]))
    assert not (folder / "orphan.u8").exists() and not meta.exists()  # both cleared away
    assert len(list(folder.glob("*.u8"))) == 1


def test_progress_bar_only_when_asked(posters, tmp_path, capsys):
    decoded_pixels(posters[:3], PP, cache_dir=tmp_path / "a", workers=0)
    assert capsys.readouterr().err == ""
    decoded_pixels(posters[:3], PP, cache_dir=tmp_path / "b", workers=0, progress=True)
    captured = capsys.readouterr()
    assert "decoding posters 48x32" in captured.err and captured.out == ""


def test_no_posters(tmp_path):
    x, errors = decoded_pixels([], PP, cache_dir=tmp_path)
    assert x.shape == (0, 48, 32, 3) and errors == {}


@needs_shared(MOVIE_POSTERS)
def test_real_posters_in_worker_processes_are_bit_exact(tmp_path):
    paths = sorted((MOVIE_POSTERS / "Images").glob("*.jpg"))[:24]
    pp = Preprocess((96, 64), PP.mean, PP.std)
    x, errors = decoded_pixels(paths, pp, cache_dir=tmp_path, workers=2)
    assert errors == {}
    assert all(np.array_equal(x[i], decode_for_model(p, pp)[0]) for i, p in enumerate(paths))
    assert Image.fromarray(x[0]).size == (64, 96)
