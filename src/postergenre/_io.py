"""Writing files so that nothing the user keeps is ever half-written, the cache folder, and how
worker processes start."""

from __future__ import annotations

import io
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .errors import OutputError


def default_cache_dir() -> Path:
    """Feature caches and ONNX exports: ``$POSTERGENRE_CACHE`` or ``~/.cache/postergenre``."""
    return Path(os.environ.get("POSTERGENRE_CACHE", Path.home() / ".cache" / "postergenre"))


def worker_context():
    """The start method of every worker process the package starts (OCR, DataLoader workers).

    Never ``fork``: a forked child inherits every lock that another thread of the parent held at
    that instant (the import lock while a decoding thread imports a PIL plugin, tqdm's lock) and
    waits on it forever; ``predict --text on`` hung in 2-3 of 8 runs that way. ``forkserver``
    forks workers from a single-threaded server process started once per run (Python 3.14's
    default on Linux); start-up cost measured in docs/performance.md ("Worker start-up").
    """
    import multiprocessing

    return multiprocessing.get_context("forkserver")


# What the first run after install spends preparing the engine, on 2 cores: `predict` of two
# posters with an empty cache minus with a full one, 5.3 - 0.3 s (--text on: 9.6 - 0.6 s).
PREPARE_SECONDS, PREPARE_TEXT_SECONDS = 5, 9
_announced = False


def announce_preparation(cache_dir: str | Path | None = None) -> None:
    """One line on stderr, once a process, before the first thing is built into the cache (the
    model's ONNX export and int8 file, the lean OCR recognizer, the text encoder's export): the
    first run after install spends seconds on them, and said nothing."""
    global _announced
    if _announced:
        return
    _announced = True
    import sys

    where = Path(cache_dir or default_cache_dir()).expanduser()
    home = Path.home()
    shown = f"~/{where.relative_to(home)}" if where.is_relative_to(home) else str(where)
    print(f"preparing the CPU engine in {shown} (once: ~{PREPARE_SECONDS} s, with --text on ~{PREPARE_TEXT_SECONDS} s)",
          file=sys.stderr, flush=True)


def atomic_file(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temp file and a rename: never half-written."""
    return atomic_bytes(path, text.encode("utf-8"))


def atomic_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file and a rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_png(path: str | Path, fig) -> Path:
    """Save the matplotlib figure ``fig`` as a PNG at ``path`` (a reader never sees half a PNG)
    and close it."""
    import matplotlib.pyplot as plt  # where a figure exists, pyplot is already loaded

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_bytes(path, buf.getvalue())


def atomic_directory(out_dir: str | Path, write: Callable[[Path], None]) -> Path:
    """Fill a fresh sibling temp directory with ``write``, then swap it into ``out_dir``.

    A crash leaves either the old directory or the new one at ``out_dir``, never a mix; a
    leftover ``.tmp`` sibling is harmless and never read as a model.
    """
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        for f in tmp.iterdir():  # flush file contents before the rename makes them visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            f.chmod(0o644)
        tmp.chmod(0o755)
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turns an ``OSError`` raised while writing ``path`` (a file the user named: no space, no
    permission, a file where a folder should be) into an :class:`OutputError` naming it."""
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(f"{path}: cannot write it ({exc.strerror or exc})") from exc
