"""The web page and HTTP API (FastAPI): drop a poster, see its genres and why.

- ``POST /api/predict``: multipart, field ``file`` (repeatable, at most :data:`MAX_FILES` = 32 per
  request; the page sends larger selections in batches of that size), optional ``top_k``
  (1..the model's genre count), ``decision``. Answers a list with the JSON of
  ``postergenre predict --format json`` per image (path = the uploaded file name). A bad image
  gets its own error entry; if every image is bad the answer is 413 (all too large) or 422 with
  ``{"error", "results"}``; a bad option is 422 with ``{"error"}`` alone.
- ``POST /api/explain``: one ``file`` and a ``genre`` (any case, ``-``, ``_`` or no separator:
  ``scifi`` is ``Sci-Fi``): PNG of the Grad-CAM heatmap over the poster, at its size (at most 2048
  pixels a side; header ``X-Score``: the image's score for the genre, which the heatmap explains).
- ``GET /api/health``: status loading/ready/failed, model, engine, version, and ``limits``:
  ``files_per_request`` (32), ``bytes_per_file`` (``--max-upload-mb``, decimal megabytes:
  10 MB = 10,000,000 bytes), ``pixels_per_image`` and ``top_k_max`` (the genre count, once loaded).
- ``GET /api/genres``; ``GET /api/samples``: the example posters shipped with the package
  (served under ``/samples/``).
- ``GET /``: the page; ``/docs``: Swagger UI. Every asset, Swagger UI's included (the
  ``swagger-ui-bundle-v2`` package), is served by the app: nothing comes from a CDN.

The model loads in a background thread, so the server answers at once (503 until ready); then
that thread loads PyTorch, Grad-CAM and the PyTorch model, so the first heatmap a user asks for
does not wait for them (~4 s on 2 cores).
Uploads are decoded by a small thread pool; the decoded posters of all waiting requests are
scored together by one inference thread (:mod:`postergenre.app.batcher`), so concurrent
clients share forward passes instead of competing for the cores. OCR and Grad-CAM run in one
more thread. Nothing on the predict path imports PyTorch with the ONNX engine. Request bodies
are capped while they stream in, before any parsing.

The routes (:data:`router`) are plain functions over the :class:`ServerState` that
:func:`create_app` puts in ``app.state.server``.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import List

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..data.images import DEFAULT_MAX_PIXELS, ImageLoadError, load_rgb
from ..errors import PosterGenreError, UsageError
from ..inference.onnx_scorer import SAMPLES_DIR, sample_posters
from .batcher import Batcher
from .limits import MB, BodyLimit, over_cap

WEB_DIR = Path(__file__).parent / "web"
DEFAULT_MAX_UPLOAD_MB = 10.0
MAX_FILES = 32  # per request: bounds one request's memory and the inference thread's batch
DOCS_ASSETS = "/docs-assets"  # where the swagger-ui-bundle-v2 package's files are served


class ModelHolder:
    """Loads the model in the background; ``scorer`` answers predictions, ``torch_model`` explains."""

    def __init__(self, model: str | None, engine: str):
        self.model_arg, self.engine = model, engine
        self.status, self.error = "loading", None
        self.scorer = self._torch_model = self.text = self.batcher = None
        self.ready, self.warmed = threading.Event(), threading.Event()
        self._lock = threading.Lock()

    def load(self) -> None:
        from ..inference.scorer import load_scorer, load_text_reader

        try:
            self.scorer = load_scorer(self.model_arg, self.engine)
            scorer = self.scorer
            self.batcher = Batcher(lambda pixels: scorer.predict_proba_tensor(scorer.preprocess.normalize_pixels(pixels)))
            try:
                self.text = load_text_reader(self.model_arg)
            except UsageError:  # an image-only model (or an .onnx file): the page hides the switch
                self.text = None
            self.status = "ready"
        except Exception as exc:  # noqa: BLE001 - reported by /api/health, the server stays up
            self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            self.ready.set()

    def warm(self) -> None:
        """Load what the first /api/explain would wait for: PyTorch, grad-cam, matplotlib's colour
        maps and the PyTorch model (~4 s on 2 cores). Not a Grad-CAM pass: that would take ~0.1 s
        more off the first heatmap for ~250 MB more memory. Errors are left for a real request."""
        try:
            if self.status == "ready" and self.explainable:
                import pytorch_grad_cam  # noqa: F401
                from matplotlib import colormaps  # noqa: F401

                self.torch_model()
        except Exception:  # noqa: BLE001
            pass
        finally:
            self.warmed.set()

    @property
    def explainable(self) -> bool:
        from ..inference.scorer import is_onnx_path

        return not is_onnx_path(self.model_arg)

    def torch_model(self):
        """The PyTorch model (Grad-CAM needs gradients): the scorer itself, or loaded on first use."""
        from ..modeling.model import PosterGenreModel, load_model

        with self._lock:
            if self._torch_model is None:
                self._torch_model = self.scorer if isinstance(self.scorer, PosterGenreModel) else load_model(self.model_arg)
            return self._torch_model


Upload = tuple[str, bytes | None, str | None]  # (file name, its bytes or None, the error that refused them)


@dataclass
class ServerState:
    """What the routes share: the model, the decoding and slow-work threads, and the caps."""

    holder: ModelHolder
    pool: ThreadPoolExecutor  # OCR and Grad-CAM, one at a time
    decoders: ThreadPoolExecutor  # uploads to pixels (Pillow releases the GIL)
    max_bytes: int  # per uploaded file
    max_pixels: int  # per decoded image

    async def run(self, fn, *args):
        """``fn(*args)`` in the slow-work thread, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def decode(self, item: Upload):
        """The upload as the model's resized pixels ``(H, W, 3)`` uint8, or ``(None, error)``."""
        name, data, err = item
        if err is not None:
            return None, err
        return await asyncio.get_running_loop().run_in_executor(self.decoders, _pixels, self.holder.scorer.preprocess, name,
                                                                data, self.max_pixels)


def _pixels(preprocess, name: str, data: bytes, max_pixels: int):
    try:  # the same decode (JPEG draft mode) as `postergenre predict`, so the scores match it exactly
        return preprocess.load_pixels(data, name=name, max_pixels=max_pixels), None
    except ImageLoadError as exc:
        return None, str(exc)


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
        return name, None, f"{name}: {over_cap(f.size, max_bytes)}"
    data = await f.read(max_bytes + 1)
    if len(data) > max_bytes:
        return name, None, f"{name}: file is above the {max_bytes / MB:g} MB cap"
    return name, data, None


async def score(state: ServerState, items: list[Upload], top_k: int, decision: str, text: bool = False) -> list[dict]:
    """Decode, preprocess and score; one result per upload, in order. ``text``: read each
    poster's words and fuse them in (when the model has a text branch)."""
    from ..inference.formats import result

    m, reader = state.holder.scorer, state.holder.text if text else None
    rule = m.decision_rule(decision, top_k)
    decoded = await asyncio.gather(*[state.decode(item) for item in items])
    good = [i for i, (x, _) in enumerate(decoded) if x is not None]
    out = [None if x is not None else result(items[i][0], None, None, m.genres, err) for i, (x, err) in enumerate(decoded)]
    if good:
        scores = await asyncio.wrap_future(state.holder.batcher.submit(np.stack([decoded[i][0] for i in good])))
        texts = [None] * len(good)
        if reader is not None:
            texts, scores = await state.run(_read_and_fuse, reader, [items[i][1] for i in good], scores)
        for i, s, mask, t in zip(good, scores, rule.apply(scores), texts):
            out[i] = result(items[i][0], s, mask, m.genres, text=t)
    return out


def _read_and_fuse(reader, posters: list[bytes], scores):
    texts = reader.read(posters)
    return texts, reader.combine(scores, texts)


def heatmap(state: ServerState, name: str, data: bytes, genre: str) -> tuple[bytes, float]:
    """The Grad-CAM PNG of an upload and the genre's score (in the slow-work thread)."""
    from .explain import explain_png

    return explain_png(state.holder.torch_model(), load_rgb(data, name=name, max_pixels=state.max_pixels), genre)


router = APIRouter()


def limits(state: ServerState) -> dict:
    """What one request may carry (the page batches and checks sizes by these)."""
    scorer = state.holder.scorer if state.holder.status == "ready" else None
    return {"files_per_request": MAX_FILES, "bytes_per_file": state.max_bytes, "pixels_per_image": state.max_pixels,
            "top_k_max": len(scorer.genres) if scorer else None}


@router.get("/api/health")
async def health(state: ServerState = Depends(server_state)):
    """Whether the model is loaded; its name, the engine, whether its scores are calibrated
    probabilities, the package version, and the upload limits (known while loading too)."""
    holder = state.holder
    body = {"status": holder.status, "version": __version__, "model": None, "engine": None, "limits": limits(state)}
    if holder.status == "ready":
        body.update(model=holder.scorer.name, engine=holder.scorer.engine, genres=len(holder.scorer.genres),
                    calibrated=holder.scorer.calibrated, text=holder.text is not None)
        if holder.scorer.engine == "int8":  # which int8 plan this CPU got: its blocks, and the head swapped in
            body["int8"] = {"blocks": holder.scorer.int8["blocks"], "head": holder.scorer.int8.get("head")}
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


@router.get("/api/samples")
async def samples():
    """The example posters shipped with the package, each with the URL that serves it."""
    return {"samples": [{"name": p.name, "url": f"/samples/{p.name}"} for p in sample_posters()]}


@router.post("/api/predict")
async def predict(
    file: List[UploadFile] = File(..., description=f"Poster image(s), at most {MAX_FILES}; the type is judged by content."),
    top_k: int = Form(3, description="Genres per poster (or the most, under thresholds): 1..the model's genre count "
                                     "(GET /api/health: limits.top_k_max)."),
    decision: str = Form("top_k", description="top_k or thresholds"),
    text: bool = Form(False, description="Read the poster's words (OCR) and fuse them in, where the model has a text "
                                         "branch (GET /api/health: text); each result then carries what was read. Off by "
                                         "default, as in the CLI: OCR costs ~0.13 s of a core per poster."),
    state: ServerState = Depends(server_state),
):
    """Genres of each uploaded poster, as `postergenre predict --format json`."""
    if (r := not_ready(state.holder)) is not None:
        return r
    n = len(state.holder.scorer.genres)
    if not 1 <= top_k <= n:
        return error(422, f"top_k is {top_k}: it must be from 1 to {n}, the number of genres the model scores")
    if decision not in ("top_k", "thresholds"):
        return error(422, f"unknown decision {decision!r}: choose top_k or thresholds")
    if len(file) > MAX_FILES:
        return error(413, f"{len(file)} files in one request, above the cap of {MAX_FILES}: send them in batches")
    items = [await read_upload(f, state.max_bytes) for f in file]
    results = await score(state, items, top_k, decision, text)
    errors = [r["error"] for r in results if r["error"]]
    if len(errors) < len(results):
        return results
    too_large = all(err is not None for _, _, err in items)
    return error(413 if too_large else 422, errors[0] if len(errors) == 1 else f"none of the {len(errors)} files could be read",
                 results=results)


@router.post("/api/explain", responses={200: {"content": {"image/png": {}}}})
async def explain(file: UploadFile = File(...), genre: str = Form(..., description="A genre the model scores (any case)."),
                  state: ServerState = Depends(server_state)):
    """PNG: the poster with a Grad-CAM heatmap of what drove ``genre``'s score (header X-Score)."""
    from .explain import resolve_genre

    if (r := not_ready(state.holder)) is not None:
        return r
    if not state.holder.explainable:
        return error(422, "explanations need a PyTorch model directory, not an .onnx file")
    try:
        genre = resolve_genre(state.holder.scorer.genres, genre)
    except PosterGenreError as exc:
        return error(422, str(exc))
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


@router.get("/favicon.ico", include_in_schema=False)
@router.get("/favicon.svg", include_in_schema=False)
async def favicon():
    # browsers ask for /favicon.ico on their own; an SVG there is shown as well
    return FileResponse(WEB_DIR / "favicon.svg", media_type="image/svg+xml")


@router.get("/docs", include_in_schema=False)
async def docs():
    """Swagger UI from the app's own copy; validatorUrl off, or it would fetch a badge from outside."""
    return get_swagger_ui_html(openapi_url="/openapi.json", title="postergenre API", swagger_favicon_url="/favicon.svg",
                               swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                               swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css", swagger_ui_parameters={"validatorUrl": None})


def create_app(model: str | None = "default", engine: str = "auto", max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               max_pixels: int = DEFAULT_MAX_PIXELS, background_load: bool = True, warm: bool = True):
    """The FastAPI application. ``background_load=False`` loads the model before returning (and
    leaves the heatmap path cold: it is warmed after a background load). ``warm=False``
    (``serve --no-warm``): PyTorch only on the first heatmap; an idle server then holds ~144 MB
    instead of ~1 GB, and the first heatmap takes ~4.3 s instead of ~0.37 s (benchmarks/first_heatmap.py)."""
    from swagger_ui_bundle import swagger_ui_path

    max_bytes = int(max_upload_mb * MB)
    state = ServerState(ModelHolder(model, engine), ThreadPoolExecutor(max_workers=1, thread_name_prefix="postergenre-slow"),
                        ThreadPoolExecutor(max_workers=2, thread_name_prefix="postergenre-decode"), max_bytes, max_pixels)
    if background_load:
        # warmed in this thread, not the slow-work one, where it would hold up the first posters' OCR
        threading.Thread(target=lambda: (state.holder.load(), warm and state.holder.warm()), daemon=True,
                         name="postergenre-load").start()
    else:
        state.holder.load()
    # docs_url/redoc_url off: FastAPI's own pages load Swagger UI and ReDoc from a CDN
    app = FastAPI(title="postergenre", version=__version__, exception_handlers={RequestValidationError: invalid_request},
                  description="Predict a movie's genres from its poster (multi-label).", docs_url=None, redoc_url=None)
    app.state.server, app.state.holder = state, state.holder
    app.add_middleware(BodyLimit, max_bytes=max_bytes * MAX_FILES + 64 * 1024,
                       hint=f"; send at most {MAX_FILES} files of up to {max_upload_mb:g} MB each per request")
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    app.mount("/samples", StaticFiles(directory=SAMPLES_DIR), name="samples")
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")
    return app


def run_server(host: str = "127.0.0.1", port: int = 8000, **kwargs) -> None:
    import uvicorn

    uvicorn.run(create_app(**kwargs), host=host, port=port, log_level="info",
                limit_concurrency=256, timeout_keep_alive=5, h11_max_incomplete_event_size=64 * 1024)
