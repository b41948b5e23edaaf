"""One ONNX export call for the whole package: a batch in (images ``(B, 3, H, W)`` by default,
or several named inputs such as token ids), one tensor out, dynamic batch (and sequence) axes."""

from __future__ import annotations

import os
import uuid
import warnings
from pathlib import Path

import torch
from torch import nn

OPSET = 17


def export_module(module: nn.Module, example: torch.Tensor | tuple, path: str | Path, output_name: str = "out",
                  input_names: tuple[str, ...] = ("image",), dynamic: dict | None = None) -> Path:
    """Export ``module`` to ``path`` atomically (a crash leaves no file). Every input and the
    output get a dynamic batch axis; ``dynamic`` adds axes (``{name: {axis: label}}``)."""
    examples = example if isinstance(example, tuple) else (example,)
    axes = {name: {0: "batch"} for name in (*input_names, output_name)}
    for name, more in (dynamic or {}).items():
        axes[name] = axes[name] | more
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with warnings.catch_warnings():  # the TorchScript exporter's notes on constant folding are noise here
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), examples, str(tmp), input_names=list(input_names), output_names=[output_name],
                              dynamic_axes=axes, opset_version=OPSET,
                              dynamo=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
