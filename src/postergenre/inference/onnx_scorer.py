"""The ONNX Runtime scorer: an exported ``.onnx`` file (backbone + head + sigmoid) and the
metadata it carries. Torch-free: with a cached export, predicting never imports PyTorch.

An exported file is self-contained: its metadata (key ``postergenre``) holds the genres, the
preprocessing the input must have (size, mean, std, aspect squashed), the decision rule, the
calibration and the fingerprint of the model it came from, so ``--model FILE.onnx`` works
without the model folder. Exports are made and verified in :mod:`postergenre.inference.onnx_engine`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..errors import ExportError
from .._io import default_cache_dir
from ..modeling.config import ConfigAccessors, ModelConfig

SAMPLES_DIR = Path(__file__).parents[1] / "samples"
METADATA_KEY = "postergenre"


def sample_posters() -> list[Path]:
    """The posters shipped with the package (used to verify exports)."""
    return sorted(SAMPLES_DIR.glob("*.jpg"))


def config_fingerprint(config: ModelConfig) -> str:
    """Identifies the weights and preprocessing an export must match (16 hex chars)."""
    parts = [config.weights_sha256, config.backbone.weights_id, config.preprocess.to_dict(), config.genres]
    parts += [config.calibration] if config.calibration else []  # so older models keep their cached exports
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def export_path(config: ModelConfig, cache_dir: str | Path | None = None) -> Path:
    """Where the model's export lives in the cache: ``<cache>/onnx/<name>-<fingerprint>.onnx``."""
    return Path(cache_dir or default_cache_dir()) / "onnx" / f"{config.name}-{config_fingerprint(config)}.onnx"


class OnnxModel(ConfigAccessors):
    """Scores posters with ONNX Runtime. Same accessors as :class:`PosterGenreModel` for
    prediction (``genres``, ``preprocess``, ``decision``, ``decision_rule``, ``predict_proba_tensor``)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
            meta = json.loads(self.session.get_modelmeta().custom_metadata_map[METADATA_KEY])
        except KeyError:
            raise ExportError(f"{self.path}: not a postergenre export (no '{METADATA_KEY}' metadata)") from None
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise ExportError(f"{self.path}: cannot load ONNX model ({str(exc).splitlines()[0]})") from None
        self.int8 = meta.pop("int8", None)  # {"blocks", "format", "head"} of an int8 file
        self.engine = "int8" if self.int8 else "onnx"
        self.config = ModelConfig.from_dict({"name": self.path.stem, "mode": "onnx"} | meta, f"{self.path} metadata")

    def predict_proba_tensor(self, batch) -> np.ndarray:
        """Scores ``(B, G)`` in [0, 1] for a preprocessed batch ``(B, 3, H, W)`` (array or tensor)."""
        x = batch if isinstance(batch, np.ndarray) else batch.numpy()
        return self.session.run(None, {"image": np.ascontiguousarray(x, dtype=np.float32)})[0]
