"""Image decoding (every mode and orientation becomes upright 8-bit RGB) and preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from postergenre.data.images import ImageLoadError, Preprocess, load_rgb


def pixel(img: Image.Image, xy=(0, 0)) -> tuple:
    return tuple(int(v) for v in img.getpixel(xy))


# --- modes ---------------------------------------------------------------------------------


def test_greyscale_becomes_grey_rgb(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("L", (10, 12), 100).save(path)
    img = load_rgb(path)
    assert img.mode == "RGB"
    assert img.size == (10, 12)
    assert pixel(img) == (100, 100, 100)


def test_palette_with_transparency_is_white_where_transparent(tmp_path):
    path = tmp_path / "palette.png"
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))  # index 0 black, index 1 red
    img.putpixel((0, 0), 1)
    img.save(path, transparency=0)  # index 0 is transparent
    assert Image.open(path).mode == "P"
    out = load_rgb(path)
    assert out.mode == "RGB"
    assert pixel(out, (0, 0)) == (255, 0, 0)  # opaque red stays red
    assert pixel(out, (5, 5)) == (255, 255, 255)  # transparent black becomes white, not black


def test_rgba_transparent_becomes_white(tmp_path):
    path = tmp_path / "rgba.png"
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    for x in range(4):
        for y in range(8):
            img.putpixel((x, y), (0, 0, 255, 255))  # left half opaque blue
    img.save(path)
    out = load_rgb(path)
    assert out.mode == "RGB"
    assert pixel(out, (1, 1)) == (0, 0, 255)
    assert pixel(out, (6, 6)) == (255, 255, 255)


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    assert Image.open(path).mode == "CMYK"
    out = load_rgb(path)
    assert out.mode == "RGB"
    r, g, b = pixel(out, (8, 8))
    assert r > 200 and g < 50 and b < 50


def test_16bit_png_mid_grey_stays_mid_grey(tmp_path):
    path = tmp_path / "grey16.png"
    arr = np.full((10, 12), 32768, dtype=np.uint16)  # half of 65535
    arr[0, :] = 65535
    arr[1, :] = 0
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I;16")
    out = np.asarray(load_rgb(path))
    assert out.shape == (10, 12, 3)
    # convert("RGB") on I;16 clips everything above 255 to white: 32768 must be ~128, not 255.
    assert np.all(np.abs(out[5].astype(int) - 128) <= 1)
    assert np.all(out[0] == 255)
    assert np.all(out[1] == 0)


def test_exif_rotated_jpeg_comes_out_upright(tmp_path):
    path = tmp_path / "rotated.jpg"
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    img.save(path, exif=exif.tobytes())
    assert Image.open(path).size == (40, 20)
    out = load_rgb(path)
    assert out.size == (20, 40)


def test_exif_rotation_content_and_draft_decoding(tmp_path):
    """Left half red, right half blue as stored; Orientation 6 turns the left half to the top.
    The same must hold through Preprocess.load, which lets the JPEG decoder shrink (draft)."""
    path = tmp_path / "rotated-big.jpg"
    arr = np.zeros((200, 400, 3), dtype=np.uint8)
    arr[:, :200] = (255, 0, 0)
    arr[:, 200:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(path, exif=exif.tobytes(), quality=95)
    out = np.asarray(load_rgb(path))
    assert out.shape == (400, 200, 3)
    assert out[20, 100, 0] > 240 and out[20, 100, 2] < 15  # top: red
    assert out[380, 100, 2] > 240 and out[380, 100, 0] < 15  # bottom: blue
    x = Preprocess((40, 20), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)).load(path)
    assert tuple(x.shape) == (3, 40, 20)
    assert x[0, 2, 10] > 0.95 and x[2, 2, 10] < 0.05
    assert x[2, 37, 10] > 0.95 and x[0, 37, 10] < 0.05


def test_webp(tmp_path):
    path = tmp_path / "poster.webp"
    Image.new("RGB", (20, 30), (10, 200, 30)).save(path, lossless=True)
    out = load_rgb(path)
    assert out.mode == "RGB" and out.size == (20, 30)
    assert pixel(out, (3, 3)) == (10, 200, 30)


def test_bytes_source():
    import io

    buf = io.BytesIO()
    Image.new("RGB", (5, 7), (1, 2, 3)).save(buf, format="PNG")
    out = load_rgb(buf.getvalue())
    assert out.size == (5, 7) and pixel(out) == (1, 2, 3)


# --- errors --------------------------------------------------------------------------------


def _load_error(path, **kw) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_rgb(path, **kw)
    err = info.value
    assert err.path == str(path)
    assert str(path) in str(err)
    return err


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert "empty" in _load_error(path).reason


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    assert "not an image" in _load_error(path).reason


def test_truncated_jpeg(tmp_path):
    path = tmp_path / "truncated.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 120, 3), dtype=np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in _load_error(path).reason


def test_pixel_cap(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (30, 20), (0, 0, 0)).save(path)
    assert load_rgb(path, max_pixels=600).size == (30, 20)  # exactly at the cap is fine
    err = _load_error(path, max_pixels=599)
    assert "30x20 (0.0006 megapixels)" in err.reason and "cap of 0.000599 megapixels" in err.reason


def test_missing_file(tmp_path):
    assert "not found" in _load_error(tmp_path / "nope.jpg").reason


def test_directory(tmp_path):
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    assert "directory" in _load_error(folder).reason


def test_error_uses_given_name_for_bytes():
    with pytest.raises(ImageLoadError) as info:
        load_rgb(b"garbage", name="poster-42.jpg")
    assert info.value.path == "poster-42.jpg"
    assert str(info.value).startswith("poster-42.jpg: ")


# --- preprocessing -------------------------------------------------------------------------


def test_preprocess_shape_and_normalisation():
    pp = Preprocess(size=(8, 6), mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))
    img = Image.new("RGB", (31, 47), (255, 0, 128))
    x = pp(img)
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
    assert tuple(x.shape) == (3, 8, 6)  # (3, H, W): size is (height, width)
    # R: (255/255 - 0.5) / 0.5 = 1;  G: (0 - 0.5) / 0.25 = -2;  B: (128/255 - 0.5) / 0.5 = 0.00392
    assert torch.allclose(x[0], torch.full((8, 6), 1.0))
    assert torch.allclose(x[1], torch.full((8, 6), -2.0))
    assert torch.allclose(x[2], torch.full((8, 6), (128 / 255 - 0.5) / 0.5), atol=1e-6)
    back = pp.unnormalize(x)
    assert back.shape == (8, 6, 3)
    assert np.allclose(back[0, 0], [1.0, 0.0, 128 / 255], atol=1e-6)


def test_preprocess_load_file(tmp_path):
    path = tmp_path / "p.jpg"
    Image.new("RGB", (90, 60), (255, 255, 255)).save(path)
    pp = Preprocess((16, 12), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    x = pp.load(path)
    assert tuple(x.shape) == (3, 16, 12)
    expected = (1.0 - np.array(pp.mean)) / np.array(pp.std)
    assert np.allclose(x.mean(dim=(1, 2)).numpy(), expected, atol=0.02)
    with pytest.raises(ImageLoadError):
        pp.load(tmp_path / "missing.jpg")


def test_preprocess_dict_round_trip():
    pp = Preprocess((260, 200), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    d = json.loads(json.dumps(pp.to_dict()))
    assert d == {"size": [260, 200], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    back = Preprocess.from_dict(d)
    assert back == pp
    assert back.draft_size == (200, 260)
