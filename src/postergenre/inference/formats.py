"""What the user gets back: the result record of one poster (:func:`result`), the output
formats for results and metrics (one entry per format in each registry), the format a file's
extension names and the rule that a file the user named is never replaced unasked
(:func:`check_overwrite`), the streamed ``.csv``/``.jsonl`` result file and its shards. A new
output field is a change here only."""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UsageError
from .._io import atomic_file, writing


def predictions_table(results: list[dict], show: int = 3) -> str:
    """``comedy.jpg -> Comedy / Romance / Drama   (Comedy 0.95, Romance 0.62, Drama 0.41)``."""
    lines = []
    for r in results:
        if r["error"]:
            lines.append(f"{r['path']} -> ERROR: {r['error']}")
            continue
        scores = {g["genre"]: g["score"] for g in r["genres"]}
        shown = r["predicted"] + [g["genre"] for g in r["genres"] if g["genre"] not in r["predicted"]][: max(0, show - len(r["predicted"]))]
        detail = ", ".join(f"{g} {scores[g]:.2f}" for g in shown)
        read = f"   [read: {_short(r['text'])}]" if r.get("text") else ""
        lines.append(f"{r['path']} -> {' / '.join(r['predicted'])}   ({detail}){read}")
    return "\n".join(lines)


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def predictions_json(results: list[dict]) -> str:
    return json.dumps(results, indent=2, ensure_ascii=False)


def result(path: str, scores: np.ndarray | None, mask: np.ndarray | None, genres: list[str], error: str | None = None,
           text: str | None = None) -> dict:
    """One poster's result, the record every output format writes: ``{"path", "genres": [{"genre",
    "score"}, ... all genres by score], "predicted": [...], "text", "error"}`` (``scores``/``mask``
    ``(G,)``; ``text``: what OCR read on the poster, ``None`` when text is off)."""
    if error is not None:
        return {"path": path, "genres": [], "predicted": [], "text": None, "error": error}
    order = np.argsort(-scores, kind="stable")
    return {
        "path": path,
        "genres": [{"genre": genres[g], "score": round(float(scores[g]), 6)} for g in order],
        "predicted": [genres[g] for g in order if mask[g]],
        "text": text,
        "error": None,
    }


def _csv_header(genres: list[str]) -> list[str]:
    return ["path", "predicted", "error", "text", *genres]


def _csv_row(r: dict, genres: list[str]) -> list:
    scores = {g["genre"]: g["score"] for g in r["genres"]}
    return [r["path"], "|".join(r["predicted"]), r["error"] or "", r.get("text") or "", *(scores.get(g, "") for g in genres)]


def predictions_csv(results: list[dict]) -> str:
    """One row per poster: path, predicted (``|``-joined), error, text (what OCR read; empty when text is off), then one score column per genre."""
    genres = next((sorted(g["genre"] for g in r["genres"]) for r in results if r["genres"]), [])
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(_csv_header(genres))
    for r in results:
        w.writerow(_csv_row(r, genres))
    return out.getvalue().rstrip("\n")


def predictions_jsonl(results: list[dict]) -> str:
    return "\n".join(json.dumps(r, ensure_ascii=False) for r in results)


PREDICTION_FORMATS: dict[str, Callable[[list[dict]], str]] = {
    "table": predictions_table,
    "json": predictions_json,
    "csv": predictions_csv,
    "jsonl": predictions_jsonl,
}
STREAM_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl"}
# The format a file's extension names; .txt holds the table.
OUTPUT_SUFFIXES = {".txt": "table", ".json": "json", ".jsonl": "jsonl", ".csv": "csv"}


def output_format(output: Path | None, fmt: str | None, formats=PREDICTION_FORMATS) -> str:
    """The format to write: ``fmt`` if given, else the one ``output``'s extension names, else
    ``table``. An unknown ``fmt``, an extension that names no format of ``formats`` (without
    ``fmt``) or one that names another format than ``fmt`` is a UsageError."""
    if fmt is not None and fmt not in formats:
        raise UsageError(f"unknown format {fmt!r}; choose one of {', '.join(formats)}")
    if output is None:
        return fmt or "table"
    implied = OUTPUT_SUFFIXES.get(output.suffix.lower())
    if fmt is not None and implied is not None and fmt != implied:
        raise UsageError(f"--format {fmt} does not match the output file {output.name} ({output.suffix} is {implied})")
    if fmt is None and implied not in formats:
        suffixes = ", ".join(s for s, f in OUTPUT_SUFFIXES.items() if f in formats)
        raise UsageError(f"{output}: its extension {output.suffix or '(none)'!r} names none of the formats "
                         f"{', '.join(formats)}; name a {suffixes} file or give --format")
    return fmt or implied


def check_overwrite(path: str | Path, force: bool = False, resume: bool = False, resumable: bool = False,
                    folder: bool = False) -> None:
    """Refuse to replace what is at ``path`` (a file, or a folder that is not empty): the user
    named it, and it may be hours of work. ``force`` replaces it; ``resume`` continues it where
    that makes sense (``resumable``). ``folder``: ``path`` is meant to be a folder."""
    path = Path(path)
    if not folder and path.is_dir():
        raise UsageError(f"{path} is a folder; give a file name")
    if force or (resume and resumable) or not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    how = "--force to overwrite it" + (" or --resume to continue it" if resumable else "")
    raise UsageError(f"{path} already exists; add {how}")


class ResultStream:
    """Writes prediction results to a ``.csv`` or ``.jsonl`` file one row at a time.

    Rows are flushed as they are written, so a crash keeps every finished poster. With
    ``resume`` the rows already in the file are kept (a torn last line from a crash is cut off)
    and their paths are in :attr:`done`, to be skipped; every row counts, errors included.
    """

    def __init__(self, path: str | Path, genres: list[str], resume: bool = False):
        self.path = Path(path)
        self.kind = STREAM_SUFFIXES.get(self.path.suffix.lower())
        if self.kind is None:
            raise UsageError(f"{self.path}: streamed output must end in {' or '.join(STREAM_SUFFIXES)}")
        self.genres = sorted(genres)
        self.done: set[str] = set()
        self.written = 0
        with writing(self.path):
            if resume and self.path.is_file() and self.path.stat().st_size:
                self._read_done()
                self.f = self.path.open("a", encoding="utf-8", newline="")
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.f = self.path.open("w", encoding="utf-8", newline="")
                if self.kind == "csv":
                    csv.writer(self.f, lineterminator="\n").writerow(_csv_header(self.genres))
        self._csv = csv.writer(self.f, lineterminator="\n")

    def _read_done(self) -> None:
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):  # the last row was cut by a crash: drop it, it will be redone
            with self.path.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
            data = data[: data.rfind(b"\n") + 1]
        text = data.decode("utf-8")
        if self.kind == "csv":
            rows = list(csv.reader(io.StringIO(text)))
            if not rows or rows[0] != _csv_header(self.genres):
                raise UsageError(f"{self.path}: cannot resume, its header is not this model's (path, predicted, error, text, then its genres)")
            self.done = {row[0] for row in rows[1:] if row}
        else:
            for n, line in enumerate(text.splitlines(), 1):
                try:
                    self.done.add(json.loads(line)["path"])
                except (ValueError, KeyError, TypeError):
                    raise UsageError(f"{self.path}: cannot resume, line {n} is not a prediction result") from None

    def write(self, r: dict) -> None:
        with writing(self.path):
            if self.kind == "csv":
                self._csv.writerow(_csv_row(r, self.genres))
            else:
                self.f.write(json.dumps(r, ensure_ascii=False) + "\n")
            self.f.flush()
        self.written += 1

    def close(self) -> None:
        with writing(self.path):
            try:
                self.f.flush()
                os.fsync(self.f.fileno())
            finally:
                self.f.close()

    def __enter__(self) -> "ResultStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def metrics_table(m: dict) -> str:
    lines = [f"posters evaluated: {m['n_posters']}"]
    from ..modeling.metrics import SUMMARY_KEYS  # scikit-learn: only when metrics are shown

    lines += [f"  {k:<18} {m[k]:.4f}" for k in SUMMARY_KEYS]
    lines.append("")
    lines.append(f"  {'genre':<12} {'AP':>6} {'F1':>6} {'support':>8}")
    for g, v in sorted(m["per_genre"].items(), key=lambda kv: -kv[1]["support"]):
        ap = f"{v['AP']:.3f}" if v["AP"] is not None else "  n/a"
        lines.append(f"  {g:<12} {ap:>6} {v['F1']:>6.3f} {v['support']:>8}")
    return "\n".join(lines)


METRICS_FORMATS: dict[str, Callable[[dict], str]] = {
    "table": metrics_table,
    "json": lambda m: json.dumps(m, indent=2),
}


def shard_path(path: str | Path, i: int, n: int) -> Path:
    """``genres.csv`` -> ``genres.shard-1-of-4.csv``: where shard ``i`` of ``n`` writes."""
    path = Path(path)
    return path.with_name(f"{path.stem}.shard-{i}-of-{n}{path.suffix}")


def _find_shards(path: Path) -> dict[int, Path]:
    """The shard files of ``path`` (``<stem>.shard-I-of-N<suffix>``), all N of them, by I."""
    import re

    pattern = re.compile(re.escape(path.stem) + r"\.shard-(\d+)-of-(\d+)" + re.escape(path.suffix) + "$")
    found: dict[int, dict[int, Path]] = {}
    for f in path.parent.glob(f"{glob.escape(path.stem)}.shard-*{glob.escape(path.suffix)}"):
        if m := pattern.match(f.name):
            found.setdefault(int(m.group(2)), {})[int(m.group(1))] = f
    if not found:
        raise UsageError(f"no shards found for {path} (expected {path.stem}.shard-I-of-N{path.suffix} next to it)")
    if len(found) > 1:
        runs = ", ".join(f"{len(files)} of {n}" for n, files in sorted(found.items()))
        raise UsageError(f"{path}: shards of several runs lie next to it ({runs}); keep only one run's")
    (n, shards), = found.items()
    missing = sorted(set(range(n)) - set(shards))
    if missing:
        raise UsageError(f"{path}: shard(s) {', '.join(map(str, missing))} of {n} are missing")
    return shards


def merge_shards(path: str | Path, remove: bool = True, force: bool = False) -> tuple[Path, int]:
    """Merge ``<stem>.shard-I-of-N<suffix>`` files (all N of them) into ``path``, rows sorted by
    poster path, written atomically; returns (path, rows). Missing shards are an error, and so
    is an existing ``path`` unless ``force``."""
    path = Path(path)
    kind = STREAM_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UsageError(f"{path}: can merge only {' or '.join(STREAM_SUFFIXES)} outputs")
    shards = _find_shards(path)
    check_overwrite(path, force=force)
    header, rows = None, []
    for i in range(len(shards)):
        text = shards[i].read_text(encoding="utf-8")
        if not text.endswith("\n"):
            raise UsageError(f"{shards[i]}: its last row is cut (the shard did not finish); rerun it with --resume")
        lines = text.splitlines()
        if kind == "csv":
            if header is not None and lines[:1] != [header]:
                raise UsageError(f"{shards[i]}: its header differs from shard 0's (another model?)")
            header, lines = lines[0], lines[1:]
        rows += lines
    if kind == "csv":
        parsed = list(csv.reader(io.StringIO("\n".join(rows))))
        order = sorted(range(len(rows)), key=lambda k: parsed[k][0])
    else:
        order = sorted(range(len(rows)), key=lambda k: json.loads(rows[k])["path"])
    with writing(path):
        atomic_file(path, "".join(f"{line}\n" for line in ([header] if header else []) + [rows[k] for k in order]))
    if remove:
        for f in shards.values():
            f.unlink()
    return path, len(rows)
