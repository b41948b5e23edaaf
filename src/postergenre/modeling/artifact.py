"""The model directory on disk: its files, the checks that keep it safe, reading its config.

Torch-free, so the ONNX Runtime path can find and verify a model without building it.
A model directory holds ``config.json``, ``model.safetensors`` and ``MODEL.md`` (plus training
records); only JSON and safetensors are ever read from it: no pickle.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import ModelError
from .config import FORMAT_VERSION, ModelConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "MODEL.md"
DEFAULT_MODEL_DIR = Path(__file__).parents[1] / "default_model"
# Files a model directory may hold; anything that could carry code (pickles) is refused.
_UNSAFE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".joblib", ".npy", ".npz"}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_model_path(model: str | Path | None) -> Path:
    if model is None or str(model) == "default":
        return DEFAULT_MODEL_DIR
    return Path(model)


def read_config(model_dir: str | Path | None) -> ModelConfig:
    """The :class:`ModelConfig` of a model directory (``None``/"default": the built-in model)."""
    model_dir = resolve_model_path(model_dir)
    path = model_dir / CONFIG_FILE
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: model directory not found")
    if not path.is_file():
        raise ModelError(f"{model_dir}: not a postergenre model (no {CONFIG_FILE})")
    cfg = ModelConfig.from_dict(_read_json(path, "config"), str(path))
    if cfg.format_version != FORMAT_VERSION:
        raise ModelError(f"{model_dir}: model format {cfg.format_version!r} is not supported (expected {FORMAT_VERSION})")
    if cfg.backbone is None or cfg.head is None:
        raise ModelError(f"{path}: malformed model config (no backbone or head)")
    return cfg


def write_config(model_dir: str | Path, config: ModelConfig) -> Path:
    """Replace the directory's ``config.json`` atomically, in the layout :meth:`PosterGenreModel.save` writes."""
    from .._io import atomic_file

    return atomic_file(Path(model_dir) / CONFIG_FILE, json.dumps(config.to_dict(), indent=2) + "\n")


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: damaged {what} ({exc})") from None


def read_split(model_dir: str | Path | None) -> dict[str, list[str]]:
    """The model's own train/validation split: ``{"train": [Id, ...], "val": [Id, ...]}``."""
    path = resolve_model_path(model_dir) / "split.json"
    if not path.is_file():
        raise ModelError(f"{path.parent}: the model has no split.json")
    return _read_json(path, "split file")


def check_directory(model_dir: Path) -> None:
    if not model_dir.is_dir():
        return  # read_config names the problem
    outside = sorted(p.name for p in model_dir.iterdir()
                     if p.is_symlink() and not p.resolve().is_relative_to(model_dir.resolve()))
    if outside:
        raise ModelError(f"{model_dir}: refusing a model directory whose files point outside it ({', '.join(outside)})")
    unsafe = sorted(p.name for p in model_dir.iterdir() if p.suffix.lower() in _UNSAFE_SUFFIXES)
    if unsafe:
        raise ModelError(f"{model_dir}: refusing a model directory that holds pickle-capable files ({', '.join(unsafe)}); only safetensors and JSON are read")
