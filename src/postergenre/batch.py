"""``postergenre predict`` as one call, :func:`run_predictions`: which posters this process
takes (all of them, ``shard="I/N"``, or its rank under ``torchrun``), where the results go
(returned as text, written at once, or streamed row by row to a ``.csv``/``.jsonl`` file that
``resume`` continues) and, under torchrun, rank 0 joining the ranks' shard files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from . import distributed
from ._io import atomic_file
from .errors import UsageError
from ._io import writing
from .formats import PREDICTION_FORMATS, STREAM_SUFFIXES, ResultStream, merge_shards, shard_path
from .inference import load_scorer
from .predict import predict_paths

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


@dataclass(frozen=True)
class _Target:
    """Where the results go, once the options are checked."""

    fmt: str
    output: Path | None  # the file this process writes
    final: Path | None  # the file the user named (the merged file when sharded)
    stream: bool  # row by row to a .csv/.jsonl file
    required: bool  # finding no poster at all is an error (a shard may be empty; the catalogue may not)


def _target(output: Path | None, fmt: str | None, resume: bool, shard: tuple[int, int] | None) -> _Target:
    stream_kind = STREAM_SUFFIXES.get(output.suffix.lower()) if output else None
    final = output
    if shard and output:
        if not stream_kind:
            raise UsageError("--shard with --output needs a .csv or .jsonl file (shards are merged row by row)")
        output = shard_path(output, *shard)
    fmt = fmt or stream_kind or "table"
    if fmt not in PREDICTION_FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose {', '.join(PREDICTION_FORMATS)}")
    if stream_kind and fmt != stream_kind:
        raise UsageError(f"--format {fmt} does not match the output file {output.name}")
    if resume and not stream_kind:
        raise UsageError("--resume needs --output FILE.csv or FILE.jsonl")
    return _Target(fmt, output, final, stream_kind is not None, required=shard is None)


def _this_process(shard: str | None) -> tuple[distributed.Dist, tuple[int, int] | None]:
    """``--shard I/N`` as given, else under torchrun this rank's share, else everything."""
    if shard is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist = distributed.setup("cpu")
        return dist, (dist.rank, dist.world_size)
    return distributed.SINGLE, distributed.parse_shard(shard) if shard else None


def run_predictions(paths: Iterable[str | Path], model: str | Path | None = "default", *, decision: str = "top_k",
                    top_k: int = 3, fmt: str | None = None, output: Path | None = None, resume: bool = False,
                    shard: str | None = None, batch_size: int = 32, workers: int | None = None, device: str = "cpu",
                    engine: str = "auto") -> PredictionRun:
    """Predict every poster under ``paths`` with ``model`` and deliver the results.

    ``fmt``: a key of :data:`~postergenre.formats.PREDICTION_FORMATS` (default: the kind of a
    ``.csv``/``.jsonl`` ``output``, else ``table``). Without ``output`` the results come back as
    ``text``; a ``.csv``/``.jsonl`` output is streamed (``resume`` keeps its rows and skips their
    posters); any other is written at once. ``shard="I/N"`` takes positions I, I+N, ... and
    writes that shard's file (see :func:`~postergenre.formats.shard_path`).
    """
    dist = distributed.SINGLE
    try:
        dist, shard_ix = _this_process(shard)
        target = _target(Path(output) if output else None, fmt, resume, shard_ix)
        scorer = load_scorer(model, engine, device=device)
        rule = scorer.decision_rule(decision, top_k)

        def predicted(skip: set[str] | None = None):
            return predict_paths(scorer, paths, rule, batch_size=batch_size, workers=workers, skip=skip, shard=shard_ix)

        run = _stream(target, scorer.genres, resume, predicted) if target.stream else _collect(target, predicted())
        if dist.enabled and target.stream:  # every rank has written its shard; rank 0 joins them
            dist.barrier()
            if dist.is_main:
                merged, n_rows = merge_shards(target.final)
                run.merged = (merged, n_rows, dist.world_size)
        return run
    finally:
        distributed.teardown()


def _stream(target: _Target, genres: list[str], resume: bool, predicted) -> PredictionRun:
    with ResultStream(target.output, genres, resume=resume) as out:
        run = PredictionRun(kept=len(out.done) if resume else None, written=target.output, streamed=True)
        for r in predicted(out.done):
            out.write(r)
            run.done += 1
            run.failed += r["error"] is not None
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
