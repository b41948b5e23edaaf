"""Which int8 image engine (issue 21): ONNX Runtime static quantization of the built-in model's
fp32 export, calibrated on 256 training posters, compared with fp32 on validation only.

    .venv/bin/python benchmarks/int8_probe.py --data ../shared/datasets/movie-posters \
        [--groups probe,options,format,kinds,blocks,ranges] [--out benchmarks/results/int8_probe.json]

QDQ with per-channel int8 weights and uint8 activations (MinMax calibration) unless a variant
says otherwise. Groups: ``probe`` (all ops, Conv only, MBConv blocks only), ``options``
(reduce_range, uint8 weights, the tapped stage outputs in fp32), ``format`` (per-tensor
weights instead of per-channel, QOperator instead of QDQ), ``kinds`` (depthwise or expand
convolutions kept in fp32, project convolutions only), ``blocks`` (one block at a time: how the
loss is spread), ``ranges`` (blocks 7-15, 2-15: the engine's candidates). Each row: validation
micro recall@3 / mAP against fp32, the largest and mean score difference, and posters/s of
scoring (decode included, 2 cores: only meaningful when nothing else runs).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from postergenre.data.dataset import load_dataset
from postergenre.data.images import decoded_batches
from postergenre.inference.int8 import excluded_nodes
from postergenre.inference.onnx_scorer import OnnxModel
from postergenre.inference.scorer import load_scorer
from postergenre.modeling import metrics as M
from postergenre.modeling.artifact import read_split

HERE = Path(__file__).resolve().parent

def _outside_blocks(name: str) -> bool:
    """The stem, the stage statistics (mean/std pooling), the head convolution, the head and calibration."""
    return "/head/" in name or "/calibration/" in name or (name.startswith("/model/backbone/") and "_blocks" not in name)


def _blocks(*ids):
    """Kept in fp32: what the engine keeps when it quantizes blocks ``ids``."""
    return lambda name: bool(excluded_nodes([name], ids))


TAPS = [f"/model/backbone/_blocks.{i}/Add" for i in (2, 4, 10)]  # the block outputs the stage statistics read
_dw, _expand = (lambda n: "_depthwise_conv/Conv" in n), (lambda n: "_expand_conv/Conv" in n)
GROUPS = {  # group: {name: (op types to quantize (None: all), nodes kept in fp32, quantize_static options)}
    "probe": {
        "qdq per-channel, all ops": (None, lambda name: False, {}),
        "qdq per-channel, Conv only": (["Conv"], lambda name: False, {}),
        "qdq per-channel, MBConv blocks only (stem, statistics, head conv, head in fp32)": (None, _outside_blocks, {}),
    },
    "options": {
        "blocks only, reduce_range": (None, _outside_blocks, {"reduce_range": True}),
        "blocks only, uint8 weights": (None, _outside_blocks, {"weight_type": QuantType.QUInt8}),
        "blocks only, tapped outputs fp32": (None, lambda n: _outside_blocks(n) or n in TAPS, {}),
    },
    "format": {
        "blocks only, per-tensor weights": (None, _outside_blocks, {"per_channel": False}),
        "blocks only, QOperator": (None, _outside_blocks, {"quant_format": QuantFormat.QOperator}),
    },
    "kinds": {
        "blocks, depthwise fp32": (None, lambda n: _outside_blocks(n) or _dw(n), {}),
        "blocks, expand fp32": (None, lambda n: _outside_blocks(n) or _expand(n), {}),
        "blocks, project convs only": (None, lambda n: _outside_blocks(n) or _expand(n) or _dw(n) or "/Add" in n, {}),
    },
    "blocks": {f"only block {i}": (None, _blocks(i), {}) for i in range(16)},
    "ranges": {"blocks 7-15 (the engine)": (None, _blocks(*range(7, 16)), {}), "blocks 2-15": (None, _blocks(*range(2, 16)), {})},
}


class Posters(CalibrationDataReader):
    def __init__(self, paths, preprocess):
        self.batches = (b for _, b, _ in decoded_batches(paths, preprocess, 8))

    def get_next(self):
        b = next(self.batches, None)
        return None if b is None else {"image": b}


def scored(session_path: Path, paths, preprocess) -> tuple[np.ndarray, float]:
    import onnxruntime as ort

    s = ort.InferenceSession(str(session_path), providers=["CPUExecutionProvider"])
    out, t = np.zeros((len(paths), 24), np.float32), time.time()
    for idx, b, _ in decoded_batches(paths, preprocess, 8):
        out[idx] = s.run(None, {"image": b})[0]
    return out, len(paths) / (time.time() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--groups", default="probe,options,kinds,ranges", help=f"comma list of {', '.join(GROUPS)}")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "int8_probe.json")
    a = ap.parse_args()
    fp32 = load_scorer("default", "onnx")
    assert isinstance(fp32, OnnxModel)
    parts, (ds, _) = read_split("default"), load_dataset(a.data)
    val = ds.subset_ids(parts["val"])
    calibration = [str(p) for p in ds.subset_ids(parts["train"][::17][:256]).paths]
    y, _ = val.labels_in(fp32.genres)
    base, base_speed = scored(fp32.path, val.paths, fp32.preprocess)
    rows = [{"variant": "fp32", "micro_recall_at_3": M.micro_recall_at_k(y, base, 3), "mAP": M.macro_average_precision(y, base),
             "posters_per_s": round(base_speed, 1)}]
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32.path), str(pre), skip_symbolic_shape=True)
        nodes = [n.name for n in onnx.load(str(pre)).graph.node]
        variants = {k: v for g in a.groups.split(",") for k, v in GROUPS[g].items()}
        for name, (ops, keep, options) in variants.items():
            q = Path(tmp) / "q.onnx"
            kw = {"quant_format": QuantFormat.QDQ, "per_channel": True, "activation_type": QuantType.QUInt8,
                  "weight_type": QuantType.QInt8} | options
            quantize_static(str(pre), str(q), Posters(calibration, fp32.preprocess), op_types_to_quantize=ops,
                            nodes_to_exclude=[n for n in nodes if keep(n)], **kw)
            s, speed = scored(q, val.paths, fp32.preprocess)
            rows.append({"variant": name, "micro_recall_at_3": M.micro_recall_at_k(y, s, 3), "mAP": M.macro_average_precision(y, s),
                         "max_abs_diff": float(np.abs(s - base).max()), "mean_abs_diff": float(np.abs(s - base).mean()),
                         "posters_per_s": round(speed, 1)})
            print(json.dumps(rows[-1]), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    from postergenre.inference.int8 import cpu_has_vnni

    head = {"command": f"python benchmarks/int8_probe.py --data {a.data} --groups {a.groups}", "vnni": cpu_has_vnni()}
    a.out.write_text(json.dumps(head | {"n_val": len(val), "n_calibration": len(calibration), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
