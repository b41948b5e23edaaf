"""Robust image decoding and preprocessing.

Every poster, whatever its mode (greyscale, palette, RGBA, CMYK, 16-bit) or EXIF orientation,
becomes an upright 8-bit RGB image; a file that is not a readable image raises
:class:`ImageLoadError` with the file name and the reason. The posters the Python API takes
(PIL images, paths, bytes) become the model's input batch here too (:func:`poster_batch`).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageLoadError, UsageError  # noqa: F401 - ImageLoadError re-exported

if TYPE_CHECKING:  # torch is imported where tensors are made: the ONNX path never needs it
    import torch

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
# Posters are a few hundred pixels a side; anything past this is refused as a likely bomb.
DEFAULT_MAX_PIXELS = 40_000_000


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.4g}"


# PIL's own bomb check reads the module global Image.MAX_IMAGE_PIXELS (it warns past ~89 MP and
# refuses past twice that): it answered before our cap, in its own words or as a warning, and
# refused what a cap above its limit allowed. It is off only while we parse a header (and decode
# an image above its limit that our cap let through), under a lock, so two loaders never restore
# each other's value; the value is always restored.
_PIL_LIMIT = threading.Lock()


@contextmanager
def _without_pil_limit():
    with _PIL_LIMIT:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield saved
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def file_digest(data: bytes) -> str:
    """Content hash of an image file's bytes: keys the feature cache, finds duplicate posters."""
    return hashlib.sha1(data).hexdigest()


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: convert("RGB") would clip everything above 255 to white.
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent areas become white, as a poster would be printed.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def load_rgb(
    source: str | Path | bytes,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode ``source`` (a path or the file's bytes) into an upright RGB PIL image.

    ``draft_size`` (width, height) lets the JPEG decoder skip detail below that size, which
    makes decoding several times faster when the image is only going to be shrunk.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except IsADirectoryError:
        raise ImageLoadError(label, "is a directory, not an image") from None
    except PermissionError:
        raise ImageLoadError(label, "permission denied") from None
    except FileNotFoundError:
        raise ImageLoadError(label, "file not found") from None
    except OSError as exc:
        raise ImageLoadError(label, f"cannot read file ({exc.strerror or exc})") from None
    if not data:
        raise ImageLoadError(label, "empty file (0 bytes)")
    try:
        with _without_pil_limit() as pil_limit:  # the header only: our own cap is checked before decoding
            img = Image.open(io.BytesIO(data))
        w, h = img.size
        if w * h > max_pixels:
            raise ImageLoadError(label, f"image is {w}x{h} ({_megapixels(w * h)} megapixels), above the cap of "
                                        f"{_megapixels(max_pixels)} megapixels against decompression bombs; raise it "
                                        "with `postergenre serve --max-pixels N` or load_rgb(max_pixels=N)")
        if draft_size is not None and img.format == "JPEG":
            img.draft("RGB", draft_size)
        # Some decoders (GIF frames, TIFF tiles) check PIL's limit again: off for an image our cap allows past it.
        with _without_pil_limit() if pil_limit is not None and w * h > pil_limit else nullcontext():
            img.load()
            img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(label, "not an image file (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageLoadError(label, f"corrupt or truncated image ({exc})") from None


@dataclass(frozen=True)
class Preprocess:
    """How an RGB image becomes the model's input tensor ``(3, H, W)``.

    The whole poster is resized to ``size`` (height, width), squashing the aspect ratio as the
    study did, then scaled to [0, 1] and normalised with ``mean``/``std`` per channel.
    """

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(tuple(d["size"]), tuple(d["mean"]), tuple(d["std"]))

    @property
    def draft_size(self) -> tuple[int, int]:
        return (self.size[1], self.size[0])

    def resize(self, img: Image.Image) -> Image.Image:
        return img.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR, reducing_gap=None)

    def normalize(self, img: Image.Image) -> "torch.Tensor":
        import torch

        return torch.from_numpy(self.normalize_pixels(np.asarray(img, dtype=np.uint8)[None])[0])

    def __call__(self, img: Image.Image) -> "torch.Tensor":
        return self.normalize(self.resize(img))

    def load_pixels(self, source: str | Path | bytes, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """Decode and resize one file, not yet normalised: ``(H, W, 3)`` uint8. Loader workers
        hand these over (4x smaller than float32: less shared-memory traffic and page faults)."""
        img = load_rgb(source, name=name, max_pixels=max_pixels, draft_size=self.draft_size)
        return np.array(self.resize(img), dtype=np.uint8)  # writable: torch.from_numpy warns on read-only arrays

    def normalize_batch(self, pixels: "torch.Tensor") -> "torch.Tensor":
        """``(B, H, W, 3)`` uint8 -> ``(B, 3, H, W)`` float32: :meth:`normalize_pixels` on a tensor."""
        import torch

        return torch.from_numpy(self.normalize_pixels(pixels.numpy()))

    def normalize_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """``(B, H, W, 3)`` uint8 -> ``(B, 3, H, W)`` float32, scaled to [0, 1] then ``(x - mean) / std``.
        The one normalisation every path uses (NumPy: the ONNX path never imports torch)."""
        mean, std = np.asarray(self.mean, dtype=np.float32), np.asarray(self.std, dtype=np.float32)
        out = np.empty((pixels.shape[0], 3, *pixels.shape[1:3]), dtype=np.float32)
        for c in range(3):  # in place, a channel at a time: the same float32 operations, bit for bit, 5x faster
            plane = out[:, c]
            plane[...] = pixels[..., c]
            plane /= np.float32(255.0)
            plane -= mean[c]
            plane /= std[c]
        return out

    def load(self, source: str | Path | bytes, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> "torch.Tensor":
        """Decode and preprocess one file: ``(3, H, W)`` float32."""
        return self(load_rgb(source, name=name, max_pixels=max_pixels, draft_size=self.draft_size))

    def unnormalize(self, x: "torch.Tensor") -> np.ndarray:
        """Inverse of :meth:`normalize`, for showing what the model sees: ``(H, W, 3)`` in [0, 1]."""
        arr = x.detach().cpu().numpy().transpose(1, 2, 0) * np.asarray(self.std) + np.asarray(self.mean)
        return np.clip(arr, 0.0, 1.0)


def decode_for_model(path: str | Path, preprocess: Preprocess, flip: bool = False) -> tuple[np.ndarray | None, str | None]:
    """One file as the model's resized uint8 pixels ``(H, W, 3)``, or ``(None, error message)``."""
    try:
        x = preprocess.load_pixels(Path(path).read_bytes(), name=str(path))
        return (np.ascontiguousarray(x[:, ::-1]) if flip else x), None
    except ImageLoadError as exc:
        return None, str(exc)
    except OSError as exc:
        return None, str(ImageLoadError(path, f"cannot read file ({exc.strerror or exc})"))


def decoded_batches(paths: list, preprocess: Preprocess, batch_size: int, workers: int | None = None):
    """Batches ``(indices, float32 (B, 3, H, W) or None, {index: error})`` in input order, without torch.

    Files are decoded in a small thread pool (Pillow releases the GIL while it decodes and
    resizes), two batches ahead of the caller, so memory stays bounded on any number of paths.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    threads = max(1, workers if workers else min(2, os.cpu_count() or 1))
    starts = iter(range(0, len(paths), batch_size))
    with ThreadPoolExecutor(threads, thread_name_prefix="postergenre-decode") as pool:
        ahead: deque = deque()

        def submit() -> None:
            start = next(starts, None)
            if start is not None:
                chunk = range(start, min(start + batch_size, len(paths)))
                ahead.append((chunk, [pool.submit(decode_for_model, paths[i], preprocess) for i in chunk]))

        for _ in range(3):
            submit()
        while ahead:
            chunk, futures = ahead.popleft()
            submit()
            decoded = [f.result() for f in futures]
            ok = [i for i, (x, _) in zip(chunk, decoded) if x is not None]
            errors = {i: err for i, (_, err) in zip(chunk, decoded) if err is not None}
            pixels = np.stack([x for x, _ in decoded if x is not None]) if ok else None
            yield ok, None if pixels is None else preprocess.normalize_pixels(pixels), errors


# --- posters given to the Python API (PIL images, paths, bytes) -----------------------------

Poster = Any  # PIL.Image.Image | str | os.PathLike | bytes


def is_one_poster(posters: Any) -> bool:
    """A single poster rather than a sequence of them (a ``str`` path is one poster)."""
    return isinstance(posters, (Image.Image, str, os.PathLike, bytes, bytearray, memoryview))


def poster_pixels(poster: Poster, preprocess: Preprocess) -> np.ndarray:
    """One poster resized for the model, ``(H, W, 3)`` uint8; ImageLoadError naming a path
    that cannot be read, UsageError for something that is not a poster at all."""
    if isinstance(poster, Image.Image):
        upright = ImageOps.exif_transpose(poster)  # as a file's orientation tag is applied when it is decoded
        return np.array(preprocess.resize(_to_rgb(upright)), dtype=np.uint8)
    if isinstance(poster, (str, os.PathLike)):
        return preprocess.load_pixels(Path(poster))
    if isinstance(poster, (bytes, bytearray, memoryview)):
        return preprocess.load_pixels(bytes(poster))
    raise UsageError(f"cannot read a poster from a {type(poster).__name__}: give a PIL image, a path or the file's bytes")


def poster_batch(posters: Sequence[Poster], preprocess: Preprocess) -> np.ndarray:
    """The model's input for ``posters``: ``(B, 3, H, W)`` float32, normalised."""
    if not len(posters):
        raise UsageError("no posters given")
    return preprocess.normalize_pixels(np.stack([poster_pixels(p, preprocess) for p in posters]))
