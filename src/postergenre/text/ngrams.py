"""Character n-gram TF-IDF: the text features of a poster's OCR text.

Character n-grams inside word boundaries (scikit-learn's ``char_wb``) survive OCR's misspellings
("MASSACRF" still shares "massa", "assac", ... with "massacre"), which word features do not.
:meth:`CharNgrams.fit` learns the vocabulary and IDF with scikit-learn; :meth:`CharNgrams.rows`
applies them in plain Python + NumPy, equal to scikit-learn's ``transform`` (tested), so
scoring needs neither scikit-learn nor SciPy.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

_SPACES = re.compile(r"\s\s+")


@dataclass
class CharNgrams:
    """``vocabulary``: n-gram -> column; ``idf``: ``(V,)`` float; sublinear TF, L2-normalised rows."""

    vocabulary: dict[str, int]
    idf: np.ndarray
    ngram_range: tuple[int, int] = (2, 5)

    @classmethod
    def fit(cls, texts: Sequence[str], ngram_range: tuple[int, int] = (2, 5), min_df: int = 3,
            max_features: int | None = None):
        """The vocabulary and IDF of ``texts``, and their TF-IDF matrix ``(N, V)`` (SciPy sparse)."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(analyzer="char_wb", ngram_range=ngram_range, min_df=min_df, max_features=max_features,
                              sublinear_tf=True, lowercase=True, dtype=np.float32)
        matrix = vec.fit_transform(texts)
        vocabulary = {k: int(v) for k, v in vec.vocabulary_.items()}
        return cls(vocabulary, vec.idf_.astype(np.float32), tuple(ngram_range)), matrix

    def analyze(self, text: str) -> list[str]:
        """The n-grams of ``text``: each word padded with one space, every n in ``ngram_range``,
        a word shorter than n counted once (scikit-learn's ``char_wb``)."""
        lo, hi = self.ngram_range
        grams = []
        for word in _SPACES.sub(" ", text.lower()).split():
            w = f" {word} "
            for n in range(lo, hi + 1):
                grams.extend(w[i:i + n] for i in range(max(1, len(w) - n + 1)))
                if len(w) <= n:
                    break
        return grams

    def row(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """One text's TF-IDF row as ``(columns, values)`` (sorted columns; empty for no known n-gram)."""
        counts = Counter(self.vocabulary[g] for g in self.analyze(text) if g in self.vocabulary)
        if not counts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        cols = np.array(sorted(counts), dtype=np.int64)
        vals = np.array([1.0 + math.log(counts[c]) for c in cols], dtype=np.float64) * self.idf[cols]
        vals /= np.sqrt(np.sum(vals * vals))
        return cols, vals.astype(np.float32)

    def dot(self, texts: Sequence[str], weights: np.ndarray) -> np.ndarray:
        """``TF-IDF(texts) @ weights``: ``(N, K)`` float32 for ``weights`` ``(V, K)``."""
        out = np.zeros((len(texts), weights.shape[1]), dtype=np.float32)
        for i, text in enumerate(texts):
            cols, vals = self.row(text)
            if len(cols):
                out[i] = vals @ weights[cols].astype(np.float32)
        return out
