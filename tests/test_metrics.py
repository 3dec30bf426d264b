"""skyloc.core.metrics against a naive loop-based reference and hand-computed rankings."""
from __future__ import annotations


import numpy as np
import pytest

from naive_retrieval import naive_from_rankings, naive_metrics
from skyloc.core import metrics


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
    assert got["top1%_k"] == 3  # CMC[round(1.5)] = CMC[2]: a hit within the top 3
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


@pytest.mark.parametrize("n, k", [(51355, 515), (951, 11), (701, 8), (250, 3), (150, 3), (149, 2), (50, 1), (5, 1)])
def test_top1pct_k(n, k):
    # Hand values: the reference reads CMC[round(n / 100)] (0-based), so K = round(n / 100) + 1
    # with Python's rounding: 513.55 -> 514 -> 515; 2.5 -> 2 -> 3; 1.5 -> 2 -> 3; 0.5 -> 0 -> 1.
    assert metrics.top1pct_k(n) == k


def _gallery_for_ranking(first_match_rank: int, n: int, label: str = "q"):
    """Features and labels of an n-item gallery whose ranking against the query (1, 0) is g0..g(n-1)
    with the only true match at `first_match_rank`, stored shuffled."""
    ranked = _features_for_ranking(n)
    labels = ["x"] * n
    labels[first_match_rank] = label
    perm = np.random.default_rng(first_match_rank + n).permutation(n)
    return ranked[perm], [labels[i] for i in perm]


@pytest.mark.parametrize("n", [149, 150, 250, 251, 351, 449, 450])
def test_top1pct_boundary_on_hand_made_rankings(n):
    # One true match at 0-based rank r. The reference counts a hit iff CMC[round(0.01 n)] = 1,
    # i.e. r <= round(0.01 n): n = 150 -> r <= 2 hits (round(1.5) = 2), n = 250 -> r <= 2 hits
    # (round(2.5) = 2, banker's rounding), n = 251 -> r <= 3 hits, n = 149 -> r <= 1.
    edge = round(0.01 * n)
    q = np.array([[1.0, 0.0]])
    for r, hit in ((edge, 100.0), (edge + 1, 0.0)):
        gf, gl = _gallery_for_ranking(r, n)
        got = metrics.evaluate_retrieval(q, ["q"], gf, gl)
        assert got["R@top1%"] == hit, (n, r)
        ranked = [gl[j] for j in metrics.ranking(q, gf)[0]]
        assert naive_from_rankings([ranked], ["q"], n)["R@top1%"] == hit  # the reference agrees


def test_hand_made_rankings_against_reference_definition():
    # Queries whose ranked gallery labels are written out by hand; features are built to give
    # exactly that ranking, so the vectorised code is checked against the reference definition.
    n = 250  # round(2.5) = 2: hits within the top 3
    rows = [
        ["a", "x", "a"] + ["x"] * (n - 3),  # first match rank 0
        ["x", "x", "b"] + ["x"] * (n - 3),  # rank 2: in top1% (CMC[2]) but not R@1
        ["x"] * 3 + ["c"] + ["x"] * (n - 4),  # rank 3: outside top1% (the old count-round(G) rule said the same)
        ["x"] * 4 + ["d", "d"] + ["x"] * (n - 6),  # rank 4: R@5
        ["x"] * n,  # no match: 0 everywhere
    ]
    labels = ["a", "b", "c", "d", "e"]
    ranked = _features_for_ranking(n)
    perm = np.random.default_rng(5).permutation(n)
    for row, lab in zip(rows, labels):
        got = metrics.evaluate_retrieval(np.array([[1.0, 0.0]]), [lab], ranked[perm], [row[i] for i in perm])
        ref = naive_from_rankings([row], [lab], n)
        for k in metrics.METRIC_KEYS:
            assert got[k] == pytest.approx(ref[k], abs=1e-12), (lab, k)
    # Hand values for the second row: R@1 0, top1% 1 (rank 2 <= round(2.5) = 2), R@5 1,
    # AP = (0/2 + 1/3)/2 = 1/6 (p_prev = i/r = 0/2).
    ref_b = naive_from_rankings([rows[1]], ["b"], n)
    assert (ref_b["R@1"], ref_b["R@top1%"], ref_b["R@5"]) == (0.0, 100.0, 100.0)
    assert ref_b["AP"] == pytest.approx(100 / 6)
    assert naive_from_rankings([rows[2]], ["c"], n)["R@top1%"] == 0.0


def test_summarize_subset_and_empty():
    pq = {"R@1": np.array([1.0, 0.0, 1.0]), "R@5": np.ones(3), "R@10": np.ones(3), "R@top1%": np.array([1.0, 0, 1]),
          "AP": np.array([1.0, 0.25, 0.5]), "first_rank": np.array([0, 3, 0])}
    sub = metrics.summarize(pq, np.array([False, True, True]))
    assert sub["AP"] == pytest.approx(37.5) and sub["R@1"] == pytest.approx(50.0) and sub["num_queries"] == 2
    empty = metrics.summarize(pq, np.zeros(3, bool))
    assert empty["num_queries"] == 0 and empty["AP"] is None
