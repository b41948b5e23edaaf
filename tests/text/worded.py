"""Posters with words on them: drawing them, a dataset of them (the tiny dataset's Ids and
labels, a word per genre drawn on each image) and the tiny model with a text branch fitted on it.
Fixtures for the text tests (imported by the test modules that use them)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFont

from conftest import run

WORDS = {"Action": "FIGHT", "Comedy": "FUNNY", "Drama": "TEARS", "Horror": "SCREAM"}
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")


def font(size: int):
    return ImageFont.truetype(str(FONT), size) if FONT.exists() else ImageFont.load_default(size=size)


def draw_words(img: Image.Image, words: list[str], size: int = 26) -> Image.Image:
    """``img`` upscaled to poster size with ``words`` in white, one a line (what OCR should read)."""
    img = img.convert("RGB").resize((200, 300))
    d = ImageDraw.Draw(img)
    for k, w in enumerate(words):
        d.text((12, 30 + 50 * k), w, fill=(255, 255, 255), font=font(size), stroke_width=2, stroke_fill=(0, 0, 0))
    return img


@pytest.fixture(scope="session")
def worded_data(tiny_data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("worded")
    shutil.copy(tiny_data / "train.csv", root / "train.csv")
    (root / "Images").mkdir()
    labels = pd.read_csv(tiny_data / "train.csv").drop_duplicates("Id").set_index("Id")
    for path in sorted((tiny_data / "Images").glob("*.jpg")):
        row = labels.loc[path.stem] if path.stem in labels.index else None
        words = [w for g, w in WORDS.items() if row is not None and row[g] == 1]
        draw_words(Image.open(path), words).save(root / "Images" / path.name, quality=92)
    return root


@pytest.fixture(scope="session")
def text_model(tiny_model, worded_data, cache_dir, tmp_path_factory) -> Path:
    model = tmp_path_factory.mktemp("text-models") / "tiny-text"
    shutil.copytree(tiny_model, model)
    res = run("train-text", "--model", model, "--data", worded_data, "--cache-dir", cache_dir, "--quiet")
    assert res.exit_code == 0, res.stdout + res.stderr
    return model
