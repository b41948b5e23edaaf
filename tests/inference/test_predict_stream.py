"""Streamed batch prediction: rows written as they are done, --resume after a crash or Ctrl-C,
bounded blocks, a progress bar in a terminal."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import numpy as np
import pytest

import postergenre.inference.predict as P
from conftest import interrupt_after_rows, make_poster, run

N = 7


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(3)
    for i in range(N):
        make_poster(rng, {"Action"} if i % 2 else {"Drama"}).save(root / f"p{i}.jpg")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    return root


def rows_of(path):
    if path.suffix == ".csv":
        return list(csv.DictReader(path.open()))
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_streamed_output_has_every_poster_once(tiny_model, many, tmp_path, suffix):
    out = tmp_path / f"out{suffix}"
    res = run("predict", many, "--model", tiny_model, "--output", out)
    assert res.exit_code == 0, res.output
    assert res.stderr.count("wrote ") == 1  # streamed once, not also collected and rewritten
    rows = rows_of(out)
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in many.iterdir())
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and "broken.jpg" in bad[0]["path"]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_resume_after_a_crash_keeps_rows_and_drops_the_torn_one(tiny_model, many, tmp_path, suffix):
    full = tmp_path / f"full{suffix}"
    run("predict", many, "--model", tiny_model, "--output", full)
    lines = full.read_text().splitlines(keepends=True)
    kept = 4 if suffix == ".csv" else 3  # csv: header + 3 rows
    crashed = tmp_path / f"crashed{suffix}"
    crashed.write_text("".join(lines[:kept]) + lines[kept][:10])  # a row cut mid-way, as a kill leaves it
    res = run("predict", many, "--model", tiny_model, "--output", crashed, "--resume")
    assert res.exit_code == 0, res.output
    assert "3 kept from before" in res.stderr
    a, b = rows_of(full), rows_of(crashed)
    assert sorted(r["path"] for r in b) == sorted(r["path"] for r in a)  # each poster exactly once
    by_path = {r["path"]: r for r in a}
    assert all(r["predicted"] == by_path[r["path"]]["predicted"] for r in b)


def test_resume_refuses_another_models_file(tiny_model, many, tmp_path):
    out = tmp_path / "other.csv"
    out.write_text("path,predicted,error,Western\nx.jpg,Western,,0.9\n")
    res = run("predict", many, "--model", tiny_model, "--output", out, "--resume")
    assert res.exit_code == 2 and "cannot resume" in res.stderr
    assert out.read_text().startswith("path,predicted,error,Western")  # left as it was


def test_stream_option_errors(tiny_model, many, tmp_path):
    res = run("predict", many, "--model", tiny_model, "--resume")
    assert res.exit_code == 2 and "--resume needs --output" in res.stderr
    res = run("predict", many, "--model", tiny_model, "--output", tmp_path / "o.csv", "--format", "jsonl")
    assert res.exit_code == 2 and "does not match" in res.stderr


def test_run_predictions_reports_what_it_did(tiny_model, many, tmp_path):
    from postergenre.inference.batch import run_predictions

    out = tmp_path / "out.jsonl"
    first = run_predictions([many], tiny_model, output=out, engine="torch")
    assert (first.done, first.failed, first.kept, first.written, first.streamed) == (N + 1, 1, None, out, True)
    again = run_predictions([many], tiny_model, output=out, resume=True, engine="torch")
    assert (again.done, again.failed, again.kept) == (0, 0, N + 1)
    shown = run_predictions([many], tiny_model, fmt="json", engine="torch")
    assert shown.written is None and len(json.loads(shown.text)) == N + 1


def test_blocks_bound_the_work_in_flight(tiny_model, many, monkeypatch):
    """With blocks of 2 paths the results are the same, in the same order, as one block."""
    from postergenre.modeling.model import load_model

    m = load_model(tiny_model)
    one = list(P.predict_paths(m, [many]))
    monkeypatch.setattr(P, "BLOCK", 2)
    seen = []
    real = P.decoded_batches
    monkeypatch.setattr(P, "decoded_batches", lambda paths, *a, **k: seen.append(len(paths)) or real(paths, *a, **k))
    two = list(P.predict_paths(m, [many]))
    assert max(seen) == 2 and sum(seen) == N + 1
    assert [r["path"] for r in two] == [r["path"] for r in one]
    assert [r["predicted"] for r in two] == [r["predicted"] for r in one]


# --- in a terminal: progress bar, Ctrl-C ------------------------------------------------------

CLI = [sys.executable, "-m", "postergenre", "predict"]


def _stderr_on_a_terminal(args: list[str], timeout: float = 120) -> tuple[int, str]:
    """Run ``args`` with stderr on a pseudo-terminal (100 columns), as a user at a shell would."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks, deadline = [], time.time() + timeout
    try:
        while time.time() < deadline and select.select([master], [], [], deadline - time.time())[0]:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child has closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        return proc.wait(timeout=max(1.0, deadline - time.time())), b"".join(chunks).decode(errors="replace")
    finally:
        os.close(master)


def test_a_terminal_gets_a_progress_bar_unless_quiet(tiny_model, many, tmp_path):
    args = [*CLI, str(many), "--model", str(tiny_model), "--engine", "torch", "--output"]
    rc, shown = _stderr_on_a_terminal(args + [str(tmp_path / "a.csv")])
    assert rc == 0, shown
    assert f"{N + 1}/{N + 1}" in shown and "poster" in shown  # count and rate ...
    assert re.search(r"\d\d:\d\d<\d\d:\d\d", shown)  # ... elapsed < time left
    rc, shown = _stderr_on_a_terminal(args + [str(tmp_path / "b.csv"), "--quiet"])
    assert rc == 0 and f"wrote {tmp_path / 'b.csv'}" in shown and "/s" not in shown and f"/{N + 1}" not in shown


TOTAL = 1500  # at batch 1 the interrupted run would take well over 10 s; the resumed one batches


def test_ctrl_c_keeps_whole_rows_and_resume_finishes(tiny_model, many, tmp_path):
    posters = tmp_path / "posters"
    posters.mkdir()
    for i in range(TOTAL):  # enough that the run is still going when the signal comes, even on a busy machine
        (posters / f"p{i:03d}.jpg").write_bytes((many / f"p{i % N}.jpg").read_bytes())
    out = tmp_path / "out.csv"
    args = [*CLI, str(posters), "--model", str(tiny_model), "--engine", "torch", "--output", str(out)]
    rc, err, _ = interrupt_after_rows(args + ["--batch-size", "1"], out)
    assert rc == 130, err
    said = re.fullmatch(r"interrupted: (\d+) rows saved to (.+); rerun with --resume", err.strip().splitlines()[-1])
    assert said and said[2] == str(out), err
    text = out.read_text()
    rows = list(csv.DictReader(text.splitlines()))
    assert text.endswith("\n") and len(rows) == int(said[1]) and 3 <= len(rows) < TOTAL
    assert all(r["error"] == "" and len(r["predicted"].split("|")) == 3 and None not in r and None not in r.values() for r in rows)
    again = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{TOTAL - len(rows)} poster(s), {len(rows)} kept from before" in again.stderr
    assert sorted(r["path"] for r in rows_of(out)) == sorted(str(p) for p in posters.iterdir())
