"""A corpus of bad and unusual inputs, generated here: every file gets a correct prediction or
its own clear error, the batch goes on, memory stays bounded, and the API answers 4xx for the
bad ones (never 5xx)."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import make_poster

OK = "ok"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid-looking 400-megapixel greyscale PNG header over a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b"")


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def make_corpus(root: Path) -> dict[str, str]:
    """Write the corpus into ``root``; returns file name -> OK or a word its error must contain."""
    rng = np.random.default_rng(0)
    poster = make_poster(rng, {"Action", "Drama"}, (60, 90))
    jpeg = encode(poster, "JPEG", quality=90)
    files: dict[str, tuple[bytes, str]] = {
        "zero.jpg": (b"", "empty"),
        "truncated.jpg": (encode(Image.fromarray(rng.integers(0, 255, (120, 120, 3), dtype=np.uint8)), "JPEG")[:1500], "truncated"),
        "corrupt_header.jpg": (jpeg[:2] + b"\x00" * 40 + jpeg[42:], "not an image"),
        "text.jpg": (b"just some notes, not a poster\n", "not an image"),
        "page.png": (b"<!doctype html><html><head><title>x</title></head><body>404</body></html>", "not an image"),
        "alpha.png": (encode(poster.convert("RGBA"), "PNG"), OK),
        "palette.png": (encode(poster.convert("P"), "PNG"), OK),
        "palette.gif": (encode(poster.convert("P"), "GIF"), OK),
        "cmyk.jpg": (encode(poster.convert("CMYK"), "JPEG"), OK),
        "sixteen_bit.png": (encode(Image.fromarray((np.asarray(poster.convert("L"), dtype=np.uint16) * 257)), "PNG"), OK),
        "grey.jpg": (encode(poster.convert("L"), "JPEG"), OK),
        "poster.webp": (encode(poster, "WEBP"), OK),
        "one_pixel.png": (encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), OK),
        "extreme_aspect.png": (encode(Image.new("RGB", (5000, 10), (200, 0, 0)), "PNG"), OK),
        "bomb.png": (bomb_png(), "pixels"),
        "my poster é 海报.jpg": (jpeg, OK),
    }
    frames = [make_poster(rng, {"Comedy"}), make_poster(rng, {"Horror"})]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    files["animated.gif"] = (buf.getvalue(), OK)
    # EXIF orientation 6: stored rotated, shown upright.
    exif = Image.Exif()
    exif[0x0112] = 6
    files["exif_rotated.jpg"] = (encode(poster.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif), OK)
    files["upright.jpg"] = (encode(poster, "JPEG", quality=95), OK)
    expected = {}
    for name, (data, want) in files.items():
        (root / name).write_bytes(data)
        expected[name] = want
    (root / "loop_a.jpg").symlink_to(root / "loop_b.jpg")
    (root / "loop_b.jpg").symlink_to(root / "loop_a.jpg")
    expected["loop_a.jpg"] = expected["loop_b.jpg"] = "symbolic links"
    (root / "sub").mkdir()
    (root / "sub" / "back_up").symlink_to(root, target_is_directory=True)  # a folder loop
    (root / "sub" / "inner.jpg").write_bytes(jpeg)
    expected["sub/inner.jpg"] = OK
    (root / "no_permission.jpg").write_bytes(jpeg)
    (root / "no_permission.jpg").chmod(0)
    expected["no_permission.jpg"] = OK if os.geteuid() == 0 else "permission denied"  # root reads anything
    return expected


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, make_corpus(root)


def check(results: list[dict], root: Path, expected: dict[str, str]):
    by_name = {str(Path(r["path"]).relative_to(root)): r for r in results}
    assert sorted(by_name) == sorted(expected), "every file exactly once, the folder loop not followed"
    for name, want in expected.items():
        r = by_name[name]
        if want == OK:
            assert r["error"] is None, (name, r["error"])
            assert len(r["predicted"]) == 3 and len(r["genres"]) > 3
        else:
            assert r["error"] and want in r["error"] and name.split("/")[-1] in r["error"], (name, r["error"])
            assert r["predicted"] == []
    return by_name


# The CLI in a process that reports its own peak memory on exit (with < 1 batch of files it decodes in-process).
WRAPPER = ("import atexit, resource, runpy, sys; "
           "atexit.register(lambda: sys.stderr.write(f'PEAK_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\\n')); "
           "sys.argv = ['postergenre'] + sys.argv[1:]; runpy.run_module('postergenre', run_name='__main__')")


def predict_cli(path, model) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WRAPPER, "predict", str(path), "--model", str(model),
                           "--engine", "torch", "--format", "json"], capture_output=True, text=True, timeout=300)


def peak_mb(proc) -> float:
    return int(proc.stderr.split("PEAK_KB ")[1].split()[0]) / 1024


def test_bomb_is_refused_before_it_is_decoded(tiny_model, tmp_path):
    """Peak memory with the 400-megapixel bomb is that of a run with one small poster: decoding it
    would take 400 MB more (greyscale) at the very least."""
    (tmp_path / "bomb").mkdir()
    (tmp_path / "bomb" / "bomb.png").write_bytes(bomb_png())
    (tmp_path / "small").mkdir()
    make_poster(np.random.default_rng(0), {"Action"}).save(tmp_path / "small" / "small.png")
    bomb, small = predict_cli(tmp_path / "bomb", tiny_model), predict_cli(tmp_path / "small", tiny_model)
    assert "pixels" in json.loads(bomb.stdout)[0]["error"]
    assert json.loads(small.stdout)[0]["error"] is None
    assert peak_mb(bomb) < peak_mb(small) + 150, (peak_mb(bomb), peak_mb(small))


def test_cli_predict_over_the_corpus(tiny_model, corpus):
    root, expected = corpus
    proc = predict_cli(root, tiny_model)
    assert proc.returncode == 0, proc.stderr  # some files failed, not all: exit 0
    by_name = check(json.loads(proc.stdout), root, expected)
    assert f"{sum(v != OK for v in expected.values())} of {len(expected)} input(s) could not be read" in proc.stderr
    # EXIF-rotated is predicted as the upright poster, not as its stored (sideways) pixels.
    up = {g["genre"]: g["score"] for g in by_name["upright.jpg"]["genres"]}
    rot = {g["genre"]: g["score"] for g in by_name["exif_rotated.jpg"]["genres"]}
    assert max(abs(up[g] - rot[g]) for g in up) < 0.02


def _read_as_nobody(path: str, queue) -> None:
    os.setgid(65534)
    os.setuid(65534)
    from postergenre.data.images import ImageLoadError, load_rgb

    try:
        load_rgb(path)
        queue.put("read")
    except ImageLoadError as exc:
        queue.put(str(exc))


@pytest.mark.skipif(not hasattr(os, "setuid"), reason="POSIX only")
def test_file_without_read_permission_has_a_clear_error(corpus):
    root, _ = corpus
    path = str(root / "no_permission.jpg")
    if os.geteuid() != 0:
        from postergenre.data.images import ImageLoadError, load_rgb

        with pytest.raises(ImageLoadError, match="permission denied"):
            load_rgb(path)
        return
    # As root every file is readable: drop to 'nobody' in a child to meet a real EACCES.
    os.chmod(root, 0o755)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_as_nobody, args=(path, queue))
    child.start()
    child.join(60)
    message = queue.get(timeout=5)
    assert "no_permission.jpg" in message and "permission denied" in message


def test_api_answers_4xx_json_for_every_bad_file(tiny_model, corpus):
    from postergenre.app.serve import create_app

    root, expected = corpus
    with TestClient(create_app(str(tiny_model), engine="torch", background_load=False)) as client:
        for name, want in expected.items():
            path = root / name
            if path.is_symlink() or name == "no_permission.jpg":
                continue  # a client uploads bytes, not links or permissions
            res = client.post("/api/predict", files=[("file", (path.name, path.read_bytes(), "application/octet-stream"))])
            if want == OK:
                assert res.status_code == 200, (name, res.text)
            else:
                assert res.status_code in (413, 422), (name, res.status_code)
                assert want in res.json()["error"], (name, res.json())
