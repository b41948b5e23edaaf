"""The API's batcher: requests waiting together share forward passes and get their own scores back."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from postergenre.app.batcher import Batcher
from postergenre.data.images import poster_pixels
from postergenre.inference.onnx_engine import sample_posters
from postergenre.inference.scorer import load_scorer


@pytest.fixture(scope="module")
def scorer(tiny_model):
    return load_scorer(str(tiny_model), "onnx")


def test_waiting_requests_share_passes_and_get_their_own_scores(scorer):
    pixels = [poster_pixels(p, scorer.preprocess)[None] for p in sample_posters()]
    alone = [scorer.predict_proba_tensor(scorer.preprocess.normalize_pixels(x)) for x in pixels]
    gate, calls = threading.Event(), []

    def score(batch):  # the real scorer; the first pass waits until every request is queued
        calls.append(len(batch))
        if len(calls) == 1:
            gate.wait(10)
        return scorer.predict_proba_tensor(scorer.preprocess.normalize_pixels(batch))

    b = Batcher(score, max_batch=4)
    futures = [b.submit(x) for x in pixels * 3]  # 18 one-poster requests
    gate.set()
    got = [f.result(30) for f in futures]
    b.close()
    for g, want in zip(got, alone * 3):
        assert g.shape == want.shape and np.abs(g - want).max() < 1e-5
    assert max(calls) == 4 and sum(calls) == 18 and len(calls) <= 6  # not 18 passes of 1


def test_a_request_larger_than_a_pass_is_split_and_reassembled_in_order(scorer):
    pixels = np.concatenate([poster_pixels(p, scorer.preprocess)[None] for p in sample_posters()])
    b = Batcher(lambda x: scorer.predict_proba_tensor(scorer.preprocess.normalize_pixels(x)), max_batch=4)
    got = b.submit(pixels).result(30)
    b.close()
    want = scorer.predict_proba_tensor(scorer.preprocess.normalize_pixels(pixels))
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-5 and b.passes == 2


def test_a_failing_pass_fails_its_requests_and_the_thread_goes_on(scorer):
    b = Batcher(lambda x: scorer.predict_proba_tensor(scorer.preprocess.normalize_pixels(x)))
    with pytest.raises(Exception):
        b.submit(np.zeros((1, 7, 7, 3), np.uint8)).result(30)  # not the model's input size
    ok = b.submit(poster_pixels(sample_posters()[0], scorer.preprocess)[None]).result(30)
    b.close()
    assert ok.shape == (1, len(scorer.genres))
