"""The text branch's parts: n-grams equal to scikit-learn's, the encoder's ONNX export equal to
sentence-transformers, save/load, and the fusion rule (no text: the image scores, exactly)."""

from __future__ import annotations

import random
import string

import numpy as np
import pytest

from postergenre.text.branch import TextBranch, fit_evidence, fit_fusion, fuse
from postergenre.text.ngrams import CharNgrams
from postergenre.text.ocr import OcrSettings

ALPHABET = string.ascii_letters + "   \t\n.,!'&-0123456789ÉéßΩЖ東京"


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 50))) for _ in range(n)] + ["a", "I  am", ""]


def test_ngram_rows_equal_scikit_learns_tfidf():
    texts = _texts(400)
    ngrams, matrix = CharNgrams.fit(texts, min_df=2)
    weights = np.random.default_rng(0).normal(size=(len(ngrams.vocabulary), 5)).astype(np.float32)
    np.testing.assert_allclose(ngrams.dot(texts, weights), matrix @ weights, atol=1e-5)
    unseen = _texts(50, seed=1)
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True, dtype=np.float32).fit(texts)
    np.testing.assert_allclose(ngrams.dot(unseen, weights), vec.transform(unseen) @ weights, atol=1e-5)


def _branch(embed: bool = False) -> TextBranch:
    rng = np.random.default_rng(0)
    texts = [f"{w} {rng.integers(100)}" for w in rng.choice(["scream night", "love story", "funny guys"], 300)]
    labels = np.stack([[t.startswith("scream"), t.startswith("love"), t.startswith("funny")] for t in texts]).astype(int)
    ngrams, matrix = CharNgrams.fit(texts)
    weights, bias = fit_evidence(matrix, labels)
    branch = TextBranch(ngrams, weights, bias, np.zeros((3, 3)), OcrSettings())
    if embed:
        branch.embed_weights = rng.normal(size=(384, 3)).astype(np.float32) * 0.1
    image = rng.uniform(0.05, 0.95, (len(texts), 3)).astype(np.float32)
    branch.fusion = fit_fusion(image, branch.evidence(texts), labels)
    return branch


def test_evidence_learns_words_and_fusion_uses_it():
    branch = _branch()
    z = branch.evidence(["SCREAM NIGHT", "a love story", "Funny Guys"])
    assert list(z.argmax(1)) == [0, 1, 2]
    assert (branch.fusion[:, 1] > 0).all()  # text evidence gets a positive weight in every genre
    fused = branch.combine(np.full((3, 3), 0.5, dtype=np.float32), ["SCREAM NIGHT", "a love story", "Funny Guys"])
    assert list(fused.argmax(1)) == [0, 1, 2] and ((fused > 0) & (fused < 1)).all()


def test_posters_without_text_keep_their_image_scores_exactly():
    branch = _branch()
    image = np.random.default_rng(1).uniform(0, 1, (4, 3)).astype(np.float32)
    image[0, 0], image[1, 1] = 0.0, 1.0  # the edges of the range too
    out = branch.combine(image, ["", "   ", "\n", "love story"])
    assert np.array_equal(out[:3], image[:3])
    assert not np.array_equal(out[3], image[3])


def test_identity_fusion_returns_the_image_scores():
    image = np.array([[0.2, 0.7, 0.01]], dtype=np.float32)
    np.testing.assert_allclose(fuse(image, np.full((1, 3), 9.0), np.tile([1.0, 0.0, 0.0], (3, 1))), image, rtol=1e-5)


def test_save_and_load_give_the_same_scores(tmp_path):
    branch = _branch()
    branch.save(tmp_path)
    loaded = TextBranch.load(tmp_path / "text.safetensors")
    texts = ["scream", "love 12", "zzz", ""]
    np.testing.assert_allclose(loaded.evidence(texts), branch.evidence(texts), atol=2e-3)  # weights stored as float16
    assert loaded.ocr == branch.ocr and loaded.ngrams.ngram_range == (2, 5)
    assert loaded.embed_weights is None


@pytest.mark.slow
def test_the_encoders_onnx_export_matches_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer

    from postergenre.text import embedding

    path = embedding.cached_export(tmp_path)  # exports, and checks itself against PyTorch
    assert path.is_file() and path.parent == tmp_path / "onnx"
    texts = ["THE HAUNTING", "a love story in paris", "", "ROMN/C COMEDY!", "Ωμέγα 東京"]
    want = SentenceTransformer(str(embedding.model_dir()), device="cpu")
    want.max_seq_length = embedding.MAX_TOKENS
    got = embedding.TextEmbedder(path).encode(texts)
    np.testing.assert_allclose(got, want.encode(texts, normalize_embeddings=True), atol=1e-4)
    assert got.shape == (5, embedding.DIM)
