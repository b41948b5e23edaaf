"""HTTP API: success, several files, every error path answered 4xx with a JSON error, never 5xx."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import make_poster
from postergenre.modeling.model import load_model
from postergenre.inference.onnx_engine import sample_posters
from postergenre.inference.predict import predict_paths
from postergenre.app.serve import create_app


def jpeg(size=(60, 90), seed=0) -> bytes:
    buf = io.BytesIO()
    make_poster(np.random.default_rng(seed), {"Action"}, size).save(buf, format="JPEG")
    return buf.getvalue()


def png(size=(60, 90)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(tiny_model):
    with TestClient(create_app(str(tiny_model), engine="torch", max_upload_mb=0.05, max_pixels=200_000,
                               background_load=False), raise_server_exceptions=False) as c:
        yield c


def post(client, *files, **form):
    return client.post("/api/predict", files=[("file", f) for f in files], data=form)


def test_health_and_genres(client, tiny_model):
    h = client.get("/api/health").json()
    assert h["status"] == "ready" and h["model"] and h["version"] and h["engine"] == "torch"
    g = client.get("/api/genres").json()
    assert g["genres"] == load_model(tiny_model).genres and g["decision"]["k"] == 3
    # what the page batches and checks by: 0.05 MB = 50,000 bytes (decimal megabytes)
    assert h["limits"] == {"files_per_request": 32, "bytes_per_file": 50_000, "pixels_per_image": 200_000,
                           "top_k_max": len(g["genres"])}


def test_predict_answers_what_the_cli_answers(tiny_model, tmp_path):
    path = tmp_path / "poster.jpg"
    # Large enough for JPEG draft decoding to kick in: the API must decode exactly as the CLI does.
    Image.open(sample_posters()[2]).convert("RGB").resize((600, 900)).save(path, quality=90)
    with TestClient(create_app(str(tiny_model), engine="torch", background_load=False)) as default_caps:
        res = post(default_caps, ("poster.jpg", path.read_bytes(), "image/jpeg"))
    assert res.status_code == 200, res.text
    [got] = res.json()
    [want] = list(predict_paths(load_model(tiny_model), [path]))
    assert got["path"] == "poster.jpg" and got["error"] is None
    assert got["predicted"] == want["predicted"]
    assert [g["genre"] for g in got["genres"]] == [g["genre"] for g in want["genres"]]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(got["genres"], want["genres"])) < 1e-5


def test_multi_file_with_a_bad_one(client):
    res = post(client, ("a.jpg", jpeg(seed=1), "image/jpeg"), ("notes.jpg", b"just text", "image/jpeg"),
               ("b.png", png(), "image/png"), top_k="2")
    assert res.status_code == 200
    a, bad, b = res.json()
    assert len(a["predicted"]) == 2 and len(b["predicted"]) == 2
    assert bad["path"] == "notes.jpg" and "not an image" in bad["error"] and bad["predicted"] == []


def test_type_is_judged_by_content_not_name(client):
    res = post(client, ("poster.txt", png(), "text/plain"))
    assert res.status_code == 200 and res.json()[0]["error"] is None
    res = post(client, ("page.png", b"<!doctype html><html><body>hi</body></html>", "image/png"))
    assert res.status_code == 422 and "not an image" in res.json()["error"]


def test_oversized_file_is_413(client):
    big = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG")  # ~480 KB, above the 0.05 MB cap of this app
    res = post(client, ("big.png", buf.getvalue(), "image/png"))
    size = len(buf.getvalue())
    assert res.status_code == 413 and res.json()["error"] == f"big.png: {size / 1e6:.1f} MB, above the 0.05 MB cap"
    res = post(client, ("big.png", buf.getvalue(), "image/png"), ("ok.jpg", jpeg(), "image/jpeg"))
    assert res.status_code == 200 and "above the 0.05 MB cap" in res.json()[0]["error"] and res.json()[1]["error"] is None


def test_sizes_are_written_in_megabytes():
    from postergenre.app.limits import over_cap

    assert over_cap(20_000_000, 10_000_000) == "20.0 MB, above the 10 MB cap"
    assert over_cap(10_000_001, 10_000_000) == "10.000001 MB, above the 10 MB cap"  # never "10.0 above 10"
    assert over_cap(10_040_000, 10_000_000) == "10.04 MB, above the 10 MB cap"


def test_too_many_files_in_one_request_is_413(client):
    res = post(client, *[(f"p{i}.jpg", b"x", "image/jpeg") for i in range(33)])
    assert res.status_code == 413 and "above the cap of 32" in res.json()["error"]


def test_too_many_pixels_is_422(client):
    res = post(client, ("huge.png", png((1000, 1000)), "image/png"))  # 1e6 px > 200k cap; tiny file
    assert res.status_code == 422 and "pixels" in res.json()["error"]


def test_body_over_the_request_cap_is_413_even_without_content_length(client):
    def chunks():  # a well-formed start, then a file part that never ends
        yield b'--zzz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        for _ in range(100):
            yield b"x" * 65536
    res = client.post("/api/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=zzz"})
    assert res.status_code == 413 and "MB cap" in res.json()["error"]


@pytest.mark.parametrize("body,ctype", [
    (b"--zzz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\r\nabc", "multipart/form-data; boundary=zzz"),
    (b"garbage", "multipart/form-data"),
    (b"{\"file\": 1}", "application/json"),
    (b"", "multipart/form-data; boundary=zzz"),
])
def test_malformed_bodies_are_4xx(client, body, ctype):
    res = client.post("/api/predict", content=body, headers={"content-type": ctype})
    assert 400 <= res.status_code < 500, (res.status_code, res.text)
    assert "error" in res.json() or "detail" in res.json()


def test_bad_options_are_422(client, tiny_model):
    assert post(client, ("a.jpg", jpeg(), "image/jpeg"), decision="magic").status_code == 422
    n = len(load_model(tiny_model).genres)
    for k in ("0", str(n + 1), "30"):  # 1..the model's genre count, not a fixed 25
        res = post(client, ("a.jpg", jpeg(), "image/jpeg"), top_k=k)
        assert res.status_code == 422 and res.json() == {"error": f"top_k is {k}: it must be from 1 to {n}, the number of genres the model scores"}
    assert post(client, ("a.jpg", jpeg(), "image/jpeg"), top_k=str(n)).status_code == 200
    assert client.post("/api/predict", data={"top_k": "3"}).status_code == 422  # no file at all


def test_thresholds_decision(client):
    res = post(client, ("a.jpg", jpeg(), "image/jpeg"), decision="thresholds", top_k="2")
    assert res.status_code == 200 and len(res.json()[0]["predicted"]) <= 2


def test_explain_returns_a_heatmap_png(client, tiny_model):
    genre = load_model(tiny_model).genres[0]
    res = client.post("/api/explain", files={"file": ("a.jpg", jpeg(), "image/jpeg")}, data={"genre": genre})
    assert res.status_code == 200 and res.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(res.content))
    assert img.size == (60, 90)  # at the poster's own size
    assert 0.0 <= float(res.headers["x-score"]) <= 1.0
    res = client.post("/api/explain", files={"file": ("a.jpg", jpeg(), "image/jpeg")}, data={"genre": genre.upper()})
    assert res.status_code == 200  # any case
    res = client.post("/api/explain", files={"file": ("a.jpg", jpeg(), "image/jpeg")}, data={"genre": "Opera"})
    assert res.status_code == 422 and "unknown genre" in res.json()["error"] and genre in res.json()["error"]
    res = client.post("/api/explain", files={"file": ("a.jpg", b"text", "image/jpeg")}, data={"genre": genre})
    assert res.status_code == 422 and "not an image" in res.json()["error"]


def test_while_loading_everything_says_503(client):
    holder = client.app.state.holder
    holder.status = "loading"
    try:
        assert client.get("/api/health").status_code == 503
        res = post(client, ("a.jpg", jpeg(), "image/jpeg"))
        assert res.status_code == 503 and "still loading" in res.json()["error"]
    finally:
        holder.status = "ready"


def test_page_and_docs_are_served_without_external_resources(client):
    page = client.get("/")
    assert page.status_code == 200 and "postergenre" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    assert "http://" not in page.text and "https://" not in page.text
    docs = client.get("/docs")
    assert docs.status_code == 200 and "http://" not in docs.text and "https://" not in docs.text
    for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css", "/favicon.ico", "/favicon.svg"):
        assert client.get(asset).status_code == 200, asset
    assert client.get("/redoc").status_code == 404  # ReDoc would load from a CDN
    assert "/api/predict" in client.get("/openapi.json").json()["paths"]
    samples = client.get("/api/samples").json()["samples"]
    assert [s["name"] for s in samples] == [p.name for p in sample_posters()]
    assert all(client.get(s["url"]).content == p.read_bytes() for s, p in zip(samples, sample_posters()))


@pytest.mark.parametrize("suffix,fmt", [(".png", "PNG"), (".jpg", "JPEG"), (".JPEG", "JPEG"), (".webp", "WEBP")])
def test_save_explanation_encodes_as_the_suffix_says(tiny_model, tmp_path, suffix, fmt):
    from postergenre.app.explain import save_explanation

    model = load_model(tiny_model)
    out = tmp_path / f"x{suffix}"
    genre, score = save_explanation(model, Image.open(io.BytesIO(jpeg())), model.genres[0].lower(), out)
    img = Image.open(out)
    assert img.format == fmt and 0.0 <= score <= 1.0 and genre == model.genres[0]
    assert img.width >= 360 and img.height > img.width * 90 / 60  # enlarged, with the caption strip under it


def test_save_explanation_refuses_other_suffixes_and_genres(tiny_model, tmp_path):
    from postergenre.errors import UsageError
    from postergenre.app.explain import save_explanation

    model = load_model(tiny_model)
    with pytest.raises(UsageError, match=r"x\.gif: .*\.png, \.jpg, \.jpeg or \.webp"):
        save_explanation(model, Image.new("RGB", (60, 90)), model.genres[0], tmp_path / "x.gif")
    with pytest.raises(UsageError, match="unknown genre 'Opera'; choose one of: " + model.genres[0]):
        save_explanation(model, Image.new("RGB", (60, 90)), "Opera", tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_onnx_file_model_serves_predictions(tmp_path, tiny_model):
    from postergenre.inference.onnx_engine import export_onnx

    out = tmp_path / "tiny.onnx"
    export_onnx(load_model(tiny_model), out, check_images=sample_posters())
    with TestClient(create_app(str(out), background_load=False)) as c:
        assert c.get("/api/health").json()["engine"] == "onnx"
        res = c.post("/api/predict", files=[("file", ("a.jpg", jpeg(), "image/jpeg"))])
        assert res.status_code == 200 and res.json()[0]["predicted"]
        res = c.post("/api/explain", files={"file": ("a.jpg", jpeg(), "image/jpeg")}, data={"genre": "Action"})
        assert res.status_code == 422 and "PyTorch model" in res.json()["error"]


def test_max_pixels_above_pils_own_limit_is_honoured(tiny_model):
    # `serve --max-pixels 150000000` took a 144-megapixel poster for a bomb: PIL's own limit (89 M)
    # came first. 92 megapixels is past it too, and quicker to make.
    assert 9600 * 9600 > Image.MAX_IMAGE_PIXELS
    buf = io.BytesIO()
    Image.new("L", (9600, 9600), 90).save(buf, format="PNG")  # solid: ~100 KB on the wire
    with TestClient(create_app(str(tiny_model), engine="torch", max_upload_mb=5, max_pixels=100_000_000,
                               background_load=False)) as c:
        res = post(c, ("big.png", buf.getvalue(), "image/png"))
        assert res.status_code == 200 and res.json()[0]["error"] is None, res.text
        res = c.post("/api/explain", files={"file": ("big.png", buf.getvalue(), "image/png")}, data={"genre": "action"})
        assert res.status_code == 200, res.text
        assert Image.open(io.BytesIO(res.content)).size == (2048, 2048)  # the overlay is bounded, not 92 megapixels
        huge = io.BytesIO()
        Image.new("1", (10100, 10100), 1).save(huge, format="PNG")  # past the server's own cap
        res = post(c, ("huge.png", huge.getvalue(), "image/png"))
        assert res.status_code == 422 and "pixels" in res.json()["error"]


def test_the_heatmap_path_is_warmed_after_a_background_load(tiny_model):
    app = create_app(str(tiny_model), engine="torch")
    holder = app.state.holder
    assert holder.warmed.wait(120) and holder.status == "ready"
    assert holder._torch_model is not None and "pytorch_grad_cam" in sys.modules  # before anyone asked for a heatmap
    with TestClient(app) as c:
        res = c.post("/api/explain", files={"file": ("a.jpg", jpeg(), "image/jpeg")}, data={"genre": "Action"})
        assert res.status_code == 200
