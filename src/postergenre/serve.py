"""The web page and HTTP API (FastAPI): drop a poster, see its genres and why.

- ``POST /api/predict``: multipart, field ``file`` (repeatable), optional ``top_k``, ``decision``.
  Answers a list with the JSON of ``postergenre predict --format json`` per image (path = the
  uploaded file name). A bad image gets its own error entry; if every image is bad the answer is
  413 (all too large) or 422 with ``{"error", "results"}``.
- ``POST /api/explain``: one ``file`` and a ``genre``: PNG of the Grad-CAM heatmap over the poster.
- ``GET /api/genres``, ``GET /api/health`` (status loading/ready/failed, model, version), ``/docs``.
- ``GET /``: the page; every asset is served from the package (no CDN).

The model loads in a background thread, so the server answers at once (503 until ready).
Inference runs in one worker thread off the event loop: requests queue instead of competing
for the cores. Request bodies are capped while they stream in, before any parsing.
"""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List

from fastapi import FastAPI, File, Form, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from . import __version__
from .images import DEFAULT_MAX_PIXELS, ImageLoadError, load_rgb

WEB_DIR = Path(__file__).parent / "web"
DEFAULT_MAX_UPLOAD_MB = 10.0
MAX_FILES = 32  # per request


class BodyLimit:
    """ASGI middleware: 413 as soon as a request body passes ``max_bytes`` (declared or streamed)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _send_json(send, 413, {"error": f"request body is {int(declared):,} bytes, above the cap of {self.max_bytes:,}"})
        seen, over, replaced = 0, False, False

        async def counted_receive():
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True  # stop reading: the app sees a disconnect and answers an error...
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal replaced
            if not over:
                return await send(message)
            if not replaced:  # ...which is replaced by the 413 the client should get
                replaced = True
                await _send_json(send, 413, {"error": f"request body is above the cap of {self.max_bytes:,} bytes"})

        await self.app(scope, counted_receive, guarded_send)


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


class ModelHolder:
    """Loads the model in the background; ``scorer`` answers predictions, ``torch_model`` explains."""

    def __init__(self, model: str | None, engine: str):
        self.model_arg, self.engine = model, engine
        self.status, self.error = "loading", None
        self.scorer = self._torch_model = None
        self.ready = threading.Event()
        self._lock = threading.Lock()

    def load(self) -> None:
        from .inference import load_scorer

        try:
            self.scorer = load_scorer(self.model_arg, self.engine)
            self.status = "ready"
        except Exception as exc:  # noqa: BLE001 - reported by /api/health, the server stays up
            self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            self.ready.set()

    @property
    def explainable(self) -> bool:
        from .inference import is_onnx_path

        return not is_onnx_path(self.model_arg)

    def torch_model(self):
        """The PyTorch model (Grad-CAM needs gradients): the scorer itself, or loaded on first use."""
        from .model import PosterGenreModel, load_model

        with self._lock:
            if self._torch_model is None:
                self._torch_model = self.scorer if isinstance(self.scorer, PosterGenreModel) else load_model(self.model_arg)
            return self._torch_model


def create_app(model: str | None = "default", engine: str = "auto", max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               max_pixels: int = DEFAULT_MAX_PIXELS, background_load: bool = True):
    """The FastAPI application. ``background_load=False`` loads the model before returning."""
    from .predict import result

    max_bytes = int(max_upload_mb * 1024 * 1024)
    holder = ModelHolder(model, engine)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="postergenre-infer")
    if background_load:
        threading.Thread(target=holder.load, daemon=True, name="postergenre-load").start()
    else:
        holder.load()

    app = FastAPI(title="postergenre", version=__version__,
                  description="Predict a movie's genres from its poster (multi-label).")
    app.state.holder = holder
    app.add_middleware(BodyLimit, max_bytes=max_bytes * MAX_FILES + 64 * 1024)

    def fail(status: int, message: str, **extra) -> JSONResponse:
        return JSONResponse({"error": message, **extra}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):  # FastAPI's default is 422 too; keep one error shape
        return fail(422, "invalid request: " + "; ".join(f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg')}" for e in exc.errors()))

    def not_ready() -> JSONResponse | None:
        if holder.status == "loading":
            return fail(503, "the model is still loading; try again in a few seconds")
        if holder.status == "failed":
            return fail(503, f"the model could not be loaded: {holder.error}")
        return None

    async def read_upload(f: UploadFile) -> tuple[str, bytes | None, str | None]:
        name = f.filename or "upload"
        if f.size is not None and f.size > max_bytes:
            return name, None, f"{name}: file is {f.size:,} bytes, above the cap of {max_bytes:,}"
        data = await f.read(max_bytes + 1)
        if len(data) > max_bytes:
            return name, None, f"{name}: file is above the cap of {max_bytes:,} bytes"
        return name, data, None

    def score(items: list[tuple[str, bytes | None, str | None]], top_k: int, decision: str) -> list[dict]:
        """Decode, preprocess and score in the inference thread; one result per upload, in order."""
        import torch

        m = holder.scorer
        rule = m.decision_rule("thresholds" if decision == "thresholds" else "top_k", top_k)
        pp = m.preprocess
        out: list[dict | None] = [None] * len(items)
        good, tensors = [], []
        for i, (name, data, err) in enumerate(items):
            if err is None:
                try:
                    # the same decode (JPEG draft mode) as `postergenre predict`, so the scores match it exactly
                    tensors.append(pp.load(data, name=name, max_pixels=max_pixels))
                    good.append(i)
                    continue
                except ImageLoadError as exc:
                    err = str(exc)
            out[i] = result(name, None, None, m.genres, err)
        if good:
            scores = m.predict_proba_tensor(torch.stack(tensors))
            for i, s, mask in zip(good, scores, rule.apply(scores)):
                out[i] = result(items[i][0], s, mask, m.genres)
        return out

    @app.get("/api/health")
    async def health():
        """Whether the model is loaded; its name, the engine, whether its scores are calibrated
        probabilities, and the package version."""
        body = {"status": holder.status, "version": __version__, "model": None, "engine": None}
        if holder.status == "ready":
            body.update(model=holder.scorer.name, engine=holder.scorer.engine, genres=len(holder.scorer.genres),
                        calibrated=holder.scorer.calibrated)
        if holder.error:
            body["error"] = holder.error
        return JSONResponse(body, status_code=200 if holder.status == "ready" else 503)

    @app.get("/api/genres")
    async def genres():
        """The genres the model scores, and its default decision rule."""
        if (r := not_ready()) is not None:
            return r
        d = holder.scorer.decision
        return {"genres": holder.scorer.genres, "decision": {"kind": d.kind, "k": d.k}}

    @app.post("/api/predict")
    async def predict(
        file: List[UploadFile] = File(..., description="Poster image(s); the type is judged by content."),
        top_k: int = Form(3, ge=1, le=25, description="Genres per poster (or the most, under thresholds)."),
        decision: str = Form("top_k", description="top_k or thresholds"),
    ):
        """Genres of each uploaded poster, as `postergenre predict --format json`."""
        if (r := not_ready()) is not None:
            return r
        if decision not in ("top_k", "thresholds"):
            return fail(422, f"unknown decision {decision!r}: choose top_k or thresholds")
        if len(file) > MAX_FILES:
            return fail(413, f"{len(file)} files in one request, above the cap of {MAX_FILES}")
        items = [await read_upload(f) for f in file]
        results = await asyncio.get_running_loop().run_in_executor(pool, score, items, top_k, decision)
        errors = [r for r in results if r["error"]]
        if len(errors) == len(results):
            too_large = all(it[2] is not None for it in items)
            return fail(413 if too_large else 422, errors[0]["error"] if len(errors) == 1 else f"none of the {len(errors)} files could be read", results=results)
        return results

    @app.post("/api/explain", responses={200: {"content": {"image/png": {}}}})
    async def explain(file: UploadFile = File(...), genre: str = Form(...)):
        """PNG: the poster with a Grad-CAM heatmap of what drove ``genre``'s score (header X-Score)."""
        if (r := not_ready()) is not None:
            return r
        if not holder.explainable:
            return fail(422, "explanations need a PyTorch model directory, not an .onnx file")
        if genre not in holder.scorer.genres:
            return fail(422, f"unknown genre {genre!r}")
        name, data, err = await read_upload(file)
        if err:
            return fail(413, err)
        from .explain import explain_png

        def run():
            return explain_png(holder.torch_model(), load_rgb(data, name=name, max_pixels=max_pixels), genre)

        try:
            png, s = await asyncio.get_running_loop().run_in_executor(pool, run)
        except ValueError as exc:  # an unreadable image, or a backbone without convolutions
            return fail(422, str(exc))
        return Response(png, media_type="image/png", headers={"X-Score": f"{s:.6f}", "Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(WEB_DIR / "index.html")

    return app


def run_server(host: str = "127.0.0.1", port: int = 8000, **kwargs) -> None:
    import uvicorn

    uvicorn.run(create_app(**kwargs), host=host, port=port, log_level="info",
                limit_concurrency=256, timeout_keep_alive=5, h11_max_incomplete_event_size=64 * 1024)
