"""Issue 27: an image past the pixel cap gets our message (file, cap in megapixels, how to raise
it), never PIL's "decompression bomb DOS attack" text or warning; a cap above PIL's own limit is
honoured; PIL's global limit is left as it was, whatever the threads do."""

from __future__ import annotations

import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from postergenre.data.images import ImageLoadError, load_rgb


def solid_png(path: Path, width: int, height: int) -> Path:
    """A real, decodable one-colour PNG (1-bit greyscale, written row block by row block: a
    20000x20000 one is 150 KB and takes no 400 MB to make)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row, z, idat = b"\x00" + b"\xff" * ((width + 7) // 8), zlib.compressobj(9), []
    for start in range(0, height, 1000):
        idat.append(z.compress(row * min(1000, height - start)))
    idat.append(z.flush())
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [12000, 20000])  # past PIL's warning limit (89 MP), and past its error limit (179 MP)
def test_a_huge_png_is_refused_with_our_message(tmp_path, side):
    path = solid_png(tmp_path / "big.png", side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning would fail the test
        with pytest.raises(ImageLoadError) as info:
            load_rgb(path)
    message = str(info.value)
    assert message.startswith(f"{path}: image is {side}x{side} ({side * side / 1e6:g} megapixels)"), message
    assert "above the cap of 40 megapixels" in message and "--max-pixels" in message and "max_pixels" in message
    assert "DOS" not in message and "could be" not in message


def test_a_cap_above_pils_limit_is_honoured(tmp_path, monkeypatch):
    """PIL's limit made small, so a small image stands in for one past 89 MP (and past twice that)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    png = solid_png(tmp_path / "wide.png", 100, 100)  # 10,000 pixels: 10x PIL's limit here
    gif = tmp_path / "wide.gif"
    Image.new("P", (100, 100), 3).save(gif)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in (png, gif):
            assert load_rgb(path, max_pixels=10_000).size == (100, 100)
            with pytest.raises(ImageLoadError, match="above the cap of 0.009999 megapixels"):
                load_rgb(path, max_pixels=9_999)
    assert Image.MAX_IMAGE_PIXELS == 1000  # left as it was


def test_loaders_in_threads_leave_pils_limit_as_it_was(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    over, small = solid_png(tmp_path / "over.png", 80, 80), solid_png(tmp_path / "small.png", 20, 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with ThreadPoolExecutor(8) as pool:
            sizes = list(pool.map(lambda p: load_rgb(p, max_pixels=10_000).size, [over, small] * 100))
    assert sizes == [(80, 80), (20, 20)] * 100
    assert Image.MAX_IMAGE_PIXELS == 1000
