"""ONNX export: the whole model (backbone + head + calibration + sigmoid) in one ``.onnx`` file,
scored by :class:`~postergenre.inference.onnx_scorer.OnnxModel` (re-exported here).

Export verifies ONNX Runtime against PyTorch on real posters and refuses (no file left) when
any score differs by more than :data:`EXPORT_ATOL`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ExportError  # noqa: F401 - re-exported
from .._export import OPSET, export_module  # noqa: F401 - OPSET re-exported
from ..modeling.model import PosterGenreModel
from .onnx_scorer import METADATA_KEY, SAMPLES_DIR, OnnxModel, config_fingerprint, export_path, sample_posters  # noqa: F401

EXPORT_ATOL = 1e-4


class _Scores(nn.Module):
    """Images ``(B, 3, H, W)`` -> scores ``(B, G)`` in [0, 1]: what the .onnx file computes."""

    def __init__(self, model: PosterGenreModel):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(x))


def model_fingerprint(model: PosterGenreModel) -> str:
    """Identifies the weights and preprocessing an export must match (16 hex chars)."""
    return config_fingerprint(model.config)


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


def cached_export(model: PosterGenreModel, cache_dir: str | Path | None = None) -> Path:
    """The model's export in the cache (``<cache>/onnx/<name>-<fingerprint>.onnx``), made once."""
    path = export_path(model.config, cache_dir)
    if not path.is_file():
        from .._io import announce_preparation

        announce_preparation(cache_dir)
        export_onnx(model, path)
    return path
