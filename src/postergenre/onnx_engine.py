"""ONNX Runtime engine: the whole model (backbone + head + sigmoid) in one ``.onnx`` file.

An exported file is self-contained: its metadata (key ``postergenre``) holds the genres, the
preprocessing the input must have (size, mean, std, aspect squashed), the decision rule and the
checksum of the weights it came from, so ``--model FILE.onnx`` works without the model folder.

Export verifies ONNX Runtime against PyTorch on real posters and refuses (no file left) when
any score differs by more than :data:`EXPORT_ATOL`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ._export import OPSET, export_module  # noqa: F401 - OPSET re-exported
from .errors import ExportError  # noqa: F401 - re-exported
from .config import ModelConfig
from .model import ConfigAccessors, PosterGenreModel

EXPORT_ATOL = 1e-4
SAMPLES_DIR = Path(__file__).parent / "samples"
METADATA_KEY = "postergenre"


class _Scores(nn.Module):
    """Images ``(B, 3, H, W)`` -> scores ``(B, G)`` in [0, 1]: what the .onnx file computes."""

    def __init__(self, model: PosterGenreModel):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(x))


def sample_posters() -> list[Path]:
    """The posters shipped with the package (used to verify exports)."""
    return sorted(SAMPLES_DIR.glob("*.jpg"))


def model_fingerprint(model: PosterGenreModel) -> str:
    """Identifies the weights and preprocessing an export must match (16 hex chars)."""
    c = model.config
    parts = [c.weights_sha256, c.backbone.weights_id, c.preprocess.to_dict(), c.genres]
    parts += [c.calibration] if c.calibration else []  # so older models keep their cached exports
    desc = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(desc.encode()).hexdigest()[:16]


def export_onnx(model: PosterGenreModel, out: str | Path, check_images: Sequence[str | Path] | None = None,
                atol: float = EXPORT_ATOL) -> dict:
    """Write ``out`` (atomically) and return the check: ``{"max_abs_diff", "n_checked", "path"}``.

    ``check_images``: posters to compare ONNX Runtime with PyTorch on (default: the shipped samples).
    """
    import onnx
    import onnxruntime as ort

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    pp = model.preprocess
    paths = list(check_images) if check_images else sample_posters()
    if not paths:
        raise ExportError("no posters to verify the export on")
    batch = torch.stack([pp.load(p) for p in paths])
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with torch.inference_mode():
            expected = _Scores(model)(batch.contiguous(memory_format=torch.channels_last)).numpy()
        export_module(_Scores(model), batch[:1], tmp, output_name="scores")
        proto = onnx.load(str(tmp))
        meta = model.config.export_metadata(model_fingerprint(model))
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(meta)
        onnx.save(proto, str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(None, {"image": batch.numpy()})[0]
        diff = float(np.abs(got - expected).max())
        if not np.isfinite(diff) or diff > atol:
            raise ExportError(f"{out}: ONNX Runtime scores differ from PyTorch's by {diff:.2e} (> {atol:.0e}) "
                              f"on {len(paths)} poster(s); not written")
        os.replace(tmp, out)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    return {"path": str(out), "max_abs_diff": diff, "n_checked": len(paths)}


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
        self.config = ModelConfig.from_dict({"name": self.path.stem, "mode": "onnx"} | meta, f"{self.path} metadata")

    engine = "onnx"

    def predict_proba_tensor(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        """Scores ``(B, G)`` in [0, 1] for a preprocessed batch ``(B, 3, H, W)``."""
        x = batch.numpy() if torch.is_tensor(batch) else batch
        return self.session.run(None, {"image": np.ascontiguousarray(x, dtype=np.float32)})[0]


def cached_export(model: PosterGenreModel, cache_dir: str | Path | None = None) -> Path:
    """The model's export in the cache (``<cache>/onnx/<name>-<fingerprint>.onnx``), made once."""
    from .features import default_cache_dir

    path = Path(cache_dir or default_cache_dir()) / "onnx" / f"{model.name}-{model_fingerprint(model)}.onnx"
    if not path.is_file():
        export_onnx(model, path)
    return path
