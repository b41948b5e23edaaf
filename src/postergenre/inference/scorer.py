"""The one way to get a model ready to score posters: :func:`load_scorer`.

A scorer is a PyTorch :class:`~postergenre.modeling.model.PosterGenreModel` or an ONNX Runtime
:class:`~postergenre.inference.onnx_engine.OnnxModel`; both satisfy :class:`Scorer`, so the CLI, the API
and evaluation never ask which one they hold.

Engine rule (``engine="auto"``): ONNX Runtime on CPU (the model is exported once into the cache
and verified then), in int8 where the model's ``int8`` config section says its int8 engine kept
the test figures (``"default": true``; :mod:`postergenre.inference.int8`), PyTorch on a GPU or
when the export cannot be made (with a warning). ``"onnx"`` is always fp32; ``"int8"`` asks for it. With
``features=True`` (scoring a labelled dataset) a frozen-mode model stays in PyTorch, so the
feature cache makes re-scoring posters it has seen free.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterator, Protocol, runtime_checkable

import numpy as np

from ..data.images import Preprocess
from ..errors import ExportError, UsageError
from ..modeling.decision import DecisionRule

ENGINES = ("auto", "torch", "onnx", "int8")


@runtime_checkable
class Scorer(Protocol):
    """What every scorer offers. Scores are ``(B, G)`` floats in [0, 1], one column per genre."""

    engine: str  # "torch", "onnx" (fp32) or "int8"

    @property
    def name(self) -> str: ...

    @property
    def genres(self) -> list[str]: ...

    @property
    def preprocess(self) -> Preprocess: ...

    @property
    def decision(self) -> DecisionRule: ...

    @property
    def calibrated(self) -> bool: ...

    def decision_rule(self, kind: str | None = None, k: int | None = None) -> DecisionRule: ...

    def predict_proba_tensor(self, batch) -> np.ndarray: ...


def is_onnx_path(model: str | Path | None) -> bool:
    return model is not None and str(model).lower().endswith(".onnx")


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    return engine


def genre_count(model: str | Path | None) -> int | None:
    """How many genres ``model`` scores, read from its config or its export's metadata without
    loading it; ``None`` for an .onnx file that cannot say (loading it reports why)."""
    if not is_onnx_path(model):
        from ..modeling.artifact import read_config

        return len(read_config(model).genres)
    import json

    import onnxruntime as ort  # not onnx: importing it alone takes 0.6 s

    from .onnx_scorer import METADATA_KEY

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the metadata only: 0.04 s
    try:
        meta = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"]).get_modelmeta()
        return len(json.loads(meta.custom_metadata_map[METADATA_KEY])["genres"])
    except Exception:  # noqa: BLE001 - missing, not ONNX, not ours: load_scorer says which
        return None


def load_scorer(model: str | Path | None = None, engine: str = "auto", device: str = "cpu",
                cache_dir: str | Path | None = None, features: bool = False) -> Scorer:
    """A model directory (``None``/"default": the built-in model) or an exported ``.onnx``
    file, ready to score with ``engine`` (see the module docstring for ``auto``)."""
    from .onnx_scorer import OnnxModel

    check_engine(engine)
    if is_onnx_path(model):
        if engine == "torch":
            raise UsageError(f"{model}: an .onnx model runs only with the onnx engine")
        if not Path(model).is_file():
            raise ExportError(f"{model}: file not found")
        return OnnxModel(model)
    if engine != "torch" and device == "cpu" and (cached := cached_scorer(model, cache_dir, features, engine)) is not None:
        return cached
    from ..modeling.model import load_model

    torch_model = load_model(model, device=device)
    if features and engine == "auto" and torch_model.config.mode == "frozen":
        return torch_model
    return as_engine(torch_model, engine, cache_dir)


def wants_int8(config, engine: str) -> bool:
    """Whether ``engine`` means the int8 model for a model with this config (UsageError when it has none)."""
    if engine == "int8" and not config.int8:
        raise UsageError(f"model {config.name!r} has no int8 calibration (int8_ranges.json): use --engine onnx, "
                         "or calibrate it with postergenre.inference.int8.calibrate")
    return engine == "int8" or (engine == "auto" and bool((config.int8 or {}).get("default")))


def cached_scorer(model: str | Path | None, cache_dir: str | Path | None = None, features: bool = False,
                  engine: str = "auto"):
    """The model directory's export from the cache, found without building the model (so
    without importing PyTorch), or ``None`` when there is none yet (or a frozen model is to
    score a dataset through the feature cache). The export was verified against PyTorch when
    it was made; its key is the config's fingerprint, which holds the weights' SHA-256, checked
    here against ``model.safetensors`` so a replaced weights file never meets a stale export."""
    from ..modeling.artifact import WEIGHTS_FILE, check_directory, read_config, resolve_model_path, sha256_file
    from .onnx_scorer import OnnxModel, export_path

    model_dir = resolve_model_path(model)
    check_directory(model_dir)
    config = read_config(model_dir)
    path = export_path(config, cache_dir)
    if (features and config.mode == "frozen") or not (model_dir / WEIGHTS_FILE).is_file():
        return None
    if not path.is_file():
        from .._io import announce_preparation

        announce_preparation(cache_dir)  # before PyTorch is imported to make it
        return None
    if config.weights_sha256 and sha256_file(model_dir / WEIGHTS_FILE) != config.weights_sha256:
        return None  # load_model reports the damaged file
    if wants_int8(config, engine):
        return _int8_or_fp32(config, model_dir, path, cache_dir, engine)
    return OnnxModel(path)


def _int8_or_fp32(config, model_dir: Path, fp32: Path, cache_dir, engine: str):
    """The int8 model (built from the fp32 export once); under ``auto``, fp32 with a warning if it cannot be built."""
    from .int8 import cached_int8
    from .onnx_scorer import OnnxModel

    try:
        return OnnxModel(cached_int8(config, model_dir, fp32, cache_dir))
    except (ExportError, ImportError, OSError) as exc:
        if engine == "int8":
            raise
        warnings.warn(f"int8 engine unavailable, using fp32 ONNX: {exc}", stacklevel=3)
        return OnnxModel(fp32)


def as_engine(model, engine: str = "auto", cache_dir: str | Path | None = None) -> Scorer:
    """``model`` (a PyTorch model) as the scorer ``engine`` asks for: itself, or its cached export."""
    from .onnx_engine import cached_export
    from .onnx_scorer import OnnxModel

    check_engine(engine)
    if isinstance(model, OnnxModel):
        if engine == "torch":
            raise UsageError(f"{model.path}: an .onnx model runs only with the onnx engine")
        return model
    on_gpu = next(model.head.parameters()).device.type != "cpu"
    if engine == "torch" or (engine == "auto" and on_gpu):
        return model
    try:
        fp32 = cached_export(model, cache_dir)
        if wants_int8(model.config, engine) and getattr(model, "model_dir", None) is not None:
            return _int8_or_fp32(model.config, Path(model.model_dir), fp32, cache_dir, engine)
        return OnnxModel(fp32)
    except (ExportError, ImportError, RuntimeError) as exc:
        if engine in ("onnx", "int8"):
            raise
        warnings.warn(f"ONNX engine unavailable, using PyTorch: {exc}", stacklevel=2)
        return model


class TextReader:
    """A model's text branch at prediction time: reads posters with OCR (through the OCR cache)
    and fuses their text with the image scores (:class:`~postergenre.text.branch.TextBranch`)."""

    def __init__(self, branch, cache_dir: str | Path | None = None, workers: int | None = None):
        self.branch, self.cache_dir, self.workers = branch, cache_dir, workers
        self._reader = None

    def read(self, posters: list) -> list[str]:
        """The text on each poster: a path, the bytes of an image file or a PIL image."""
        from ..text.ocr import OcrReader, read_posters, text_of

        files = [i for i, p in enumerate(posters) if not hasattr(p, "convert")]
        out = [""] * len(posters)
        for i, t in zip(files, read_posters([posters[i] for i in files], self.branch.ocr, self.cache_dir, self.workers)):
            out[i] = t
        for i in set(range(len(posters))) - set(files):  # a PIL image has no file bytes to key the cache with
            self._reader = self._reader or OcrReader(self.branch.ocr)
            lines = self._reader.read_image(posters[i])
            out[i] = text_of({"lines": lines}, self.branch.ocr.min_score)
        return out

    def stream(self, paths: list) -> Iterator[str]:
        """The text on each poster file of ``paths``, in order, each as soon as it is read (worker
        processes read ahead; closing the generator stops them)."""
        from ..text.ocr import iter_texts

        return iter_texts(paths, self.branch.ocr, self.cache_dir, self.workers)

    def combine(self, scores: np.ndarray, texts: list[str]) -> np.ndarray:
        return self.branch.combine(scores, texts)


def load_text_reader(model: str | Path | None = None, cache_dir: str | Path | None = None,
                     workers: int | None = None) -> TextReader:
    """The text branch of a model directory (``None``/"default": the built-in model), ready to
    read posters; UsageError when the model has none (an ``.onnx`` file holds the image branch only)."""
    from ..modeling.artifact import read_config, resolve_model_path
    from ..text.branch import TextBranch

    if is_onnx_path(model):
        raise UsageError(f"{model}: an exported .onnx file holds the image branch only; give the model directory for --text on")
    model_dir = resolve_model_path(model)
    config = read_config(model_dir)
    if not config.text or not (model_dir / config.text.get("file", "text.safetensors")).is_file():
        raise UsageError(f"{model_dir}: this model has no text branch (fit one with `postergenre train-text`); use --text off")
    branch = TextBranch.load(model_dir / config.text["file"], cache_dir)
    _prepare_text(branch, cache_dir)
    return TextReader(branch, cache_dir, workers)


def _prepare_text(branch, cache_dir: str | Path | None) -> None:
    """What reading needs built into the cache, built now (once): the lean OCR recognizer here,
    not by each OCR worker process at the same time; the text encoder's export before the image
    model's, whose memory then reuses the encoder's (first run with --text on: 1.49 -> 1.38 GB peak)."""
    from ..text.ocr_models import lean_copy, rapidocr_model

    if branch.embed_weights is not None:
        from ..text.embedding import cached_export

        cached_export(cache_dir)
    lean_copy(rapidocr_model("Rec"))
