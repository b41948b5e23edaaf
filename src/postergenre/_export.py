"""One ONNX export call for the whole package: images ``(B, 3, H, W)`` in, one tensor out."""

from __future__ import annotations

import os
import uuid
import warnings
from pathlib import Path

import torch
from torch import nn

OPSET = 17


def export_module(module: nn.Module, example: torch.Tensor, path: str | Path, output_name: str = "out") -> Path:
    """Export ``module`` (dynamic batch, input ``image``) to ``path`` atomically: a crash leaves no file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with warnings.catch_warnings():  # the TorchScript exporter's notes on constant folding are noise here
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), (example,), str(tmp), input_names=["image"], output_names=[output_name],
                              dynamic_axes={"image": {0: "batch"}, output_name: {0: "batch"}}, opset_version=OPSET,
                              dynamo=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
