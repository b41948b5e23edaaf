"""Shared fixtures and helpers: a tiny generated poster dataset in the study's layout, a tiny model
trained on it, a folder of posters, the ``postergenre`` command driven in-process, paths to ../shared."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("POSTERGENRE_SHARED", REPO.parent / "shared")) / "datasets"
MOVIE_POSTERS = SHARED / "movie-posters"
NEW_POSTERS = SHARED / "new-posters"

GENRES = ["Action", "Comedy", "Drama", "Horror", "N/A"]

# One intra-op thread: the tests use tiny batches, and when another process keeps the CPUs busy,
# spinning OpenMP threads make a CPU finetune step ~15x slower than a single thread does.
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("POSTERGENRE_TEST_THREADS", "1")))

# Feature caches and ONNX exports made by the tests stay out of the user's ~/.cache.
import tempfile  # noqa: E402

os.environ.setdefault("POSTERGENRE_CACHE", tempfile.mkdtemp(prefix="postergenre-test-cache-"))


def make_poster(rng: np.random.Generator, genres: set[str], size=(60, 90)) -> Image.Image:
    """A synthetic poster whose look depends on its genres, so a head can learn them."""
    w, h = size
    base = np.array([40, 40, 40], dtype=float)
    if "Action" in genres:
        base += [150, 0, 0]
    if "Comedy" in genres:
        base += [0, 150, 0]
    if "Horror" in genres:
        base -= [30, 30, 30]
    arr = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(img)
    if "Drama" in genres:
        for y in range(0, h, 10):
            draw.line([(0, y), (w, y)], fill=(0, 0, 255), width=3)
    return img


def write_dataset(root: Path, n: int = 48, seed: int = 0, quirks: bool = True) -> Path:
    """Write ``root/train.csv`` + ``root/Images``. With ``quirks``: a duplicate row, an
    N/A-only poster and an image without a label row, as in the real dataset."""
    rng = np.random.default_rng(seed)
    (root / "Images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        k = rng.integers(1, 3)
        genres = set(rng.choice(GENRES[:4], size=k, replace=False).tolist())
        pid = f"tt{i:07d}"
        make_poster(rng, genres).save(root / "Images" / f"{pid}.jpg", quality=90)
        rows.append((pid, genres))
    if quirks:
        rows.append(rows[0])  # identical duplicate
        make_poster(rng, set()).save(root / "Images" / "tt9999990.jpg")
        rows.append(("tt9999990", {"N/A"}))  # placeholder only
        make_poster(rng, {"Action"}).save(root / "Images" / "tt9999991.jpg")  # no label row
    lines = ["Id,Genre," + ",".join(GENRES)]
    for pid, genres in rows:
        label = "[" + ", ".join(f"'{g}'" for g in sorted(genres)) + "]"
        lines.append(f'{pid},"{label}",' + ",".join("1" if g in genres else "0" for g in GENRES))
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture(scope="session")
def tiny_model(tiny_data, cache_dir, tmp_path_factory) -> Path:
    """A frozen-mode model trained on the tiny dataset (EfficientNet-Lite0, offline weights)."""
    from postergenre.data.dataset import load_dataset
    from postergenre.training.train import Recipe, train

    ds, _ = load_dataset(tiny_data)
    out = tmp_path_factory.mktemp("models") / "tiny"
    train(ds, Recipe(backbone="efficientnet_lite0", epochs=30, val_fraction=0.25, seed=1, hidden=64, dropout=0.1),
          out, cache_dir=cache_dir, progress=False)
    return out


# ``python -c PREDICT_PROBE ARGS...``: ``postergenre predict ARGS --format json`` in a fresh process;
# its last stderr line says whether PyTorch or scikit-learn got imported, and the exit code.
PREDICT_PROBE = """
import json, sys
from postergenre.app.cli import main
sys.argv = ["postergenre", "predict", *sys.argv[1:], "--format", "json"]
try:
    main()
except SystemExit as exc:
    code = exc.code
print(json.dumps({"torch": "torch" in sys.modules, "sklearn": "sklearn" in sys.modules, "code": code}), file=sys.stderr)
"""


def needs_shared(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not present")


def run(*args: str):
    """``postergenre ARGS...`` in this process (typer's CliRunner): ``.exit_code``, ``.stdout``, ``.stderr``."""
    from typer.testing import CliRunner

    from postergenre.app.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def poster_dir(tmp_path_factory) -> Path:
    """Three good posters (one in a subfolder, one PNG) and a text file that is not an image."""
    root = tmp_path_factory.mktemp("posters")
    rng = np.random.default_rng(7)
    make_poster(rng, {"Action"}).save(root / "action.jpg")
    make_poster(rng, {"Comedy"}).save(root / "comedy.jpg")
    (root / "sub" / "deeper").mkdir(parents=True)
    make_poster(rng, {"Drama"}).save(root / "sub" / "deeper" / "drama.png")
    (root / "readme.txt").write_text("not a poster, and not an image extension: skipped by the walk")
    return root


LINE = re.compile(r"^(?P<path>.+) -> (?P<genres>[^()]+?)   \((?P<detail>.+)\)$")


def parse_table(output: str) -> dict[str, list[str]]:
    out = {}
    for line in output.strip().splitlines():
        m = LINE.match(line)
        assert m, f"unexpected line: {line!r}"
        out[Path(m["path"]).name] = m["genres"].split(" / ")
    return out


def interrupt_after_rows(args: list, out: Path, rows: int = 3) -> tuple[int, str, float]:
    """Run the command ``args`` writing ``out`` (a .csv), send SIGINT once ``out`` holds ``rows``
    rows, and return (exit code, stderr, seconds from the signal to the exit). A shell that starts
    a job in the background ignores SIGINT for it, and the child would inherit that; a user's
    terminal does not, so the child gets the default disposition."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while (not out.exists() or out.read_text().count("\n") <= rows) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    sent = time.perf_counter()
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err, time.perf_counter() - sent
