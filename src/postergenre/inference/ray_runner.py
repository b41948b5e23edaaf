"""``postergenre predict SRC... --cluster ray``: the same prediction on Ray Data, on a laptop (an
embedded local Ray) or on a cluster (``--address``, or ``RAY_ADDRESS``), unchanged.

Ray Data's batch-inference pattern: the driver walks the sources (folders, files, globs, list
files) into a dataset of paths; a pool of actors (:class:`PosterPredictor`) each loads the model
once, with ONNX Runtime's intra-op threads set to the actor's CPUs (ORT ignores
``OMP_NUM_THREADS``), decodes its posters itself (an unreadable file is an error row naming it,
never a failed block) and scores them exactly as ``predict`` does (:func:`predict_paths`). The
rows come back to the driver, which writes them (:mod:`.ray_output`). Ray is an optional extra.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Iterable

from ..errors import UsageError
from .batch import NOTHING_FOUND, Interrupted, PredictionRun
from .predict import PREDICT_BATCH, iter_image_paths, predict_paths
from .ray_output import RayOutput, check_ray_output, done_paths, rows_table
from .scorer import load_scorer, load_text_reader

RAY_MISSING = "--cluster ray needs Ray Data, an optional extra: pip install 'postergenre[ray]'"
# CPUs per actor (ONNX Runtime threads; OCR worker processes with --text on): one actor per core
# beat one actor on every core (benchmarks/ray_predict.py).
ACTOR_CPUS = 1
RAY_BATCH = 64  # posters per actor call (image only)
RAY_BATCH_TEXT = 16  # with --text on: ~0.1 s of OCR each, so a call still returns within seconds
LIST_SUFFIXES = {".txt", ".lst", ".list"}


def import_ray():
    """``ray`` with Ray Data, or a UsageError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError(RAY_MISSING) from None
    return ray


def expand_sources(sources: Iterable[str | Path]) -> list[str]:
    """Each source as paths for :func:`iter_image_paths`: a glob (``*``, ``?``, ``[``: expanded,
    ``**`` recursive) that names no existing file, a list file (``.txt``/``.lst``/``.list``: one
    path or glob a line, relative ones from the list's folder, ``#`` comments) or as given."""
    out: list[str] = []
    for src in (_as_uri(str(s)) for s in sources):
        p = Path(src)
        if _is_uri(src):
            out.append(src)
        elif not p.exists() and any(c in src for c in "*?["):
            out += sorted(glob.glob(src, recursive=True))
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
            out += expand_sources(line if _is_uri(line) else str(p.parent / line) for line in lines if line and not line.startswith("#"))
        else:
            out.append(src)
    return out


def _is_uri(source: str) -> bool:
    return "://" in source


def _as_uri(source: str) -> str:
    """``s3:/bucket/key`` (a URI that went through ``pathlib``, which folds ``//``) as ``s3://bucket/key``."""
    m = re.match(r"([a-zA-Z][a-zA-Z0-9+.-]+):/(?!/)(.*)$", source)
    if not m or Path(source).exists():
        return source
    return f"{m[1]}://{'/' if m[1] == 'file' else ''}{m[2]}"


def list_uri(uri: str) -> list[str]:
    """The image files under a URI (``s3://``, ``gs://``, ``file://``, ...: whatever pyarrow's
    filesystems open), sorted; a file as given; one that is not there as given (its row says so)."""
    from pyarrow import fs

    from ..data.images import IMAGE_EXTENSIONS

    try:
        filesystem, root = fs.FileSystem.from_uri(uri)
        if filesystem.get_file_info(root).type != fs.FileType.Directory:
            return [uri]
        infos = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{uri}: cannot list it ({exc})") from None
    scheme = uri.split("://", 1)[0] + "://"
    names = sorted(i.path for i in infos if i.type == fs.FileType.File
                   and Path(i.path).suffix.lower() in IMAGE_EXTENSIONS and not i.base_name.startswith("."))
    return [scheme + n for n in names]


def _fetch(uri: str, dest: Path) -> str:
    """``uri``'s bytes copied to ``dest`` (nothing there when it cannot be read: its row is an error)."""
    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(uri)
        with filesystem.open_input_stream(path) as stream:
            dest.write_bytes(stream.read())
    except (OSError, ValueError):
        pass
    return str(dest)


def walk_sources(sources: Iterable[str | Path]) -> list[str]:
    """Every poster under ``sources`` (see :func:`expand_sources`), local paths as ``predict``
    walks them and URIs through pyarrow (:func:`list_uri`), in order."""
    out: list[str] = []
    for src in expand_sources(sources):
        out += list_uri(src) if _is_uri(src) else [str(p) for p in iter_image_paths([src])]
    return out


def _threaded(scorer, threads: int):
    """``scorer`` running on ``threads`` CPU threads: an ONNX Runtime session remade with that
    many intra-op threads (set only when a session is made), PyTorch told so."""
    from .onnx_scorer import OnnxModel

    if isinstance(scorer, OnnxModel):
        return OnnxModel(scorer.path, threads=threads)
    import torch

    torch.set_num_threads(threads)
    return scorer


class PosterPredictor:
    """One Ray actor: the model (and text branch) loaded once; each call decodes and scores a batch
    of paths exactly as ``predict`` does, one row per path (errors included)."""

    def __init__(self, model, engine: str, text: bool, decision: str, top_k: int, threads: int, quiet: bool = False):
        if quiet:
            os.environ["TQDM_DISABLE"] = "1"
        self.threads = max(1, int(threads))
        self.scorer = _threaded(load_scorer(model, engine), self.threads)
        self.rule = self.scorer.decision_rule(decision, top_k)
        self.reader = _ActorText(load_text_reader(model), self.threads) if text else None

    def __call__(self, batch):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="postergenre-ray-") as tmp:
            # absolute paths (a worker's folder need not be the driver's); URIs fetched into tmp
            files = [_fetch(f, Path(tmp) / f"{i}-{f.rsplit('/', 1)[-1]}") if _is_uri(f) else f
                     for i, f in enumerate(batch["file"].to_pylist())]
            rows = list(predict_paths(self.scorer, files, self.rule, batch_size=PREDICT_BATCH, workers=self.threads,
                                      text=self.reader))
        for row, given, local in zip(rows, batch["path"].to_pylist(), files):  # one row per file, in order
            row["path"] = given
            if row["error"] and local != given:
                row["error"] = row["error"].replace(local, given)
        return rows_table(rows)


class _ActorText:
    """The text branch inside an actor: one OCR engine on the actor's threads kept across batches
    (``predict`` starts OCR worker processes per block instead), read through the same OCR cache,
    fused as ``predict --text on`` fuses (:class:`~.scorer.TextReader`)."""

    def __init__(self, reader, threads: int):
        from ..text.ocr import OcrCache, OcrReader

        self.reader, self.settings = reader, reader.branch.ocr
        self.ocr = OcrReader(self.settings, threads=threads)
        self.cache = OcrCache(self.settings, reader.cache_dir)

    def stream(self, paths: list):
        from ..data.images import file_digest
        from ..text.ocr import text_of

        for path in paths:
            try:
                data = Path(path).read_bytes()
            except OSError:
                data = b""
            record = self.cache.get(file_digest(data))
            if record is None:
                record = self.ocr.read_file(data)
                self.cache.add(record)
            yield text_of(record, self.settings.min_score)

    def combine(self, scores, texts: list[str]):
        return self.reader.combine(scores, texts)


def start_ray(address: str | None, quiet: bool):
    """Ray, connected: to ``address`` (or ``RAY_ADDRESS``) when given, else an embedded local Ray on
    every core of this machine. Returns ``(started, local)``: whether this call started it (and so
    shuts it down), and whether that is an embedded Ray on this machine."""
    ray = import_ray()
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = not quiet
    ctx.print_on_execution_start = not quiet
    if quiet:
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
    if ray.is_initialized():
        return False, False
    args = dict(include_dashboard=False, log_to_driver=not quiet, logging_level=logging.ERROR if quiet else logging.WARNING,
                configure_logging=True)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **args)
        return True, False
    ray.init(num_cpus=os.cpu_count(), **args)
    return True, True


def _actors(ray, threads: int) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1) // threads))


def run_on_ray(sources: Iterable[str | Path], model: str | Path | None = "default", *, output: Path, address: str | None = None,
               decision: str = "top_k", top_k: int = 3, resume: bool = False, force: bool = False, engine: str = "auto",
               text: bool = False, quiet: bool = False, actor_cpus: int = ACTOR_CPUS) -> PredictionRun:
    """Predict every poster under ``sources`` on Ray and write the rows to ``output`` (``.jsonl`` or a
    ``.parquet`` folder). Everything that can be wrong with the options or the model is reported
    before Ray starts; Ctrl-C publishes the rows done and raises :class:`~.batch.Interrupted`."""
    output = check_ray_output(output, force, resume)
    import_ray()
    load_scorer(model, engine).decision_rule(decision, top_k)  # a missing/broken model fails here; the cache is filled once
    if text:
        load_text_reader(model)
    done = done_paths(output) if resume else set()
    todo = [p for p in walk_sources(sources) if p not in done]
    if not todo and not done:
        raise UsageError(NOTHING_FOUND)
    run = PredictionRun(kept=len(done) if resume else None, written=output, streamed=True)
    if todo:
        started, local = start_ray(address, quiet)
        try:
            where = model if model in (None, "default") else str(Path(model).resolve())
            _execute(todo, output, resume, run, dict(model=where, engine=engine, text=text, decision=decision,
                                                     top_k=top_k, threads=actor_cpus, quiet=quiet), local)
        finally:
            if started:
                import ray

                ray.shutdown()
    elif not output.exists():
        RayOutput(output, resume).publish()
    return run


def _execute(todo: list[str], output: Path, resume: bool, run: PredictionRun, actor_args: dict, local: bool) -> None:
    import ray

    # An embedded Ray is this one machine: no node to lose, so no actor restarts (and no warning about them).
    restarts = {"max_restarts": 0} if local else {}
    batch = RAY_BATCH_TEXT if actor_args["text"] else RAY_BATCH
    blocks = -(-len(todo) // batch)
    ds = ray.data.from_items([{"path": p, "file": p if _is_uri(p) else os.path.abspath(p)} for p in todo], override_num_blocks=blocks)
    with warnings.catch_warnings():  # max_restarts has no named parameter yet
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ds.map_batches(PosterPredictor, fn_constructor_kwargs=actor_args, batch_format="pyarrow", batch_size=batch,
                            num_cpus=actor_args["threads"], **restarts,
                            compute=ray.data.ActorPoolStrategy(size=min(blocks, _actors(ray, actor_args["threads"]))))
    out = RayOutput(output, resume)
    try:
        for table in ds.iter_batches(batch_format="pyarrow", batch_size=batch):
            out.add(table)
            run.done += table.num_rows
            run.failed += table.num_rows - table["error"].null_count
    except KeyboardInterrupt:
        out.publish()
        raise Interrupted(output, len(done_paths(output))) from None  # whole rows only, however Ctrl-C fell
    except BaseException:
        out.discard()
        raise
    out.publish()
