"""skyloc.runtime.metrics against a naive loop-based reference and hand-computed rankings."""
from __future__ import annotations


import numpy as np
import pytest

from naive_retrieval import naive_metrics
from skyloc.runtime import metrics


def test_random_features_match_naive_reference():
    rng = np.random.default_rng(1)
    # 700 queries > one chunk of 512: the chunk boundary is exercised too.
    nq, ng, d = 700, 150, 16
    gl = rng.integers(0, 12, ng)  # ~12 true matches per query
    ql = rng.integers(0, 13, nq)  # label 12 never in the gallery: queries without a match
    gf = rng.normal(size=(ng, d)).astype(np.float32)
    # Queries near their location's items so the metrics are not all ~chance.
    centres = rng.normal(size=(13, d))
    gf += 0.6 * centres[gl].astype(np.float32)
    qf = (rng.normal(size=(nq, d)) + 0.6 * centres[ql]).astype(np.float32)
    got = metrics.evaluate_retrieval(qf, ql, gf, gl)
    ref = naive_metrics(qf, ql, gf, gl)
    for k in metrics.METRIC_KEYS:
        assert got[k] == pytest.approx(ref[k], abs=1e-9), k
    assert got["num_queries"] == nq and got["num_gallery"] == ng
    assert got["queries_without_match"] == int((ql == 12).sum()) > 0
    assert got["top1%_k"] == 2  # round(1.5) = 2
    assert 0 < ref["R@1"] < ref["R@5"] < ref["R@10"] < 100


def test_string_labels_and_unnormalised_features():
    rng = np.random.default_rng(2)
    gl = np.array([f"{i % 7:04d}" for i in range(40)])
    ql = np.array([f"{i % 7:04d}" for i in range(25)])
    gf = rng.normal(size=(40, 8)) * rng.uniform(0.1, 10, (40, 1))  # norms differ: must not matter
    qf = rng.normal(size=(25, 8)) * 3
    got = metrics.evaluate_retrieval(qf, list(ql), gf, list(gl))
    ref = naive_metrics(qf, list(ql), gf, list(gl))
    for k in metrics.METRIC_KEYS:
        assert got[k] == pytest.approx(ref[k], abs=1e-9)


def _features_for_ranking(n: int) -> np.ndarray:
    """2-D unit vectors whose score against the query (1, 0) strictly decreases with index."""
    ang = np.linspace(0.0, 1.2, n)
    return np.stack([np.cos(ang), np.sin(ang)], axis=1)


def test_hand_computed_ap():
    # Gallery of 6 built so that the ranking (best first) is the gallery order g0..g5, then
    # stored shuffled so the code must really rank.
    #
    # Query A (label "a"): true matches at 0-based ranks 1 and 3 (n_true = 2).
    #   i=0, r=1: p = 1/2, p_prev = 0/1 = 0      -> (0 + 1/2)/2   = 1/4
    #   i=1, r=3: p = 2/4, p_prev = 1/3          -> (1/3 + 1/2)/2 = 5/12
    #   AP_A = (1/4 + 5/12) / 2 = 1/3;  R@1 = 0, R@5 = 1.
    # Query B (label "b"): true matches at ranks 0 and 2.
    #   i=0, r=0: p = 1, p_prev = 1 (r = 0)      -> 1
    #   i=1, r=2: p = 2/3, p_prev = 1/2          -> (1/2 + 2/3)/2 = 7/12
    #   AP_B = (1 + 7/12) / 2 = 19/24;  R@1 = 1.
    # mAP = (1/3 + 19/24) / 2 = 27/48 = 0.5625 -> 56.25 %; R@1 = 50 %; R@5 = R@10 = 100 %.
    ranked = _features_for_ranking(6)
    labels_a = ["x", "a", "y", "a", "z", "w"]
    labels_b = ["b", "x", "b", "y", "z", "w"]
    perm = np.array([4, 0, 5, 2, 1, 3])  # stored order
    q = np.array([[1.0, 0.0]])
    res_a = metrics.evaluate_retrieval(q, ["a"], ranked[perm], [labels_a[i] for i in perm])
    res_b = metrics.evaluate_retrieval(q, ["b"], ranked[perm], [labels_b[i] for i in perm])
    assert res_a["AP"] == pytest.approx(100 / 3)
    assert res_b["AP"] == pytest.approx(100 * 19 / 24)
    assert (res_a["R@1"], res_a["R@5"], res_b["R@1"]) == (0.0, 100.0, 100.0)

    # Both queries against one gallery: relabel so A's and B's matches sit at the same ranks.
    gl = ["b", "a", "b", "a", "z", "w"]
    both = metrics.evaluate_retrieval(np.array([[1.0, 0.0], [1.0, 0.0]]), ["a", "b"], ranked[perm],
                                      [gl[i] for i in perm])
    assert both["AP"] == pytest.approx(56.25)
    assert both["R@1"] == pytest.approx(50.0)
    assert both["R@5"] == both["R@10"] == 100.0


def test_average_precision_matrix_form():
    # Rows are match flags in rank order; hand values from the trapezoid formula.
    good = np.array([
        [1, 1, 1, 0],  # perfect prefix: every term (1 + 1)/2 -> AP = 1
        [0, 0, 0, 1],  # one match at rank 3: p = 1/4, p_prev = 0 -> 1/8
        [0, 0, 0, 0],  # no match -> 0
    ], dtype=bool)
    assert metrics.average_precision(good) == pytest.approx([1.0, 0.125, 0.0])
    assert list(metrics.recall_at_k(good, 1)) == [1.0, 0.0, 0.0]
    assert list(metrics.recall_at_k(good, 4)) == [1.0, 1.0, 0.0]


@pytest.mark.parametrize("n, k", [(51355, 514), (951, 10), (701, 7), (150, 2), (50, 1), (5, 1)])
def test_top1pct_k(n, k):
    # Hand values: round(n / 100), at least 1 (51355 -> 513.55 -> 514; 50 -> 0.5 -> 0 -> 1).
    assert metrics.top1pct_k(n) == k


def test_summarize_subset_and_empty():
    pq = {"R@1": np.array([1.0, 0.0, 1.0]), "R@5": np.ones(3), "R@10": np.ones(3), "R@top1%": np.array([1.0, 0, 1]),
          "AP": np.array([1.0, 0.25, 0.5]), "first_rank": np.array([0, 3, 0])}
    sub = metrics.summarize(pq, np.array([False, True, True]))
    assert sub["AP"] == pytest.approx(37.5) and sub["R@1"] == pytest.approx(50.0) and sub["num_queries"] == 2
    empty = metrics.summarize(pq, np.zeros(3, bool))
    assert empty["num_queries"] == 0 and empty["AP"] is None
