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

The routes (:data:`router`) are plain functions over the :class:`ServerState` that
:func:`create_app` puts in ``app.state.server``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import List

from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from . import __version__
from .errors import PosterGenreError
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


Upload = tuple[str, bytes | None, str | None]  # (file name, its bytes or None, the error that refused them)


@dataclass
class ServerState:
    """What the routes share: the model, the one inference thread, and the caps."""

    holder: ModelHolder
    pool: ThreadPoolExecutor
    max_bytes: int  # per uploaded file
    max_pixels: int  # per decoded image

    async def run(self, fn, *args):
        """``fn(*args)`` in the inference thread, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)


def server_state(request: Request) -> ServerState:
    """The routes' dependency: the state of the app serving the request."""
    return request.app.state.server


def error(status: int, message: str, **extra) -> JSONResponse:
    """Every error the API answers has this shape: ``{"error": message, ...}``."""
    return JSONResponse({"error": message, **extra}, status_code=status)


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI answers a request its parameters do not fit with 422 too; this keeps one error shape."""
    return error(422, "invalid request: " + "; ".join(f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg')}" for e in exc.errors()))


def not_ready(holder: ModelHolder) -> JSONResponse | None:
    """503 while the model loads or when it failed to; ``None`` once it is ready."""
    if holder.status == "loading":
        return error(503, "the model is still loading; try again in a few seconds")
    if holder.status == "failed":
        return error(503, f"the model could not be loaded: {holder.error}")
    return None


async def read_upload(f: UploadFile, max_bytes: int) -> Upload:
    """The upload's name and bytes, or the error saying it is above ``max_bytes`` (never read past it)."""
    name = f.filename or "upload"
    if f.size is not None and f.size > max_bytes:
        return name, None, f"{name}: file is {f.size:,} bytes, above the cap of {max_bytes:,}"
    data = await f.read(max_bytes + 1)
    if len(data) > max_bytes:
        return name, None, f"{name}: file is above the cap of {max_bytes:,} bytes"
    return name, data, None


def score(state: ServerState, items: list[Upload], top_k: int, decision: str) -> list[dict]:
    """Decode, preprocess and score (in the inference thread); one result per upload, in order."""
    import torch

    from .formats import result

    m = state.holder.scorer
    rule = m.decision_rule(decision, top_k)
    out: list[dict | None] = [None] * len(items)
    good, tensors = [], []
    for i, (name, data, err) in enumerate(items):
        if err is None:
            try:
                # the same decode (JPEG draft mode) as `postergenre predict`, so the scores match it exactly
                tensors.append(m.preprocess.load(data, name=name, max_pixels=state.max_pixels))
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


def heatmap(state: ServerState, name: str, data: bytes, genre: str) -> tuple[bytes, float]:
    """The Grad-CAM PNG of an upload and the genre's score (in the inference thread)."""
    from .explain import explain_png

    return explain_png(state.holder.torch_model(), load_rgb(data, name=name, max_pixels=state.max_pixels), genre)


router = APIRouter()


@router.get("/api/health")
async def health(state: ServerState = Depends(server_state)):
    """Whether the model is loaded; its name, the engine, whether its scores are calibrated
    probabilities, and the package version."""
    holder = state.holder
    body = {"status": holder.status, "version": __version__, "model": None, "engine": None}
    if holder.status == "ready":
        body.update(model=holder.scorer.name, engine=holder.scorer.engine, genres=len(holder.scorer.genres),
                    calibrated=holder.scorer.calibrated)
    if holder.error:
        body["error"] = holder.error
    return JSONResponse(body, status_code=200 if holder.status == "ready" else 503)


@router.get("/api/genres")
async def genres(state: ServerState = Depends(server_state)):
    """The genres the model scores, and its default decision rule."""
    if (r := not_ready(state.holder)) is not None:
        return r
    d = state.holder.scorer.decision
    return {"genres": state.holder.scorer.genres, "decision": {"kind": d.kind, "k": d.k}}


@router.post("/api/predict")
async def predict(
    file: List[UploadFile] = File(..., description="Poster image(s); the type is judged by content."),
    top_k: int = Form(3, ge=1, le=25, description="Genres per poster (or the most, under thresholds)."),
    decision: str = Form("top_k", description="top_k or thresholds"),
    state: ServerState = Depends(server_state),
):
    """Genres of each uploaded poster, as `postergenre predict --format json`."""
    if (r := not_ready(state.holder)) is not None:
        return r
    if decision not in ("top_k", "thresholds"):
        return error(422, f"unknown decision {decision!r}: choose top_k or thresholds")
    if len(file) > MAX_FILES:
        return error(413, f"{len(file)} files in one request, above the cap of {MAX_FILES}")
    items = [await read_upload(f, state.max_bytes) for f in file]
    results = await state.run(score, state, items, top_k, decision)
    errors = [r["error"] for r in results if r["error"]]
    if len(errors) < len(results):
        return results
    too_large = all(err is not None for _, _, err in items)
    return error(413 if too_large else 422, errors[0] if len(errors) == 1 else f"none of the {len(errors)} files could be read",
                 results=results)


@router.post("/api/explain", responses={200: {"content": {"image/png": {}}}})
async def explain(file: UploadFile = File(...), genre: str = Form(...), state: ServerState = Depends(server_state)):
    """PNG: the poster with a Grad-CAM heatmap of what drove ``genre``'s score (header X-Score)."""
    if (r := not_ready(state.holder)) is not None:
        return r
    if not state.holder.explainable:
        return error(422, "explanations need a PyTorch model directory, not an .onnx file")
    if genre not in state.holder.scorer.genres:
        return error(422, f"unknown genre {genre!r}")
    name, data, err = await read_upload(file, state.max_bytes)
    if err:
        return error(413, err)
    try:
        png, s = await state.run(heatmap, state, name, data, genre)
    except PosterGenreError as exc:  # an unreadable image, or a backbone without convolutions
        return error(422, str(exc))
    return Response(png, media_type="image/png", headers={"X-Score": f"{s:.6f}", "Cache-Control": "no-store"})


@router.get("/", include_in_schema=False)
async def page():
    return FileResponse(WEB_DIR / "index.html")


def create_app(model: str | None = "default", engine: str = "auto", max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               max_pixels: int = DEFAULT_MAX_PIXELS, background_load: bool = True):
    """The FastAPI application. ``background_load=False`` loads the model before returning."""
    max_bytes = int(max_upload_mb * 1024 * 1024)
    state = ServerState(ModelHolder(model, engine), ThreadPoolExecutor(max_workers=1, thread_name_prefix="postergenre-infer"),
                        max_bytes, max_pixels)
    if background_load:
        threading.Thread(target=state.holder.load, daemon=True, name="postergenre-load").start()
    else:
        state.holder.load()
    app = FastAPI(title="postergenre", version=__version__, exception_handlers={RequestValidationError: invalid_request},
                  description="Predict a movie's genres from its poster (multi-label).")
    app.state.server, app.state.holder = state, state.holder
    app.add_middleware(BodyLimit, max_bytes=max_bytes * MAX_FILES + 64 * 1024)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


def run_server(host: str = "127.0.0.1", port: int = 8000, **kwargs) -> None:
    import uvicorn

    uvicorn.run(create_app(**kwargs), host=host, port=port, log_level="info",
                limit_concurrency=256, timeout_keep_alive=5, h11_max_incomplete_event_size=64 * 1024)
