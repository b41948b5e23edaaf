"""The one way to get a model ready to score posters: :func:`load_scorer`.

A scorer is a PyTorch :class:`~postergenre.model.PosterGenreModel` or an ONNX Runtime
:class:`~postergenre.onnx_engine.OnnxModel`; both satisfy :class:`Scorer`, so the CLI, the API
and evaluation never ask which one they hold.

Engine rule (``engine="auto"``): ONNX Runtime on CPU (the model is exported once into the cache
and verified then), PyTorch on a GPU or when the export cannot be made (with a warning). With
``features=True`` (scoring a labelled dataset) a frozen-mode model stays in PyTorch, so the
feature cache makes re-scoring posters it has seen free.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from .decision import DecisionRule
from .errors import ExportError, UsageError
from .images import Preprocess

ENGINES = ("auto", "torch", "onnx")


@runtime_checkable
class Scorer(Protocol):
    """What every scorer offers. Scores are ``(B, G)`` floats in [0, 1], one column per genre."""

    engine: str  # "torch" or "onnx"

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


def load_scorer(model: str | Path | None = None, engine: str = "auto", device: str = "cpu",
                cache_dir: str | Path | None = None, features: bool = False) -> Scorer:
    """A model directory (``None``/"default": the built-in model) or an exported ``.onnx``
    file, ready to score with ``engine`` (see the module docstring for ``auto``)."""
    from .onnx_engine import OnnxModel

    check_engine(engine)
    if is_onnx_path(model):
        if engine == "torch":
            raise UsageError(f"{model}: an .onnx model runs only with the onnx engine")
        if not Path(model).is_file():
            raise ExportError(f"{model}: file not found")
        return OnnxModel(model)
    from .model import load_model

    torch_model = load_model(model, device=device)
    if features and engine == "auto" and torch_model.config.mode == "frozen":
        return torch_model
    return as_engine(torch_model, engine, cache_dir)


def as_engine(model, engine: str = "auto", cache_dir: str | Path | None = None) -> Scorer:
    """``model`` (a PyTorch model) as the scorer ``engine`` asks for: itself, or its cached export."""
    from .onnx_engine import OnnxModel, cached_export

    check_engine(engine)
    if isinstance(model, OnnxModel):
        if engine == "torch":
            raise UsageError(f"{model.path}: an .onnx model runs only with the onnx engine")
        return model
    on_gpu = next(model.head.parameters()).device.type != "cpu"
    if engine == "torch" or (engine == "auto" and on_gpu):
        return model
    try:
        return OnnxModel(cached_export(model, cache_dir))
    except (ExportError, ImportError, RuntimeError) as exc:
        if engine == "onnx":
            raise
        warnings.warn(f"ONNX engine unavailable, using PyTorch: {exc}", stacklevel=2)
        return model
