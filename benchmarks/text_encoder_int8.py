"""The text encoder in int8 (issue 21): all-MiniLM-L6-v2 quantized with ONNX Runtime's dynamic
quantization (int8 weights, activations quantized per batch at run time: the usual choice for a
transformer) against the fp32 export the built-in model's text branch was fitted with.

    .venv/bin/python benchmarks/text_encoder_int8.py --data ../shared/datasets/movie-posters \
        [--score-test] [--out benchmarks/results/text_encoder_int8.json]

The posters' text is the OCR cache's (the model's setting; read first where missing). Per
encoder: milliseconds a poster to embed the validation posters' text on one ONNX thread (batches
of the embedder's size, after a warm-up), the cosine between its embeddings and fp32's (min and
mean), and micro recall@3 / mAP of the fused scores; beside them, OCR's own core-seconds a
poster as recorded in the cache, so the encoder's share of reading a poster shows.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from postergenre.data.dataset import load_dataset
from postergenre.inference.predict import score_paths
from postergenre.inference.scorer import load_scorer, load_text_reader
from postergenre.modeling.artifact import read_split
from postergenre.text.embedding import TextEmbedder, cached_export
from postergenre.text.ocr import OcrCache, read_posters

from ocr_settings import _digest, figures

HERE = Path(__file__).resolve().parent


def timed_encode(embedder: TextEmbedder, texts: list[str], repeats: int = 3) -> tuple[np.ndarray, float]:
    """Embeddings of ``texts`` and the best of ``repeats`` wall times, in ms a text."""
    embedder.encode(texts[:32])
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = embedder.encode(texts)
        best = min(best, time.perf_counter() - t)
    return out, 1000 * best / len(texts)


def main() -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--score-test", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "text_encoder_int8.json")
    a = ap.parse_args()
    scorer, reader = load_scorer("default", "auto"), load_text_reader("default")
    parts, (ds, _) = read_split("default"), load_dataset(a.data)
    fp32_path = cached_export()
    out = {"command": f"python benchmarks/text_encoder_int8.py --data {a.data}" + (" --score-test" if a.score_test else ""),
           "image_engine": scorer.engine, "ocr": reader.branch.ocr.key, "rows": []}
    with tempfile.TemporaryDirectory(prefix="postergenre-minilm-int8-") as scratch:
        int8_path = Path(scratch) / "minilm-int8.onnx"
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8, per_channel=True)
        out["size_mb"] = {"fp32": round(fp32_path.stat().st_size / 1e6, 1), "int8": round(int8_path.stat().st_size / 1e6, 1)}
        encoders = {"fp32": TextEmbedder(fp32_path, threads=1), "int8": TextEmbedder(int8_path, threads=1)}
        for part in ["val"] + (["test"] if a.score_test else []):
            subset = ds.subset_ids(parts[part])
            y, _ = subset.labels_in(scorer.genres)
            image, _ = score_paths(scorer, subset.paths)
            texts = read_posters(subset.paths, reader.branch.ocr, progress=False)
            cache = OcrCache(reader.branch.ocr)
            ocr_s = float(np.mean([cache.get(d)["seconds"] for d in map(_digest, subset.paths)]))
            read = [t for t in texts if t.strip()]
            embeddings = {}
            for name, embedder in encoders.items():
                embeddings[name], ms = timed_encode(embedder, read)
                reader.branch._embedder = embedder
                cos = (embeddings[name] * embeddings["fp32"]).sum(1)
                row = {"part": part, "encoder": name, "n": len(subset), "with_text": len(read),
                       "encode_ms_per_poster_one_thread": round(ms, 2), "ocr_ms_per_poster_one_thread": round(1000 * ocr_s, 1),
                       "cosine_to_fp32_min": round(float(cos.min()), 4), "cosine_to_fp32_mean": round(float(cos.mean()), 5)}
                row |= figures(y, reader.combine(image, texts))
                out["rows"].append(row)
                print(json.dumps(row), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
