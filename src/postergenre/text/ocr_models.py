"""Leaner copies of RapidOCR's ONNX models: the same function in fewer, larger kernels.

PP-OCRv4's recognizer (LCNetV3) follows most convolutions with a "learnable affine block"
(``x * s + b``, two scalars) and a hard-swish written as four ops (``x * clip(x + 3, 0, 6) / 6``).
ONNX Runtime fuses neither, and on the CPU those element-wise passes over large activations
took half of recognition's time (docs/performance.md). :func:`lean_model` folds the affine
block into the convolution's weights and bias and writes each hard-swish as two ops
(``x * HardSigmoid(x)``, which needs no newer opset than the model's):
the same arithmetic up to float rounding, checked against the original on every build.

The lean copies are built once into ``<cache>/ocr-models/`` (atomically; beside the OCR cache, not
in it, so emptying the cache of read text does not cost a rebuild) and used by
:class:`~postergenre.text.ocr.OcrReader`; a model the rewrite does not match is used as it is.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from .._io import announce_preparation, default_cache_dir

LEAN_ATOL = 1e-3  # on probabilities in [0, 1]; the rewrite reorders float operations only


def _constants_to_initializers(graph) -> None:
    from onnx import numpy_helper

    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(node.attribute[0].t), node.output[0]))
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


class _Graph:
    """Who produces and who consumes each tensor, and the constant values, of an ONNX graph."""

    def __init__(self, graph):
        from onnx import numpy_helper

        self.graph = graph
        self.values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.consumers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in graph.output}

    def only_consumer(self, tensor: str, op_type: str):
        c = self.consumers.get(tensor, [])
        return c[0] if len(c) == 1 and c[0].op_type == op_type and tensor not in self.outputs else None

    def scalar_operand(self, node, tensor: str) -> float | None:
        """The other input of a binary ``node`` when it is a one-element constant."""
        other = [i for i in node.input if i != tensor]
        if len(other) != 1 or other[0] not in self.values or self.values[other[0]].size != 1:
            return None
        return float(self.values[other[0]].reshape(-1)[0])


def _fold_affine(g: _Graph) -> int:
    """``Conv -> Mul(s) -> Add(b)`` into one Conv with weights ``W * s`` and bias ``B * s + b``."""
    from onnx import numpy_helper

    folded, drop = 0, set()
    for conv in [n for n in g.graph.node if n.op_type == "Conv" and len(n.input) >= 2 and n.input[1] in g.values]:
        mul = g.only_consumer(conv.output[0], "Mul")
        add = mul and g.only_consumer(mul.output[0], "Add")
        s = mul and g.scalar_operand(mul, conv.output[0])
        b = add and g.scalar_operand(add, mul.output[0])
        if add is None or s is None or b is None:
            continue
        w = g.values[conv.input[1]]
        bias = g.values[conv.input[2]] if len(conv.input) > 2 else np.zeros(w.shape[0], w.dtype)
        name = conv.name + "_lean"
        g.graph.initializer.extend([numpy_helper.from_array((w * s).astype(w.dtype), name + "_W"),
                                    numpy_helper.from_array((bias * s + b).astype(w.dtype), name + "_B")])
        del conv.input[1:]
        conv.input.extend([name + "_W", name + "_B"])
        conv.output[0] = add.output[0]
        drop |= {id(mul), id(add)}
        folded += 1
    _remove(g.graph, drop)
    return folded


def _fuse_hardswish(g: _Graph) -> int:
    """``x -> Add(3) -> Clip(0, 6) -> Mul(x, .) -> Div(6)`` into ``Mul(x, HardSigmoid(x; 1/6, 0.5))``."""
    from onnx import helper

    fused, drop, new = 0, set(), []
    for add in [n for n in g.graph.node if n.op_type == "Add"]:
        x = next((i for i in add.input if i not in g.values), None)
        clip = x and g.only_consumer(add.output[0], "Clip")
        mul = clip and g.only_consumer(clip.output[0], "Mul")
        div = mul and g.only_consumer(mul.output[0], "Div")
        if not div or g.scalar_operand(add, x) != 3.0 or x not in mul.input or g.scalar_operand(div, mul.output[0]) != 6.0:
            continue
        bounds = [float(g.values[i].reshape(-1)[0]) if i in g.values else None for i in clip.input[1:3]]
        if bounds != [0.0, 6.0]:
            continue
        gate = add.name + "_hardsigmoid"
        new.append((add, [helper.make_node("HardSigmoid", [x], [gate], name=gate, alpha=1 / 6, beta=0.5),
                          helper.make_node("Mul", [x, gate], [div.output[0]], name=add.name + "_hardswish")]))
        drop |= {id(add), id(clip), id(mul), id(div)}
        fused += 1
    nodes = list(g.graph.node)
    for add, pair in new:  # where the pattern started, so the graph stays in topological order
        at = nodes.index(add)
        nodes[at:at] = pair
    del g.graph.node[:]
    g.graph.node.extend(n for n in nodes if id(n) not in drop)
    return fused


def _drop_unused_initializers(graph) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _remove(graph, drop: set) -> None:
    keep = [n for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(keep)


def lean_model(src: str | Path, out: str | Path) -> dict:
    """Write the lean copy of ONNX model ``src`` to ``out`` (atomically); returns what was
    rewritten (``{"affine_folded", "hardswish_fused"}``). Raises ValueError when the copy's
    outputs differ from the original's by more than :data:`LEAN_ATOL` on a test input."""
    import onnx

    model = onnx.load(str(src))
    _constants_to_initializers(model.graph)
    done = {"affine_folded": _fold_affine(_Graph(model.graph))}
    done["hardswish_fused"] = _fuse_hardswish(_Graph(model.graph))
    _drop_unused_initializers(model.graph)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        onnx.save(model, str(tmp))
        diff = _max_difference(Path(src), tmp)
        if not diff <= LEAN_ATOL:
            raise ValueError(f"{src}: the lean copy's outputs differ by {diff:.1e} (> {LEAN_ATOL:.0e})")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return done | {"max_abs_diff": diff}


def _max_difference(a: Path, b: Path) -> float:
    """Largest output difference of two models on one smooth test image (batch 2, 48 x 320)."""
    import onnxruntime as ort

    yy, xx = np.mgrid[0:48, 0:320].astype(np.float32)
    img = np.stack([np.sin(xx / 7 + c) * np.cos(yy / 5) for c in range(3)])[None].repeat(2, 0)
    outs = []
    for path in (a, b):
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs.append(s.run(None, {s.get_inputs()[0].name: img.astype(np.float32)})[0])
    return float(np.abs(outs[0] - outs[1]).max())


def rapidocr_model(stage: str) -> Path:
    """The ONNX file RapidOCR's configuration names for ``stage`` ("Det", "Cls" or "Rec")."""
    from importlib.util import find_spec

    import yaml

    root = Path(find_spec("rapidocr_onnxruntime").origin).parent  # found, not imported: cv2 and all cost 0.3 s
    return root / yaml.safe_load((root / "config.yaml").read_text())[stage]["model_path"]


def lean_copy(src: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The cached lean copy of ``src`` (built on first use), or ``src`` itself when it cannot be made."""
    src = Path(src)
    digest = hashlib.sha1(src.read_bytes()).hexdigest()[:12]
    out = Path(cache_dir or default_cache_dir()) / "ocr-models" / f"{src.stem}-lean-{digest}.onnx"
    if out.is_file():
        return out
    announce_preparation(cache_dir)
    try:
        lean_model(src, out)
    except Exception as exc:  # noqa: BLE001 - onnx and ORT raise their own types; the original still works
        import warnings

        warnings.warn(f"using RapidOCR's model as it is: {exc}", stacklevel=2)
        return src
    return out
