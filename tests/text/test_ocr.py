"""OCR: what it reads on generated posters, that bad images give an empty text (never an error),
and the cache: keyed by content, resumable, a torn line ignored."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image, ImageDraw

from postergenre.text.ocr import OcrCache, OcrReader, OcrSettings, read_posters

from worded import draw_words, font

SETTINGS = OcrSettings()


def _save(img: Image.Image, path):
    img.save(path)
    return path


def test_reads_the_words_drawn_on_a_poster(tmp_path):
    poster = _save(draw_words(Image.new("RGB", (200, 300), (90, 20, 20)), ["MIDNIGHT", "SCREAM"]), tmp_path / "p.png")
    [text] = read_posters([poster], SETTINGS, tmp_path / "cache")
    assert "MIDNIGHT" in text and "SCREAM" in text


def test_images_ocr_cannot_read_give_an_empty_text(tmp_path):
    blank = _save(Image.new("RGB", (300, 450), (255, 255, 255)), tmp_path / "blank.png")
    tiny = _save(Image.new("RGB", (3, 2), (0, 0, 0)), tmp_path / "tiny.png")
    grey = _save(Image.new("L", (120, 180), 128), tmp_path / "grey.png")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    missing = tmp_path / "missing.jpg"
    assert read_posters([blank, tiny, grey, empty, broken, missing], SETTINGS, tmp_path / "cache") == [""] * 6


def test_a_poster_full_of_text_and_non_latin_text_give_a_result(tmp_path):
    dense = Image.new("RGB", (240, 360), (250, 250, 250))
    d = ImageDraw.Draw(dense)
    for y in range(0, 360, 18):
        d.text((4, y), "CAST CREW PRODUCER DIRECTOR", fill=(0, 0, 0), font=font(14))
    other = Image.new("RGB", (240, 360), (10, 10, 60))
    d = ImageDraw.Draw(other)
    d.text((10, 60), "ΑΘΗΝΑ", fill=(255, 255, 255), font=font(34))
    d.text((10, 140), "МОСКВА", fill=(255, 255, 255), font=font(34))
    texts = read_posters([_save(dense, tmp_path / "dense.png"), _save(other, tmp_path / "other.png")], SETTINGS,
                         tmp_path / "cache")
    assert all(isinstance(t, str) for t in texts)
    assert "PRODUCER" in texts[0]


def test_a_pil_image_and_an_array_read_alike():
    img = draw_words(Image.new("RGB", (200, 300), (20, 60, 20)), ["FUNNY"])
    reader = OcrReader(SETTINGS)
    assert reader.read_image(img) == reader.read_image(np.asarray(img))
    assert reader.read_image(np.zeros((0, 0, 3), dtype=np.uint8)) == []


def test_the_cache_keeps_what_was_read_and_a_rerun_goes_on_from_there(tmp_path):
    posters = [_save(draw_words(Image.new("RGB", (200, 300), (i * 40, 30, 30)), [w]), tmp_path / f"{w}.png")
               for i, w in enumerate(["FIGHT", "TEARS", "FUNNY"])]
    cache_dir = tmp_path / "cache"
    first = read_posters(posters[:2], SETTINGS, cache_dir)  # as if stopped after two posters
    records = OcrCache(SETTINGS, cache_dir).records()
    assert len(records) == 2
    seconds = {k: r["seconds"] for k, r in records.items()}
    part = next((cache_dir / "ocr" / SETTINGS.key).glob("part-*.jsonl"))
    with part.open("a") as f:
        f.write('{"sha1": "torn li')  # a crash in the middle of a line
    texts = read_posters(posters, SETTINGS, cache_dir)
    assert texts[:2] == first and "FUNNY" in texts[2]
    again = OcrCache(SETTINGS, cache_dir).records()
    assert len(again) == 3 and all(again[k]["seconds"] == s for k, s in seconds.items())  # not read twice
    # keyed by content: the same image under another name, or as bytes, comes from the cache
    copy = tmp_path / "renamed.png"
    copy.write_bytes(posters[0].read_bytes())
    assert read_posters([copy, posters[1].read_bytes()], SETTINGS, cache_dir) == first
    assert len(OcrCache(SETTINGS, cache_dir).records()) == 3
    assert json.loads((cache_dir / "ocr" / SETTINGS.key / "settings.json").read_text())["det_limit_side_len"] == 320


def test_worker_processes_read_as_one_process_does(tmp_path):
    posters = [_save(draw_words(Image.new("RGB", (200, 300), (30, 30, 30 + 20 * i)), [w]), tmp_path / f"{i}.png")
               for i, w in enumerate(["ONE", "TWO", "THREE", "FOUR"])]
    one = read_posters(posters, SETTINGS, use_cache=False, workers=1)
    two = read_posters(posters, SETTINGS, use_cache=False, workers=2)
    assert one == two and sum(bool(t) for t in one) >= 3


READER = """
import sys
from postergenre.text.ocr import OcrSettings, read_posters
read_posters(sys.argv[2:], OcrSettings(), sys.argv[1])
"""


def test_ctrl_c_keeps_what_was_read_and_a_rerun_reads_only_the_rest(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    posters = [str(_save(draw_words(Image.new("RGB", (200, 300), (i % 200, 40, 90)), [f"NIGHT {i}"]), tmp_path / f"{i}.png"))
               for i in range(120)]
    cache_dir = tmp_path / "cache"
    folder = cache_dir / "ocr" / SETTINGS.key
    proc = subprocess.Popen([sys.executable, "-c", READER, str(cache_dir), *posters], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while len(OcrCache(SETTINGS, cache_dir).records()) < 5 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    kept = OcrCache(SETTINGS, cache_dir).records()
    assert 5 <= len(kept) < 120 and all(r["text"].startswith("NIGHT") for r in kept.values())
    texts = read_posters(posters, SETTINGS, cache_dir)
    assert all(t.startswith("NIGHT") for t in texts)
    again = OcrCache(SETTINGS, cache_dir).records()
    assert len(again) == 120 and all(again[k]["seconds"] == r["seconds"] for k, r in kept.items())
    assert sum(1 for p in folder.glob("part-*.jsonl") for _ in p.open()) == 120  # none read twice
