"""Posters decoded once, at the model's input size, into a uint8 cache on disk (issue 28).

End-to-end training reads every poster every epoch. Decoding the JPEGs again each epoch costs far
more than a GPU step does, so :func:`decoded_pixels` decodes each poster once (the very pixels
:func:`~.images.decode_for_model` gives) into ``<cache>/pixels/<H>x<W>/``. Like the feature cache,
rows are keyed by each file's content digest: renamed, moved, reordered or duplicated posters are
found again, another run reuses them, and a changed file is decoded again.

The cache is a set of *segments*, one per fill: ``<id>.u8`` holds the raw rows ``(K, H, W, 3)``
and ``<id>.npz`` their digests (one per row), a done mask and the decode errors. The mask is rewritten
(atomically, after the rows are synced to disk) every few seconds and whenever the fill stops,
whatever stopped it: a row counts only once the mask says so, so an interrupted decode keeps what
it finished and a half-written row is never read as done. One process fills a size at a time (a
file lock): two ranks starting together decode once, the second finds the rows done.

A fill that decodes most of a list lays out the whole list, a row per path: a poster that comes
twice, or is already cached, is copied (never decoded again), an unreadable file keeps a zero row.
Asked again, that list is then one read-only memmap of its segment, read as needed (the usual
case: a run asks for the same posters as the last). Any other list (another order, a subset, a
fill that added a few posters to a mostly cached list) is gathered into an array, read-only too.
"""

from __future__ import annotations

import io
import math
import os
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .._io import atomic_bytes, default_cache_dir, worker_context
from ..errors import ImageLoadError
from .images import Preprocess, decode_for_model, file_digest

FORMAT = 1  # bump when the decode changes: segments of another format are ignored
CHUNK = 32  # posters per task handed to a worker (few enough round trips, even load)
SYNC_SECONDS = 5.0  # how often a fill brings its done mask up to date
# Worker processes (started with worker_context(), never fork), or "thread". Processes: a decode holds
# the GIL about a third of its time (PIL's header parsing, EXIF, our checks), so threads stop scaling
# after a few cores; on 2 cores both decode ~700 posters/s at 384x256 (16 processes: 35,879 in 22 s).
POOL = "process"


class _Segment:
    """One fill's rows: ``<id>.u8`` (raw uint8 rows) + ``<id>.npz`` (digests, done mask, errors)."""

    def __init__(self, folder: Path, seg_id: str, digests: list[str], done: np.ndarray, reasons: dict[int, str],
                 size: tuple[int, int]):
        self.folder, self.id, self.digests, self.done, self.reasons = folder, seg_id, digests, done, reasons
        self.shape = (len(digests), size[0], size[1], 3)

    @property
    def data_path(self) -> Path:
        return self.folder / f"{self.id}.u8"

    @classmethod
    def create(cls, folder: Path, digests: list[str], size: tuple[int, int]) -> "_Segment":
        """``digests`` one per row; "" for a file that cannot be read: a zero row, done from the start."""
        seg = cls(folder, uuid.uuid4().hex, digests, np.asarray([d == "" for d in digests], bool), {}, size)
        with open(seg.data_path, "wb") as fh:  # a sparse file of zeros: the rows of unreadable posters stay zero
            fh.truncate(math.prod(seg.shape))
        seg.save()  # at once, so that an interrupted first fill is resumed in this segment
        return seg

    @classmethod
    def load(cls, meta: Path, size: tuple[int, int]) -> "_Segment | None":
        """The segment ``meta`` describes, or None when it is damaged or of another format or size."""
        try:
            with np.load(meta, allow_pickle=False) as z:
                if int(z["format"]) != FORMAT or tuple(z["size"]) != tuple(size):
                    return None
                reasons = dict(zip(z["error_rows"].tolist(), z["error_reasons"].tolist()))
                seg = cls(meta.parent, meta.stem, z["digests"].astype(str).tolist(), z["done"].copy(), reasons, size)
            return seg if seg.data_path.stat().st_size == math.prod(seg.shape) else None
        except Exception:  # noqa: BLE001 - a damaged segment is ignored; its posters are decoded again
            return None

    def save(self) -> None:
        """Sync the rows to disk, then write the mask that vouches for them (atomically)."""
        with open(self.data_path, "rb+") as fh:
            os.fsync(fh.fileno())
        rows = sorted(self.reasons)
        buf = io.BytesIO()
        np.savez(buf, format=np.int64(FORMAT), size=np.asarray(self.shape[1:3]), digests=np.asarray(self.digests, "S40"),
                 done=self.done, error_rows=np.asarray(rows, np.int64),
                 error_reasons=np.asarray([self.reasons[r] for r in rows], str))
        atomic_bytes(self.folder / f"{self.id}.npz", buf.getvalue())

    def mark(self, row: int, reason: str | None) -> None:
        """Row ``row`` is done: its pixels are in place, or it stays zero for ``reason``."""
        self.done[row] = True
        if reason is None:
            self.reasons.pop(row, None)
        else:
            self.reasons[row] = reason

    def rows(self, mode: str = "r") -> np.memmap:
        return np.memmap(self.data_path, dtype=np.uint8, mode=mode, shape=self.shape)


def decoded_pixels(paths: Sequence[str | Path], preprocess: Preprocess, cache_dir: str | Path | None = None,
                   workers: int | None = None, progress: bool = False) -> tuple[np.ndarray, dict[int, str]]:
    """Every poster of ``paths`` decoded once to ``preprocess.size``: uint8 ``(N, H, W, 3)``,
    read-only, and ``{index: error message}`` for the files that cannot be read (their rows are zero).

    Only posters the cache lacks are decoded, in ``workers`` processes (default: one per CPU; 0 or 1:
    in this process; a handful of posters are decoded here, as starting processes costs more).
    """
    paths = list(paths)
    size = (int(preprocess.size[0]), int(preprocess.size[1]))
    folder = Path(cache_dir or default_cache_dir()) / "pixels" / f"{size[0]}x{size[1]}"
    digests, errors = _digests(paths)
    segments = _load_segments(folder, size)
    if _missing(digests, _index(segments)):
        with _fill_lock(folder):  # another process may have filled them while we waited: look again
            _remove_leftovers(folder)
            segments = _load_segments(folder, size)
            index = _index(segments)
            if _missing(digests, index):
                seg = _segment_for(folder, segments, digests, index, size)
                source = {d: paths[i] for i, d in reversed(list(enumerate(digests))) if d is not None}
                _fill(seg, index, source, preprocess, workers, progress)
                segments = [s for s in segments if s is not seg] + [seg]
    return _assemble(paths, digests, errors, segments, size)


def _digests(paths: list) -> tuple[list[str | None], dict[int, str]]:
    """Content digest of each file (None where it cannot be read) and the read errors, as
    :func:`~.images.decode_for_model` words them. Threads: hashing and reading release the GIL."""

    def one(path) -> str:
        try:
            return file_digest(Path(path).read_bytes())
        except OSError as exc:
            return "!" + str(ImageLoadError(path, f"cannot read file ({exc.strerror or exc})"))

    if len(paths) > 64:
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix="postergenre-digest") as pool:
            found = list(pool.map(one, paths, chunksize=64))
    else:
        found = [one(p) for p in paths]
    errors = {i: d[1:] for i, d in enumerate(found) if d.startswith("!")}
    return [None if i in errors else d for i, d in enumerate(found)], errors


def _load_segments(folder: Path, size: tuple[int, int]) -> list[_Segment]:
    metas = sorted(folder.glob("*.npz")) if folder.is_dir() else []
    return [s for s in (_Segment.load(m, size) for m in metas) if s is not None]


def _index(segments: list[_Segment]) -> dict[str, tuple[_Segment, int]]:
    """Digest -> (segment, row) over the rows that are done."""
    index: dict[str, tuple[_Segment, int]] = {}
    for seg in segments:
        for row in np.flatnonzero(seg.done).tolist():
            if seg.digests[row]:
                index.setdefault(seg.digests[row], (seg, row))
    return index


def _missing(digests: list[str | None], index: dict) -> list[str]:
    """The digests no segment has done, each once, in the order they are asked."""
    return list(dict.fromkeys(d for d in digests if d is not None and d not in index))


@contextmanager
def _fill_lock(folder: Path) -> Iterator[None]:
    """One filler per size at a time; the lock goes with the process, however it ends."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock (two fills at once are wasteful, never wrong)
        yield
        return
    with open(folder / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_leftovers(folder: Path) -> None:
    """Under the lock: rows without their mask (a fill killed before its first save), segments
    whose mask is damaged, temp files of an interrupted atomic write: never read, only taking space."""
    for meta in folder.glob("*.npz"):
        try:
            with np.load(meta, allow_pickle=False) as z:
                z["format"]
        except Exception:  # noqa: BLE001 - unreadable, whatever the reason
            meta.unlink(missing_ok=True)
    for data in folder.glob("*.u8"):
        if not data.with_suffix(".npz").exists():
            data.unlink(missing_ok=True)
    for tmp in folder.glob(".*.tmp-*"):
        tmp.unlink(missing_ok=True)


def _segment_for(folder: Path, segments: list[_Segment], digests: list[str | None], index: dict,
                 size: tuple[int, int]) -> _Segment:
    """Where to decode what ``digests`` lacks: an interrupted fill of this list, or of just these
    posters, is resumed; else a new segment of the whole list when most of it is new (the first
    fill: it then reads back as one view), or of just the missing posters (no second copy on disk
    of a mostly cached list)."""
    layout = ["" if d is None else d for d in digests]
    missing = _missing(digests, index)
    for seg in segments:
        if seg.digests == layout:
            return seg
    for seg in segments:
        waiting = {seg.digests[r] for r in np.flatnonzero(~seg.done).tolist()}
        if all(d in waiting for d in missing):
            return seg
    whole = 2 * len(missing) >= len({d for d in digests if d is not None})
    return _Segment.create(folder, layout if whole else missing, size)


def _decode_rows(data_path: str, shape: tuple, preprocess: Preprocess, jobs: list) -> list[tuple[int, str | None]]:
    """Decode ``jobs`` ``[(row, path)]`` straight into the segment's file (no pixels go back
    through a pipe); ``[(row, error reason or None)]``. Runs in a worker process or thread."""
    rows = np.memmap(data_path, dtype=np.uint8, mode="r+", shape=shape)
    out = []
    for row, path in jobs:
        x, error = decode_for_model(path, preprocess)
        rows[row] = 0 if x is None else x  # zero: a row left half-written by an interrupted fill
        if error is not None and error.startswith(f"{path}: "):  # the reason is kept, to name any path later
            error = error[len(path) + 2:]
        out.append((row, error))
    del rows  # unmapped: the writes are in the page cache, which save() syncs before marking them done
    return out


def _worker_count(workers: int | None, n: int) -> int:
    if workers is None:
        return 0 if n < 4 * CHUNK else min(os.cpu_count() or 1, math.ceil(n / CHUNK))
    return max(0, int(workers))


def _decoded(data_path: Path, shape: tuple, preprocess: Preprocess, jobs: list, workers: int) -> Iterator[list]:
    """Results of :func:`_decode_rows` as the chunks finish. Every chunk is queued at once, so the
    workers keep going while the caller syncs the rows to disk; a stopped fill (exception, Ctrl-C,
    generator closed) cancels the chunks not started and waits only for those running."""
    task = partial(_decode_rows, str(data_path), shape, preprocess)
    if workers <= 1:  # one poster at a time: a stopped fill keeps every poster it finished
        for job in jobs:
            yield task([job])
        return
    chunk = max(1, min(CHUNK, math.ceil(len(jobs) / (4 * workers))))  # a few chunks per worker: even load
    pool = (ProcessPoolExecutor(workers, mp_context=worker_context()) if POOL == "process"
            else ThreadPoolExecutor(workers, thread_name_prefix="postergenre-decode"))
    with pool:
        futures = [pool.submit(task, jobs[s:s + chunk]) for s in range(0, len(jobs), chunk)]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


def _fill(seg: _Segment, index: dict, source: dict, preprocess: Preprocess, workers: int | None,
          progress: bool) -> None:
    """Fill the rows of ``seg`` not done yet: copied when another segment holds the poster, else
    decoded (each content once, ``source``: digest -> a path), the done mask saved as it goes and
    whenever the fill stops."""
    from tqdm.auto import tqdm

    waiting: dict[str, list[int]] = {}
    for row in np.flatnonzero(~seg.done).tolist():
        waiting.setdefault(seg.digests[row], []).append(row)
    rows, opened = seg.rows("r+"), {}
    try:
        for d in [d for d in waiting if d in index]:  # cached in another segment: copied
            src, src_row = index[d]
            if src.id not in opened:
                opened[src.id] = src.rows("r")
            _copy(seg, rows, waiting.pop(d), opened[src.id], src_row, src.reasons.get(src_row))
        jobs = [(rs[0], str(source[d])) for d, rs in waiting.items() if d in source]
        bar = tqdm(total=len(jobs), desc=f"decoding posters {seg.shape[1]}x{seg.shape[2]}", unit="poster",
                   disable=not progress)
        last = time.monotonic()
        with bar:
            for results in _decoded(seg.data_path, seg.shape, preprocess, jobs, _worker_count(workers, len(jobs))):
                for row, reason in results:  # decoded into the first row that wants it; copied to the others
                    _copy(seg, rows, waiting[seg.digests[row]], rows, row, reason)
                bar.update(len(results))
                if time.monotonic() - last > SYNC_SECONDS:
                    seg.save()
                    last = time.monotonic()
    finally:  # whatever stopped the fill, what it finished is kept
        del rows, opened
        seg.save()


def _copy(seg: _Segment, rows: np.memmap, targets: list[int], stored: np.memmap, src_row: int,
          reason: str | None) -> None:
    """Rows ``targets`` of ``seg`` (mapped as ``rows``) become row ``src_row`` of ``stored``, and are done."""
    for row in targets:
        if stored is not rows or row != src_row:
            rows[row] = stored[src_row]
        seg.mark(row, reason)


def _assemble(paths: list, digests: list[str | None], errors: dict[int, str], segments: list[_Segment],
              size: tuple[int, int]) -> tuple[np.ndarray, dict[int, str]]:
    """The rows in the order of ``paths``: the segment laid out for exactly this list, done, as a
    read-only memmap; else gathered (a block at a time) into a read-only array."""
    index = _index(segments)
    for i, d in enumerate(digests):
        seg, row = index.get(d, (None, None)) if d is not None else (None, None)
        if seg is not None and row in seg.reasons:  # a decode error, cached by content
            errors[i] = str(ImageLoadError(paths[i], seg.reasons[row]))
    errors = dict(sorted(errors.items()))
    layout = ["" if d is None else d for d in digests]
    for seg in segments:
        if seg.digests == layout and seg.done.all():
            return seg.rows("r"), errors
    out = np.zeros((len(paths), *size, 3), np.uint8)
    groups: dict[int, tuple[_Segment, list[int], list[int]]] = {}
    for i, d in enumerate(digests):
        if d is not None and d in index:
            _, idx, rows = groups.setdefault(id(index[d][0]), (index[d][0], [], []))
            idx.append(i)
            rows.append(index[d][1])
    for seg, idx, rows in groups.values():
        stored = seg.rows("r")
        for s in range(0, len(idx), 1024):  # a block at a time: never a second full copy in memory
            out[idx[s:s + 1024]] = stored[rows[s:s + 1024]]
    out.flags.writeable = False
    return out, errors
