"""Decision rules (top-k, per-genre thresholds) and threshold tuning."""

from __future__ import annotations

import numpy as np
import pytest

from postergenre.modeling.decision import DecisionRule, top_k_mask, tune_thresholds


def chosen(mask: np.ndarray) -> list[set[int]]:
    return [set(np.flatnonzero(row).tolist()) for row in mask]


def test_top_k():
    scores = np.array([[0.1, 0.5, 0.3, 0.9],
                       [0.4, 0.3, 0.2, 0.1]])
    assert chosen(DecisionRule("top_k", 2).apply(scores)) == [{3, 1}, {0, 1}]
    assert chosen(DecisionRule("top_k", 1).apply(scores)) == [{3}, {0}]
    assert chosen(DecisionRule().apply(scores)) == [{3, 1, 2}, {0, 1, 2}]  # default: top-3
    # k above the number of genres selects them all
    assert DecisionRule("top_k", 10).apply(scores).all()


def test_top_k_single_row_and_dtype():
    mask = DecisionRule("top_k", 2).apply([0.2, 0.9, 0.5])
    assert mask.dtype == bool and mask.shape == (1, 3)
    assert chosen(mask) == [{1, 2}]


def test_top_k_mask_ties_are_stable():
    assert chosen(top_k_mask(np.array([[0.5, 0.5, 0.5]]), 2)) == [{0, 1}]


def test_thresholds_at_least_one_at_most_k():
    rule = DecisionRule("thresholds", 2, [0.5, 0.5, 0.5, 0.5])
    scores = np.array([[0.9, 0.8, 0.7, 0.1],   # three pass: keep the best two
                       [0.2, 0.3, 0.1, 0.4],   # none pass: the best one
                       [0.6, 0.1, 0.2, 0.3]])  # one passes
    mask = rule.apply(scores)
    assert chosen(mask) == [{0, 1}, {3}, {0}]
    counts = mask.sum(1)
    assert counts.min() >= 1 and counts.max() <= 2


def test_thresholds_are_per_genre():
    rule = DecisionRule("thresholds", 3, [0.95, 0.1, 0.5])
    # genre 0 scores highest but is under its own threshold; genre 1 passes its low one.
    assert chosen(rule.apply(np.array([[0.9, 0.2, 0.1]]))) == [{1}]
    # genres 1 and 2 pass: genre 0 (the best score, but below its threshold) is not added.
    assert chosen(rule.apply(np.array([[0.9, 0.5, 0.6]]))) == [{1, 2}]


def test_thresholds_keep_best_k_of_those_passing():
    # k=1: the top score (genre 0) fails its threshold; genre 2 passes and must be chosen,
    # not dropped because it is outside the overall top-1.
    rule = DecisionRule("thresholds", 1, [0.95, 0.95, 0.1])
    assert chosen(rule.apply(np.array([[0.9, 0.8, 0.2]]))) == [{2}]


def test_thresholds_random_scores_bounds():
    rng = np.random.default_rng(0)
    scores = rng.random((200, 6))
    thresholds = rng.uniform(0.2, 0.8, 6).tolist()
    for k in (1, 2, 3):
        mask = DecisionRule("thresholds", k, thresholds).apply(scores)
        counts = mask.sum(1)
        assert counts.min() >= 1 and counts.max() <= k
        # everything chosen passes its threshold, except the lone fallback genre
        passes = scores >= np.array(thresholds)
        for row_mask, row_pass, row_scores in zip(mask, passes, scores):
            if row_pass.any():
                assert row_pass[row_mask].all()
            else:
                assert np.flatnonzero(row_mask).tolist() == [int(row_scores.argmax())]


def test_rule_validation_and_round_trip():
    with pytest.raises(ValueError):
        DecisionRule("majority")
    with pytest.raises(ValueError):
        DecisionRule("top_k", 0)
    with pytest.raises(ValueError, match="thresholds"):
        DecisionRule("thresholds", 3)
    rule = DecisionRule("thresholds", 2, [0.3, 0.4])
    assert DecisionRule(**rule.to_dict()) == rule
    assert rule.describe() == "per-genre thresholds (1 to 2 genres)"
    assert DecisionRule().describe() == "top-3"


def test_tune_thresholds_maximises_f1():
    y = np.array([[1, 0, 1],
                  [1, 0, 1],
                  [0, 0, 1],
                  [0, 0, 0]])
    s = np.array([[0.9, 0.3, 0.3],
                  [0.6, 0.2, 0.25],
                  [0.4, 0.7, 0.9],
                  [0.1, 0.1, 0.1]])
    grid = np.array([0.2, 0.5, 0.8])
    # genre 0: t=0.2 -> 3 predicted, 2 TP: F1 4/5;  t=0.5 -> 2 predicted, 2 TP: F1 1;  t=0.8 -> F1 2/3
    # genre 1: no positives -> 0.5
    # genre 2: t=0.2 -> 3 predicted, 3 TP: F1 1;  t=0.5 -> 1 TP: F1 2/4;  t=0.8 -> same 1/2
    assert tune_thresholds(y, s, grid) == [0.5, 0.5, 0.2]


def test_tune_thresholds_default_grid():
    y = np.array([[1], [1], [0], [0]])
    s = np.array([[0.9], [0.6], [0.4], [0.1]])
    (t,) = tune_thresholds(y, s)
    assert 0.4 < t <= 0.6  # any threshold in (0.4, 0.6] separates perfectly
    pred = s[:, 0] >= t
    assert pred.tolist() == [True, True, False, False]
