"""Reading a poster's words: RapidOCR (PP-OCR detection + recognition, ONNX Runtime) and a cache.

The cache holds, for each image's content hash (:func:`~postergenre.data.images.file_digest`)
and one OCR setting, the lines read: ``{"sha1", "text", "lines": [[text, score, [x0, y0, x1, y1]]],
"seconds"}``, one JSON object a line in append-only ``part-*.jsonl`` files under
``<cache>/ocr/<settings key>/``. Each line is flushed as it is read, so an interrupted run keeps
everything it read and a rerun goes on from there; a torn last line is ignored when read back.

A poster OCR cannot read (no text, an image too small, a decoder error) gets an empty text,
never an error: the image branch reports unreadable files.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .._io import default_cache_dir, worker_context
from ..data.images import file_digest, load_rgb
from ..errors import ImageLoadError

MIN_SIDE = 8  # pixels: below this there is nothing to read, and the detector rejects it


@dataclass(frozen=True)
class OcrSettings:
    """How posters are read. ``det_limit_side_len``/``det_limit_type``: the detector's input size
    (``"max"``: the longer side shrunk to at most that many pixels; 320 keeps title-sized words
    at a third of the default's cost, docs/ablation). ``rec_width``/``rec_batch``: the
    recognizer pads each line to at least ``rec_width`` pixels (at height 48) and reads
    ``rec_batch`` lines at a time, each padded to the widest; RapidOCR's defaults (320, 6) pad a
    short word to 320 pixels, and a batch to its longest line. ``use_cls``: turn lines read as
    upside down (RapidOCR's angle classifier). ``min_score``: recognised lines below this
    confidence are dropped from the text (they stay in the cache)."""

    det_limit_side_len: int = 320
    det_limit_type: str = "max"
    min_score: float = 0.5
    rec_width: int = 320
    rec_batch: int = 6
    use_cls: bool = True

    @property
    def key(self) -> str:
        """The cache folder of this setting (``min_score`` filters at read time, so it is not part of it;
        RapidOCR's recognizer defaults add nothing, so caches made before these fields still serve)."""
        key = f"rapidocr-det{self.det_limit_side_len}{self.det_limit_type}"
        if (self.rec_width, self.rec_batch) != (320, 6):
            key += f"-rec{self.rec_width}b{self.rec_batch}"
        return key + ("" if self.use_cls else "-nocls")

    def to_dict(self) -> dict:
        return {"engine": "rapidocr-onnxruntime", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "OcrSettings":
        return cls(**{k: d[k] for k in ("det_limit_side_len", "det_limit_type", "min_score", "rec_width", "rec_batch",
                                        "use_cls") if k in d})


def text_of(record: dict, min_score: float) -> str:
    """The text of a cached record: its lines of at least ``min_score``, joined by spaces."""
    return " ".join(t for t, score, _box in record["lines"] if score >= min_score)


class OcrReader:
    """One RapidOCR engine (built on first use). ``threads``: ONNX Runtime's intra-op threads
    (``None``: all cores, for one poster; worker processes use 1 each)."""

    def __init__(self, settings: OcrSettings = OcrSettings(), threads: int | None = None):
        self.settings, self.threads, self._engine = settings, threads, None

    def _get_engine(self):
        if self._engine is None:
            from rapidocr_onnxruntime import RapidOCR

            from .ocr_models import lean_copy, rapidocr_model

            n = self.threads or os.cpu_count() or 1
            self._engine = RapidOCR(det_limit_side_len=self.settings.det_limit_side_len,
                                    det_limit_type=self.settings.det_limit_type,
                                    rec_model_path=str(lean_copy(rapidocr_model("Rec"))),
                                    rec_img_shape=[3, 48, self.settings.rec_width], rec_batch_num=self.settings.rec_batch,
                                    intra_op_num_threads=n, inter_op_num_threads=1)
        return self._engine

    def read_image(self, image) -> list:
        """Lines ``[[text, score, [x0, y0, x1, y1]], ...]`` read on a PIL image or an ``(H, W, 3)``
        uint8 RGB array, top to bottom as the detector orders them; ``[]`` when nothing is read."""
        arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
        if arr.ndim != 3 or min(arr.shape[:2]) < MIN_SIDE:
            return []
        try:
            found, _ = self._get_engine()(np.ascontiguousarray(arr[:, :, :3]), use_cls=self.settings.use_cls)
        except (ValueError, IndexError, ZeroDivisionError, RuntimeError, TypeError):
            return []  # the detector's post-processing trips on degenerate boxes; no text is the honest answer
        return [[str(t), round(float(s), 3), _bounds(box)] for box, t, s in (found or []) if str(t).strip()]

    def read_file(self, source: str | Path | bytes) -> dict:
        """A cache record for one image file (a path or its bytes)."""
        t = time.perf_counter()
        data = source if isinstance(source, bytes) else _read_bytes(source)
        lines = []
        if data:
            try:
                lines = self.read_image(load_rgb(data))
            except ImageLoadError:
                pass
        return {"sha1": file_digest(data or b""), "text": " ".join(x[0] for x in lines), "lines": lines,
                "seconds": round(time.perf_counter() - t, 3)}


def _bounds(box) -> list[int]:
    xs, ys = [p[0] for p in box], [p[1] for p in box]
    return [int(min(xs)), int(min(ys)), int(max(xs)), int(max(ys))]


def _read_bytes(path: str | Path | bytes) -> bytes:
    if isinstance(path, (bytes, bytearray, memoryview)):
        return bytes(path)
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


class OcrCache:
    """The records of one OCR setting, by image content hash (see the module docstring)."""

    def __init__(self, settings: OcrSettings = OcrSettings(), cache_dir: str | Path | None = None):
        self.settings = settings
        self.root = Path(cache_dir or default_cache_dir()) / "ocr" / settings.key
        self._records: dict[str, dict] | None = None
        self._out = None

    def records(self) -> dict[str, dict]:
        if self._records is None:
            self._records = {}
            for part in sorted(self.root.glob("*.jsonl")) if self.root.is_dir() else []:
                with part.open(encoding="utf-8", errors="replace") as f:
                    for line in f:
                        try:
                            rec = json.loads(line)
                            self._records[rec["sha1"]] = rec
                        except (ValueError, KeyError, TypeError):
                            continue  # a line torn by a crash
        return self._records

    def get(self, digest: str) -> dict | None:
        return self.records().get(digest)

    def add(self, record: dict) -> None:
        """Append ``record`` (flushed at once) to this process's own part file."""
        if self._out is None:
            self.root.mkdir(parents=True, exist_ok=True)
            settings = self.root / "settings.json"
            if not settings.exists():
                settings.write_text(json.dumps(self.settings.to_dict()))
            self._out = (self.root / f"part-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl").open("a", encoding="utf-8")
        self._out.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._out.flush()
        self.records()[record["sha1"]] = record

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


_worker_reader: OcrReader | None = None


def _init_worker(settings: OcrSettings) -> None:
    global _worker_reader
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    _worker_reader = OcrReader(settings, threads=1)


def _read_in_worker(path: str | bytes) -> dict:
    return _worker_reader.read_file(path)


class OcrWorkers:
    """Reads posters in ``workers`` processes (one ONNX thread each; ``<= 1``: in this process,
    on every core), started by :func:`~postergenre._io.worker_context` (never forked from this
    process, whose other threads may hold a lock). A context manager: leaving it on an error,
    Ctrl-C or a closed generator stops the workers at once, even one in the middle of a poster."""

    def __init__(self, settings: OcrSettings, workers: int):
        self.settings = settings
        if workers > 1:  # built once here, not by each worker at once (and announced once)
            from .ocr_models import lean_copy, rapidocr_model

            lean_copy(rapidocr_model("Rec"))
        self.pool = ProcessPoolExecutor(workers, mp_context=worker_context(), initializer=_init_worker,
                                        initargs=(settings,)) if workers > 1 else None

    def read(self, paths: Sequence[str | bytes]) -> Iterator[dict]:
        """A cache record for each of ``paths``, in order, each as soon as it (and those before it) are read."""
        if self.pool is None:
            reader = OcrReader(self.settings)
            yield from map(reader.read_file, paths)
            return
        for future in [self.pool.submit(_read_in_worker, p) for p in paths]:
            yield future.result()

    def __enter__(self) -> "OcrWorkers":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if self.pool is None:
            return
        if exc_type is None:
            self.pool.shutdown(wait=True)
            return
        stop = getattr(self.pool, "terminate_workers", None)  # Python >= 3.14
        if stop is not None:
            stop()
            return
        # Before 3.14 the executor cannot stop a running task, and at exit Python waits for the
        # tasks already queued (55 s after Ctrl-C on a loaded machine); its processes can be
        # stopped. Taken first: shutdown() forgets them.
        procs = list((getattr(self.pool, "_processes", None) or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.terminate()


def default_workers(n_posters: int) -> int:
    """Processes for reading ``n_posters`` uncached posters: one per core (at most 2: the image
    model runs beside them) past 8 posters; below that, starting them costs more than they save."""
    return min(os.cpu_count() or 1, 2) if n_posters > 8 else 1


def iter_texts(paths: Sequence[str | Path | bytes], settings: OcrSettings = OcrSettings(), cache_dir: str | Path | None = None,
               workers: int | None = None, progress: bool = False, use_cache: bool = True) -> Iterator[str]:
    """The text of each poster in ``paths`` (files, or their bytes; ``""`` where nothing is read),
    in order, each yielded as soon as it is read: from the cache where it is there, else read now
    (then cached, once per distinct image). ``workers``: processes reading in parallel (``None``:
    :func:`default_workers`). Closing the generator early stops the workers."""
    cache = OcrCache(settings, cache_dir) if use_cache else None
    digests = [file_digest(_read_bytes(p)) for p in paths]
    found = {d: r for d in digests if cache is not None and (r := cache.get(d)) is not None}
    todo: dict[str, str | bytes] = {}  # digest -> the first path with that content, in input order
    for p, d in zip(paths, digests):
        if d not in found:
            todo.setdefault(d, p if isinstance(p, bytes) else str(p))
    bar = _bar(len(todo)) if progress and todo else None
    try:
        with OcrWorkers(settings, default_workers(len(todo)) if workers is None else workers) as pool:
            read = zip(todo, pool.read(list(todo.values())))
            for d in digests:
                while d not in found:
                    digest, record = next(read)
                    found[digest] = record
                    if cache is not None:
                        cache.add(record)
                    bar is not None and bar.update()
                yield text_of(found[d], settings.min_score)
    finally:
        if cache is not None:
            cache.close()
        if bar is not None:
            bar.close()


def read_posters(paths: Sequence[str | Path | bytes], settings: OcrSettings = OcrSettings(), cache_dir: str | Path | None = None,
                 workers: int | None = None, progress: bool = False, use_cache: bool = True) -> list[str]:
    """:func:`iter_texts` as a list."""
    return list(iter_texts(paths, settings, cache_dir, workers, progress, use_cache))


def _bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="OCR", unit="poster")
