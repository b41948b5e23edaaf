"""Genre names for explanations (issue 27): any case, ``-``, ``_`` or no separator, one lookup
for ``postergenre explain`` and ``/api/explain``; and both report the same (image) score."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from conftest import run
from postergenre.app.explain import resolve_genre
from postergenre.app.serve import create_app
from postergenre.errors import UnknownName
from postergenre.inference.onnx_scorer import sample_posters
from postergenre.modeling.artifact import read_config, resolve_model_path

GENRES = read_config(resolve_model_path("default")).genres  # the built-in model's 24, Sci-Fi and Reality-TV among them
SCIFI = next(p for p in sample_posters() if p.name == "scifi.jpg")


@pytest.mark.parametrize("spelling", ["Sci-Fi", "sci_fi", "scifi", "SCI-FI", "Sci Fi", " sci-fi "])
def test_every_spelling_finds_the_genre(spelling):
    assert resolve_genre(GENRES, spelling) == "Sci-Fi"


def test_near_names_stay_apart_and_unknown_ones_list_the_genres():
    assert resolve_genre(GENRES, "reality_tv") == "Reality-TV"
    assert resolve_genre(GENRES, "MUSIC") == "Music" and resolve_genre(GENRES, "musical") == "Musical"
    with pytest.raises(UnknownName) as err:
        resolve_genre(GENRES, "space opera")
    assert str(err.value) == "unknown genre 'space opera'; choose one of: " + ", ".join(GENRES)


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app("default", engine="torch", background_load=False)) as c:
        yield c


def test_cli_and_api_take_the_same_spellings_and_give_the_same_score(client, tmp_path):
    res = run("explain", SCIFI, "--genre", "sci_fi", "--out", tmp_path / "heat.png")
    assert res.exit_code == 0, res.output
    assert "(Sci-Fi score " in res.stdout  # the model's spelling, whatever was typed
    cli_score = float(res.stdout.split(" score ")[1].rstrip(")\n"))  # "wrote FILE  (Sci-Fi score 0.123)"
    scores = []
    for spelling in ("scifi", "sci_fi", "SCI-FI"):
        r = client.post("/api/explain", files={"file": ("scifi.jpg", SCIFI.read_bytes(), "image/jpeg")}, data={"genre": spelling})
        assert r.status_code == 200, r.text
        scores.append(float(r.headers["x-score"]))
    # the image's score everywhere explain reports one: the CLI's print and legend, the API's X-Score
    assert max(scores) - min(scores) < 1e-6 and abs(scores[0] - cli_score) < 6e-4
    r = client.post("/api/explain", files={"file": ("scifi.jpg", SCIFI.read_bytes(), "image/jpeg")}, data={"genre": "opera"})
    assert r.status_code == 422 and r.json()["error"].endswith("choose one of: " + ", ".join(GENRES))
