"""OCR's worker processes never inherit a lock (issue 27): they are not forked from a process
whose other threads may hold one, and leaving early stops them at once."""

from __future__ import annotations

import subprocess
import sys
import time

from PIL import Image

from postergenre.text.ocr import OcrSettings, OcrWorkers, iter_texts

from worded import draw_words


def _posters(folder, n: int, word: str = "NIGHT") -> list[str]:
    folder.mkdir(exist_ok=True)
    out = []
    for i in range(n):
        path = folder / f"{i}.png"
        draw_words(Image.new("RGB", (200, 300), (i % 200, 40, 90)), [f"{word} {i}"]).save(path)
        out.append(str(path))
    return out


def test_the_workers_start_from_a_fork_server_not_from_this_process():
    with OcrWorkers(OcrSettings(), workers=2) as workers:
        assert workers.pool._mp_context.get_start_method() == "forkserver"
    with OcrWorkers(OcrSettings(), workers=1) as workers:
        assert workers.pool is None  # a few posters: read in this process, no worker to start


# Another thread holds a module's import lock while the pool starts, as a decoding thread importing
# a PIL plugin did when `predict --text on` hung: a forked worker inherits that lock held by a
# thread that does not exist there, and blocks forever on its own import of the module.
HOLD_AN_IMPORT_LOCK = """
import importlib._bootstrap, sys, threading, time
from postergenre.text.ocr import OcrSettings, read_posters
held = threading.Event()
def hold():
    with importlib._bootstrap._ModuleLockManager("rapidocr_onnxruntime"):  # what importing it holds
        held.set()
        time.sleep(3)
threading.Thread(target=hold, daemon=True).start()
held.wait()
print("|".join(read_posters(sys.argv[1:], OcrSettings(), use_cache=False, workers=2)))
"""


def test_a_lock_held_by_another_thread_while_the_workers_start_does_not_hang_them(tmp_path):
    posters = _posters(tmp_path / "p", 4)
    done = subprocess.run([sys.executable, "-c", HOLD_AN_IMPORT_LOCK, *posters], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sum(t.startswith("NIGHT") for t in done.stdout.strip().split("|")) >= 3


def test_texts_come_out_in_order_as_they_are_read_and_closing_stops_the_workers(tmp_path):
    posters = _posters(tmp_path / "p", 24)
    texts = iter_texts(posters + posters[:2], OcrSettings(), tmp_path / "cache", workers=2)
    first = next(texts)
    t = time.perf_counter()
    texts.close()  # 20-odd posters still to read: they are dropped, not waited for
    assert time.perf_counter() - t < 2
    again = list(iter_texts(posters + posters[:2], OcrSettings(), tmp_path / "cache", workers=2))
    alone = list(iter_texts(posters, OcrSettings(), use_cache=False, workers=1))
    assert again == alone + alone[:2] and again[0] == first and sum(t.startswith("NIGHT") for t in again) >= 20


def test_ctrl_c_stops_the_worker_processes_at_once(tmp_path):
    import pytest
    from PIL import ImageDraw

    from worded import font

    dense = Image.new("RGB", (600, 2400), (20, 40, 90))  # 48 lines: seconds of reading each
    draw = ImageDraw.Draw(dense)
    for k in range(48):
        draw.text((10, 10 + 50 * k), f"WORD{k} LINE OF TEXT {k * 7}", fill=(255, 255, 255), font=font(30))
    dense.save(tmp_path / "dense.png")
    with pytest.raises(KeyboardInterrupt):
        with OcrWorkers(OcrSettings(), workers=2) as workers:
            reading = workers.read([str(tmp_path / "dense.png")] * 6)
            next(reading)
            procs = list(workers.pool._processes.values())
            raise KeyboardInterrupt  # the workers hold 3-4 more dense posters queued
    deadline = time.time() + 1
    while any(p.is_alive() for p in procs) and time.time() < deadline:
        time.sleep(0.05)
    assert procs and not any(p.is_alive() for p in procs)  # stopped, not left to read what was queued
