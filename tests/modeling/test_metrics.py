"""Metrics on small examples worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from postergenre.modeling.metrics import (
    SUMMARY_KEYS,
    brier_score,
    evaluate,
    expected_calibration_error,
    macro_average_precision,
    micro_recall_at_k,
    precision_at_k,
    recall_at_k,
)

# Two posters, four genres.
Y2 = np.array([[1, 0, 1, 0],
               [0, 1, 0, 0]])
S2 = np.array([[0.9, 0.8, 0.1, 0.2],
               [0.1, 0.2, 0.3, 0.4]])
# top-2: poster 0 -> {0, 1}: 1 of its 2 true genres; poster 1 -> {3, 2}: 0 of its 1.


def test_micro_recall_at_k():
    # hits / all true genres = (1 + 0) / (2 + 1)
    assert micro_recall_at_k(Y2, S2, 2) == pytest.approx(1 / 3)
    # top-1: poster 0 -> {0} hit; poster 1 -> {3} miss: 1 / 3
    assert micro_recall_at_k(Y2, S2, 1) == pytest.approx(1 / 3)
    # top-4 holds everything
    assert micro_recall_at_k(Y2, S2, 4) == pytest.approx(1.0)
    # top-3: poster 0 -> {0, 1, 3}: 1 hit; poster 1 -> {3, 2, 1}: 1 hit -> 2 / 3
    assert micro_recall_at_k(Y2, S2, 3) == pytest.approx(2 / 3)


def test_precision_at_k():
    # mean over posters of hits / k = (1/2 + 0/2) / 2
    assert precision_at_k(Y2, S2, 2) == pytest.approx(0.25)
    # top-3: (1/3 + 1/3) / 2
    assert precision_at_k(Y2, S2, 3) == pytest.approx(1 / 3)


def test_recall_at_k():
    # mean over posters of hits / true genres = (1/2 + 0/1) / 2  (micro would be 1/3)
    assert recall_at_k(Y2, S2, 2) == pytest.approx(0.25)
    # top-3: (1/2 + 1/1) / 2
    assert recall_at_k(Y2, S2, 3) == pytest.approx(0.75)


def test_recall_at_k_ignores_posters_without_genres():
    y = np.vstack([Y2, [0, 0, 0, 0]])
    s = np.vstack([S2, [0.5, 0.5, 0.5, 0.5]])
    assert recall_at_k(y, s, 2) == pytest.approx(0.25)  # unchanged
    assert precision_at_k(y, s, 2) == pytest.approx(0.5 / 3)  # (1/2 + 0 + 0) / 3


def test_macro_average_precision_skips_genres_without_positives():
    y = np.array([[1, 0, 0],
                  [0, 1, 0],
                  [1, 0, 0]])
    s = np.array([[0.9, 0.2, 0.5],
                  [0.8, 0.6, 0.4],
                  [0.3, 0.7, 0.1]])
    # genre 0: ranking 0.9 (+), 0.8 (-), 0.3 (+): AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    # genre 1: ranking 0.7 (-), 0.6 (+), 0.2 (-): AP = 1 * 1/2 = 1/2
    # genre 2: no positives -> excluded (including it as 0 would give 4/9)
    assert macro_average_precision(y, s) == pytest.approx((5 / 6 + 1 / 2) / 2)  # 2/3
    assert macro_average_precision(np.zeros((3, 3)), s) == 0.0


def test_evaluate_hand_computed():
    genres = ["A", "B", "C", "D"]
    y = np.array([[1, 0, 1, 0],
                  [0, 1, 0, 0],
                  [1, 0, 0, 0]])
    scores = np.array([[0.9, 0.8, 0.1, 0.2],    # top-3 A, B, D: 1 of 2 true
                       [0.1, 0.2, 0.3, 0.4],    # top-3 D, C, B: 1 of 1
                       [0.3, 0.1, 0.2, 0.05]])  # top-3 A, C, B: 1 of 1
    predicted = np.array([[1, 1, 0, 0],
                          [0, 0, 0, 1],
                          [1, 0, 0, 0]], dtype=bool)
    m = evaluate(y, scores, predicted, genres)
    assert set(m) == {"n_posters", "micro_recall_at_3", "precision_at_3", "recall_at_3", "mAP", "micro_f1",
                      "macro_f1", "samples_f1", "hamming_loss", "subset_accuracy", "ece", "brier", "per_genre"}
    assert set(m) - {"n_posters", "per_genre"} == set(SUMMARY_KEYS)
    assert m["n_posters"] == 3
    assert m["micro_recall_at_3"] == pytest.approx(3 / 4)  # 3 hits / 4 true genres
    assert m["precision_at_3"] == pytest.approx(1 / 3)  # (1/3 + 1/3 + 1/3) / 3
    assert m["recall_at_3"] == pytest.approx(5 / 6)  # (1/2 + 1 + 1) / 3
    # AP: A ranks 0.9 (+), 0.3 (+), 0.1 (-) -> 1;  B ranks 0.8 (-), 0.2 (+) -> 1/2;
    # C ranks 0.3 (-), 0.2 (-), 0.1 (+) -> 1/3;  D has no positives -> left out.
    assert m["mAP"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)  # 11/18
    # TP: A twice. FP: B (poster 0), D (poster 1). FN: C (poster 0), B (poster 1).
    assert m["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 2))  # 0.5
    # per genre F1: A 1, B 0, C 0 (D has no support: not averaged)
    assert m["macro_f1"] == pytest.approx(1 / 3)
    # per poster F1: {A,B} vs {A,C} -> 1/2;  {D} vs {B} -> 0;  {A} vs {A} -> 1
    assert m["samples_f1"] == pytest.approx(0.5)
    assert m["hamming_loss"] == pytest.approx(4 / 12)  # 4 wrong cells of 12
    assert m["subset_accuracy"] == pytest.approx(1 / 3)  # only poster 2 exactly right
    # ECE, 15 bins of width 1/15, |sum of scores - sum of labels| per bin:
    # .05 {.05:0} | .7 {.1:1, .1:0, .1:0} | .4 {.2:0, .2:1, .2:0} | .4 {.3:0, .3:1} | .4 {.4:0} | .8 {.8:0} | .1 {.9:1}
    assert m["ece"] == pytest.approx(2.85 / 12)
    # Brier: (.01 + .64 + .81 + .04) + (.01 + .64 + .09 + .16) + (.49 + .01 + .04 + .0025) over 12 cells
    assert m["brier"] == pytest.approx(2.9425 / 12)
    pg = m["per_genre"]
    assert list(pg) == genres
    assert all(set(v) == {"AP", "F1", "support"} for v in pg.values())
    assert pg["A"] == {"AP": pytest.approx(1.0), "F1": pytest.approx(1.0), "support": 2}
    assert pg["B"] == {"AP": pytest.approx(0.5), "F1": pytest.approx(0.0), "support": 1}
    assert pg["C"] == {"AP": pytest.approx(1 / 3), "F1": pytest.approx(0.0), "support": 1}
    assert pg["D"] == {"AP": None, "F1": pytest.approx(0.0), "support": 0}


def test_evaluate_perfect_prediction():
    y = np.array([[1, 0, 0], [0, 1, 1]])
    scores = np.array([[0.9, 0.1, 0.2], [0.1, 0.8, 0.7]])
    m = evaluate(y, scores, y.astype(bool), ["a", "b", "c"])
    for key in ("micro_recall_at_3", "recall_at_3", "mAP", "micro_f1", "macro_f1", "samples_f1", "subset_accuracy"):
        assert m[key] == pytest.approx(1.0), key
    assert m["hamming_loss"] == 0.0
    assert m["precision_at_3"] == pytest.approx((1 / 3 + 2 / 3) / 2)


def test_evaluate_is_json_serialisable():
    import json

    m = evaluate(Y2, S2, S2 > 0.5, ["a", "b", "c", "d"])
    assert json.loads(json.dumps(m)) == m


def test_expected_calibration_error_hand_computed():
    # One score per bin: (|.9 - 1| + |.1 - 0| + |.5 - 0| + |.7 - 1|) / 4
    y = np.array([[1, 0], [0, 1]])
    assert expected_calibration_error(y, np.array([[0.9, 0.1], [0.5, 0.7]])) == pytest.approx(0.25)
    # .50 (+) and .52 (-) share bin 7 ([7/15, 8/15)): |1.02 - 1|; .9 (-) and .01 (-) are alone: .9 and .01
    y, s = np.array([[1, 0], [0, 0]]), np.array([[0.50, 0.52], [0.9, 0.01]])
    assert expected_calibration_error(y, s) == pytest.approx((0.02 + 0.9 + 0.01) / 4)
    # One bin: |mean score - mean label|
    assert expected_calibration_error(Y2, S2, n_bins=1) == pytest.approx(abs(S2.mean() - Y2.mean()))
    # Perfectly calibrated: every score is the frequency of its bin
    y = np.array([[1, 0, 0, 0]])
    assert expected_calibration_error(y, np.full((1, 4), 0.25)) == pytest.approx(0.0)


def test_expected_calibration_error_puts_one_in_the_last_bin():
    # 1.0 shares bin 14 ([14/15, 1]) with .95: |1.95 - 1| / 2 = .475 (separate bins would give .525)
    assert expected_calibration_error(np.array([[0, 1]]), np.array([[1.0, 0.95]])) == pytest.approx(0.475)
    assert expected_calibration_error(np.array([[1]]), np.array([[1.0]])) == 0.0


def test_brier_score_hand_computed():
    # Y2, S2: (.01 + .64 + .81 + .04 + .01 + .64 + .09 + .16) / 8
    assert brier_score(Y2, S2) == pytest.approx(0.3)
    assert brier_score(np.zeros((2, 2)), np.full((2, 2), 0.5)) == pytest.approx(0.25)  # single class is fine
    assert brier_score(Y2, Y2.astype(float)) == 0.0
