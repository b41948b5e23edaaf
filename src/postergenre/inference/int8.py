"""The int8 engine: ONNX Runtime static quantization of a model's fp32 export.

QDQ format, int8 weights per output channel, uint8 activations with MinMax ranges measured on
training posters (never validation or test). Only the MBConv blocks named in the model's
``int8`` config section are quantized; the stem, the stage statistics, the head convolution,
the head and the calibration stay in fp32.

The section can hold two plans, chosen by the CPU's int8 instructions (:func:`int8_plan`). On
AVX2 alone (no VNNI), where it was measured, the built-in model quantizes blocks 7-15 (its
``blocks``: 0.0006 validation mAP; 0.000-0.004 a block, spread evenly). On a CPU with VNNI
(AVX-512 VNNI or AVX-VNNI), every block quantized lost 0.005, and a copy of the head tuned on
the int8 model's own features of the training posters (:mod:`.int8_head`) takes that back: the
``vnni`` plan, every block plus that head (benchmarks/int8_probe.py, benchmarks/int8_head.py,
docs/performance.md).

The ranges are a small JSON file in the model folder (``int8_ranges.json``, ONNX Runtime's
calibration-cache format), so the int8 file is rebuilt anywhere from the fp32 export alone,
without posters or PyTorch, into ``<cache>/onnx/`` next to the fp32 export, and checked
against it on the shipped sample posters before it is kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ExportError
from ..modeling.config import ModelConfig
from .onnx_scorer import METADATA_KEY, export_path, sample_posters

RANGES_FILE = "int8_ranges.json"
DEFAULT_BLOCKS = tuple(range(7, 16))
INT8_MAX_DIFF = 0.1  # largest score difference from fp32 allowed on the sample posters
INT8_MEAN_DIFF = 0.01  # and the mean one


def excluded_nodes(node_names: Sequence[str], blocks: Sequence[int]) -> list[str]:
    """The nodes kept in fp32: everything outside the MBConv ``blocks``."""
    inside = tuple(f"/_blocks.{b}/" for b in blocks)
    return [n for n in node_names if not any(tag in n for tag in inside)]


def cpu_has_vnni() -> bool:
    """Whether this CPU has VNNI int8 dot products (AVX-512 VNNI or AVX-VNNI), read from
    /proc/cpuinfo; False where that cannot be read. ``POSTERGENRE_INT8_PLAN=vnni|plain`` overrides."""
    forced = os.environ.get("POSTERGENRE_INT8_PLAN", "").strip().lower()
    if forced in ("vnni", "plain"):
        return forced == "vnni"
    if forced:
        warnings.warn(f"POSTERGENRE_INT8_PLAN={forced!r} is neither 'vnni' nor 'plain': choosing from the CPU", stacklevel=2)
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_vnni", "avx_vnni"} & set(flags.split()))


def int8_plan(section: dict, vnni: bool | None = None) -> dict:
    """What to quantize on this CPU: ``{"plan": "vnni" | "plain", "blocks": [...], "head": file or None,
    "sample_scores": the tuned head's scores on the sample posters or None}``. The ``vnni``
    sub-section applies where the CPU has VNNI (``vnni``: None to detect it)."""
    alt = section.get("vnni")
    if alt and (cpu_has_vnni() if vnni is None else vnni):
        return {"plan": "vnni", "blocks": list(alt["blocks"]), "head": alt.get("head"),
                "sample_scores": alt.get("sample_scores")}
    return {"plan": "plain", "blocks": list(section.get("blocks", DEFAULT_BLOCKS)), "head": None, "sample_scores": None}


def int8_export_path(config: ModelConfig, model_dir: Path, cache_dir: str | Path | None = None,
                     plan: dict | None = None) -> Path:
    """``<cache>/onnx/<name>-<fingerprint>-int8-<hash of ranges, blocks and head>.onnx``."""
    section = config.int8 or {}
    plan = plan or int8_plan(section)
    parts = [(model_dir / section.get("ranges", RANGES_FILE)).read_bytes(), json.dumps(plan["blocks"]).encode()]
    if plan["head"]:
        parts.append((model_dir / plan["head"]).read_bytes())
    digest = hashlib.sha256(b"".join(parts)).hexdigest()[:12]
    fp32 = export_path(config, cache_dir)
    return fp32.with_name(f"{fp32.stem}-int8-{digest}.onnx")


def _quantize(fp32: Path, out: Path, blocks: Sequence[int], ranges: Path, reader=None) -> None:
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="postergenre-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        nodes = [n.name for n in onnx.load(str(pre)).graph.node]
        quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=excluded_nodes(nodes, blocks), calibration_cache_path=str(ranges))


def _swap_head(proto, head: Path) -> None:
    """Replace the fp32 head's initializers of ``proto`` by those in safetensors file ``head``
    (names as in the export: ``model.head.net.1.weight``, ...; same shapes)."""
    from onnx import numpy_helper
    from safetensors.numpy import load_file

    tensors = load_file(str(head))
    inits = {i.name: i for i in proto.graph.initializer}
    for name, array in tensors.items():
        if name not in inits or tuple(inits[name].dims) != array.shape:
            raise ExportError(f"{head}: {name} {array.shape} is not a head tensor of this model's export")
        inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))


def build_int8(fp32: str | Path, ranges: str | Path, blocks: Sequence[int], out: str | Path,
               head: str | Path | None = None, reference: np.ndarray | None = None) -> dict:
    """Write the int8 model of export ``fp32`` to ``out`` (atomically), with the export's metadata
    plus ``"int8"``, and the head of safetensors file ``head`` where one is given; ExportError
    (nothing written) when its scores on the sample posters are further than :data:`INT8_MAX_DIFF`
    / :data:`INT8_MEAN_DIFF` from ``reference`` ``(6, G)`` (None: fp32's; a tuned head scores
    differently by design, so its plan records the scores it was measured with)."""
    import onnx

    from .onnx_scorer import OnnxModel

    fp32, out = Path(fp32), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        _quantize(fp32, tmp, blocks, Path(ranges))
        proto = onnx.load(str(tmp))
        if head is not None:
            _swap_head(proto, Path(head))
        meta = json.loads(next(p.value for p in onnx.load(str(fp32)).metadata_props if p.key == METADATA_KEY))
        del proto.metadata_props[:]
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(meta | {"int8": {"blocks": list(blocks), "format": "QDQ",
                                                                           "head": Path(head).name if head else None}})
        onnx.save(proto, str(tmp))
        check = _compare(OnnxModel(fp32), OnnxModel(tmp), reference)
        if not (check["max_abs_diff"] <= INT8_MAX_DIFF and check["mean_abs_diff"] <= INT8_MEAN_DIFF):
            raise ExportError(f"{out}: int8 scores differ from {'fp32' if reference is None else 'the recorded'} ones by {check['max_abs_diff']:.3f} at most, "
                              f"{check['mean_abs_diff']:.4f} on average, on the sample posters; not written")
        os.replace(tmp, out)
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnx/ORT raise their own types
        raise ExportError(f"{out}: cannot build the int8 model ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(out)} | check


def _compare(a, b, reference: np.ndarray | None = None) -> dict:
    from ..data.images import poster_batch

    batch = poster_batch(sample_posters(), a.preprocess)
    expected = a.predict_proba_tensor(batch) if reference is None else np.asarray(reference, np.float32)
    diff = np.abs(expected - b.predict_proba_tensor(batch))
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()), "n_checked": len(batch)}


def cached_int8(config: ModelConfig, model_dir: Path, fp32: Path, cache_dir: str | Path | None = None) -> Path:
    """The model's int8 file in the cache, built from its fp32 export ``fp32`` once."""
    section = config.int8 or {}
    plan = int8_plan(section)
    path = int8_export_path(config, model_dir, cache_dir, plan)
    if not path.is_file():
        from .._io import announce_preparation

        announce_preparation(cache_dir)
        build_int8(fp32, model_dir / section.get("ranges", RANGES_FILE), plan["blocks"], path,
                   model_dir / plan["head"] if plan["head"] else None, plan["sample_scores"])
    return path


def calibrate(model_dir: str | Path, posters: Sequence[str | Path], blocks: Sequence[int] = DEFAULT_BLOCKS,
              cache_dir: str | Path | None = None) -> dict:
    """Measure the activation ranges of the model in ``model_dir`` on ``posters`` (training
    posters: never validation or test) and write them to ``<model_dir>/int8_ranges.json``
    (atomically). Returns the config's ``int8`` section (the caller writes it)."""
    from ..data.images import decoded_batches
    from .scorer import load_scorer

    fp32 = load_scorer(model_dir, "onnx", cache_dir=cache_dir)
    model_dir = Path(model_dir)

    class Reader:
        def __init__(self):
            self.batches = (b for _, b, _ in decoded_batches([str(p) for p in posters], fp32.preprocess, 8))

        def get_next(self):
            b = next(self.batches, None)
            return None if b is None else {"image": b}

    out = model_dir / RANGES_FILE
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with tempfile.TemporaryDirectory(prefix="postergenre-int8-") as scratch:
        try:
            _quantize(fp32.path, Path(scratch) / "q.onnx", blocks, tmp, Reader())
            os.chmod(tmp, 0o644)  # a file of the model folder, shipped with it
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    return {"ranges": RANGES_FILE, "blocks": list(blocks), "calibration_posters": len(posters), "format": "QDQ",
            "weights": "int8 per channel", "activations": "uint8 per tensor, MinMax"}
