"""``postergenre predict`` as one call, :func:`run_predictions`: which posters this process
takes (all of them, ``shard="I/N"``, or its rank under ``torchrun``), where the results go
(returned as text, written at once, or streamed row by row to a ``.csv``/``.jsonl`` file that
``resume`` continues; an existing file is replaced only with ``force``) and, under torchrun,
rank 0 joining the ranks' shard files. Ctrl-C while streaming raises :class:`Interrupted`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .. import distributed
from ..errors import UsageError
from .._io import atomic_file, writing
from .formats import PREDICTION_FORMATS, STREAM_SUFFIXES, ResultStream, check_overwrite, merge_shards, output_format, shard_path
from .predict import PREDICT_BATCH, count_images, predict_paths
from .scorer import load_scorer, load_text_reader

NOTHING_FOUND = "no image files found in the given paths"


@dataclass
class PredictionRun:
    """What :func:`run_predictions` did, for the caller to report."""

    done: int = 0  # posters predicted by this call, unreadable ones included
    failed: int = 0  # of those, the ones that could not be read
    kept: int | None = None  # rows kept from an earlier run (None: not resuming)
    text: str | None = None  # the formatted results, when there is no output file
    written: Path | None = None  # the file written (under sharding, this shard's file)
    streamed: bool = False  # ``written`` was filled row by row
    merged: tuple[Path, int, int] | None = None  # torchrun rank 0: (merged file, rows, shards)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while results were streamed: ``path`` holds ``rows`` complete rows, which
    ``resume=True`` (``--resume``) keeps. Still a KeyboardInterrupt for code that catches one."""

    def __init__(self, path: Path, rows: int):
        super().__init__(f"interrupted: {rows} rows saved to {path}; rerun with --resume")
        self.path, self.rows = path, rows


@dataclass(frozen=True)
class _Target:
    """Where the results go, once the options are checked."""

    fmt: str
    output: Path | None  # the file this process writes
    final: Path | None  # the file the user named (the merged file when sharded)
    stream: bool  # row by row to a .csv/.jsonl file
    required: bool  # finding no poster at all is an error (a shard may be empty; the catalogue may not)


def _target(output: Path | None, fmt: str | None, resume: bool, force: bool, shard: tuple[int, int] | None) -> _Target:
    fmt = output_format(output, fmt)
    stream = output is not None and output.suffix.lower() in STREAM_SUFFIXES
    final = output
    if shard and output:
        if not stream:
            raise UsageError("--shard with --output needs a .csv or .jsonl file (shards are merged row by row)")
        output = shard_path(output, *shard)
    if resume and not stream:
        raise UsageError("--resume needs --output FILE.csv or FILE.jsonl")
    if output is not None:
        check_overwrite(output, force=force, resume=resume, resumable=stream)
    return _Target(fmt, output, final, stream, required=shard is None)


def _this_process(shard: str | None) -> tuple[distributed.Dist, tuple[int, int] | None]:
    """``--shard I/N`` as given, else under torchrun this rank's share, else everything."""
    if shard is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist = distributed.setup("cpu")
        return dist, (dist.rank, dist.world_size)
    return distributed.SINGLE, distributed.parse_shard(shard) if shard else None


def run_predictions(paths: Iterable[str | Path], model: str | Path | None = "default", *, decision: str = "top_k",
                    top_k: int = 3, fmt: str | None = None, output: Path | None = None, resume: bool = False,
                    force: bool = False, shard: str | None = None, batch_size: int = PREDICT_BATCH, workers: int | None = None,
                    device: str = "cpu", engine: str = "auto", progress: bool = False, text: bool = False) -> PredictionRun:
    """Predict every poster under ``paths`` with ``model`` and deliver the results.

    ``fmt``: a key of :data:`~postergenre.inference.formats.PREDICTION_FORMATS` (default: the one
    ``output``'s extension names, see :func:`~postergenre.inference.formats.output_format`; else
    ``table``). Without ``output`` the results come back as ``text``; a ``.csv``/``.jsonl``
    output is streamed (``resume`` keeps its rows and skips their posters); any other is
    written at once. An existing ``output`` is refused unless ``force`` (or ``resume``).
    ``shard="I/N"`` takes positions I, I+N, ... and writes that shard's file (see
    :func:`~postergenre.inference.formats.shard_path`). ``progress``: a progress bar on stderr.
    ``text``: read each poster with OCR and fuse its text into the scores (the model's text branch).
    """
    paths = list(paths)  # walked twice when a progress bar needs the total
    dist = distributed.SINGLE
    try:
        dist, shard_ix = _this_process(shard)
        target = _target(Path(output) if output else None, fmt, resume, force, shard_ix)
        if dist.enabled and target.stream:  # rank 0 will write the merged file the user named
            check_overwrite(target.final, force=force or resume)
        reader = load_text_reader(model) if text else None
        scorer = load_scorer(model, engine, device=device)
        rule = scorer.decision_rule(decision, top_k)

        def predicted(skip: set[str] | None = None):
            results = predict_paths(scorer, paths, rule, batch_size=batch_size, workers=workers, skip=skip, shard=shard_ix,
                                    text=reader)
            return _with_bar(results, count_images(paths, skip, shard_ix)) if progress else results

        run = _stream(target, scorer.genres, resume, predicted) if target.stream else _collect(target, predicted())
        if dist.enabled and target.stream:  # every rank has written its shard; rank 0 joins them
            dist.barrier()
            if dist.is_main:
                merged, n_rows = merge_shards(target.final, force=True)
                run.merged = (merged, n_rows, dist.world_size)
        return run
    finally:
        distributed.teardown()


def _with_bar(results: Iterator[dict], total: int) -> Iterator[dict]:
    """``results``, counted on a progress bar (count, rate, time left) on stderr."""
    from tqdm import tqdm

    with tqdm(total=total, unit="poster", file=sys.stderr, smoothing=0.1, mininterval=0.5) as bar:
        for r in results:
            yield r
            bar.update()


def _stream(target: _Target, genres: list[str], resume: bool, predicted) -> PredictionRun:
    with ResultStream(target.output, genres, resume=resume) as out:
        run = PredictionRun(kept=len(out.done) if resume else None, written=target.output, streamed=True)
        results = predicted(out.done)
        try:
            for r in results:
                out.write(r)  # one whole line, flushed: a Ctrl-C cannot leave half a row
                run.done += 1
                run.failed += r["error"] is not None
        except KeyboardInterrupt:
            raise Interrupted(target.output, len(out.done) + run.done) from None
        finally:
            results.close()  # stops the decoding threads (and the bar) before anything is reported
    if target.required and run.done == 0 and not out.done:
        raise UsageError(NOTHING_FOUND)
    return run


def _collect(target: _Target, results: Iterable[dict]) -> PredictionRun:
    results = list(results)
    if target.required and not results:
        raise UsageError(NOTHING_FOUND)
    run = PredictionRun(done=len(results), failed=sum(r["error"] is not None for r in results))
    text = PREDICTION_FORMATS[target.fmt](results)
    if target.output is None:
        run.text = text
    else:
        with writing(target.output):
            run.written = atomic_file(target.output, text + "\n")
    return run
