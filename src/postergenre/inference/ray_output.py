"""Where ``predict --cluster ray`` puts its rows: ``OUT.jsonl`` (one file) or ``OUT.parquet`` (a
folder of parts), written by the driver under a temporary name and moved into place, so a reader
never sees half a file. With ``resume`` the rows already in OUT are kept and their posters
skipped; Ctrl-C publishes the whole rows done so far (``--resume`` goes on from them).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from ..errors import UsageError
from .._io import atomic_directory, writing
from .formats import check_overwrite

RAY_SUFFIXES = (".jsonl", ".parquet")
PART_ROWS = 50_000  # rows per parquet part


def result_schema():
    """The Arrow schema of a result row: the fields of ``predict --format jsonl``, in its order."""
    import pyarrow as pa

    genre = pa.struct([("genre", pa.string()), ("score", pa.float64())])
    return pa.schema([("path", pa.string()), ("genres", pa.list_(genre)), ("predicted", pa.list_(pa.string())),
                      ("text", pa.string()), ("error", pa.string())])


def rows_table(rows: list[dict]):
    """Result dicts (:func:`~postergenre.inference.formats.result`) as one Arrow table of :func:`result_schema`."""
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=result_schema())


def check_ray_output(output: Path | None, force: bool, resume: bool) -> Path:
    """The output file or folder, checked: named, a .jsonl or .parquet, not replaced unasked."""
    if output is None:
        raise UsageError("--cluster ray needs --output FILE.jsonl or DIR.parquet (a folder of parts)")
    output = Path(output)
    if output.suffix.lower() not in RAY_SUFFIXES:
        raise UsageError(f"{output}: with --cluster ray, --output must end in .jsonl (one file) or .parquet (a folder of parts)")
    folder = output.suffix.lower() == ".parquet"
    if folder and output.is_file():
        raise UsageError(f"{output} is a file; --cluster ray writes a .parquet folder of parts there")
    check_overwrite(output, force=force, resume=resume, resumable=True, folder=folder)
    return output


def done_paths(output: Path) -> set[str]:
    """The posters already in ``output`` (jsonl rows, or the ``path`` column of the parquet parts);
    a torn last jsonl line (a crash mid-write of another writer) does not count."""
    if not output.exists():
        return set()
    if output.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return {p for part in sorted(output.glob("*.parquet")) for p in pq.read_table(part, columns=["path"])["path"].to_pylist()}
    done = set()
    lines = output.read_text(encoding="utf-8").split("\n")
    for n, line in enumerate(lines[:-1], 1):  # the text after the last newline is a torn row (or nothing)
        try:
            done.add(json.loads(line)["path"])
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"{output}: cannot resume, line {n} is not a prediction result") from None
    return done


class RayOutput:
    """Collects result tables and publishes them at ``output`` on :meth:`publish` (at the end, or
    at Ctrl-C): the kept rows (``resume``) plus the new ones, moved into place whole."""

    def __init__(self, output: Path, resume: bool):
        self.output, self.resume = output, resume
        self.parquet = output.suffix.lower() == ".parquet"
        self.tmp = output.parent / f".{output.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.rows = 0
        self._pending: list = []
        with writing(output):
            output.parent.mkdir(parents=True, exist_ok=True)
            if self.parquet:
                self.tmp.mkdir()
            else:
                self._start_jsonl()

    def _start_jsonl(self) -> None:
        kept = b""
        if self.resume and self.output.is_file():
            kept = self.output.read_bytes()
            kept = kept[: kept.rfind(b"\n") + 1]  # a torn last line is dropped: its poster is redone
        self.f = self.tmp.open("wb")
        self.f.write(kept)

    def add(self, table) -> None:
        """One batch of rows (an Arrow table of :func:`result_schema`)."""
        with writing(self.output):
            if self.parquet:
                self._pending.append(table)
                if sum(t.num_rows for t in self._pending) >= PART_ROWS:
                    self._flush_part()
            else:
                self.f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in table.to_pylist()).encode("utf-8"))
        self.rows += table.num_rows

    def _flush_part(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._pending:
            pq.write_table(pa.concat_tables(self._pending), self.tmp / f"part-{uuid.uuid4().hex[:12]}.parquet")
            self._pending = []

    def publish(self) -> Path:
        """Move what was written into place (replacing ``output`` when forced or resumed)."""
        with writing(self.output):
            if not self.parquet:
                self.f.flush()
                os.fsync(self.f.fileno())
                self.f.close()
                os.replace(self.tmp, self.output)
                return self.output
            self._flush_part()
            old = sorted(self.output.glob("*.parquet")) if self.resume and self.output.is_dir() else []

            def fill(folder: Path) -> None:
                for part in old:
                    shutil.copy2(part, folder / part.name)
                for part in self.tmp.iterdir():
                    os.replace(part, folder / part.name)

            atomic_directory(self.output, fill)
            shutil.rmtree(self.tmp, ignore_errors=True)
            return self.output

    def discard(self) -> None:
        """Leave ``output`` as it was (an error: nothing of this run is published)."""
        if self.parquet:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            self.f.close()
            self.tmp.unlink(missing_ok=True)
