"""Retrieval metrics of the University-1652 protocol (DESIGN.md section 3), pure numpy.

Score = dot product of L2-normalised features, ranked descending (ties keep gallery order).
R@K = 1 when the first true match is within the top K. R@top1% is the reference's
`CMC[round(0.01 * G)]` (0-based index into the CMC curve), i.e. a hit within the top
round(0.01 G) + 1 (Python's round: 513.55 -> 514, 1.5 -> 2, 2.5 -> 2). AP is the trapezoidal AP of the
University-1652 reference evaluation: for the i-th true match (0-based) at 0-based rank r_i,
p = (i+1)/(r_i+1), p_prev = i/r_i (1.0 when r_i = 0), AP = sum((p_prev + p) / 2) / n_true.
Queries with no true match in the gallery count as 0 in every mean (the reference code divides
by the number of queries too) and are reported in `queries_without_match`.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

RECALL_KS = (1, 5, 10)
METRIC_KEYS = ("R@1", "R@5", "R@10", "R@top1%", "AP")
_CHUNK = 512  # queries ranked at once: keeps the (chunk x gallery) matrices small


def top1pct_k(num_gallery: int) -> int:
    """K of R@top1%: round(0.01 G) + 1, because the University-1652 reference reads the 0-based
    CMC[round(0.01 G)] (Python rounding, as the reference): 51355 -> 515, 951 -> 11, 50 -> 1."""
    return int(round(num_gallery * 0.01)) + 1


def l2_normalize(x: np.ndarray, eps: float = 1e-12, out: np.ndarray | None = None) -> np.ndarray:
    """Rows (last axis) scaled to unit length, float32; a zero row stays zero. The one L2
    normalisation (backends, localizer, metrics, benchmarks); `out=x` works in place."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, np.maximum(n, eps), out=out)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of a and b (float64), e.g. one model's embeddings vs another's."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return (a * b).sum(axis=-1) / np.maximum(den, 1e-12)


def ranking(query_feats: np.ndarray, gallery_feats: np.ndarray) -> np.ndarray:
    """Gallery indices of each query, best first: (Q, G) int64. Features are L2-normalised here."""
    scores = l2_normalize(query_feats) @ l2_normalize(gallery_feats).T
    return np.argsort(-scores, axis=1, kind="stable")


def _match_matrix(order: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """good[q, r] = gallery item at rank r of query q shows the query's location."""
    return gallery_labels[order] == query_labels[:, None]


def recall_at_k(good: np.ndarray, k: int) -> np.ndarray:
    """Per query 1.0 / 0.0: a true match within the first k ranks. `good` is (Q, G) bool by rank."""
    good = np.atleast_2d(good)
    return good[:, : max(1, k)].any(axis=1).astype(np.float64)


def average_precision(good: np.ndarray) -> np.ndarray:
    """Per-query trapezoidal AP from the (Q, G) boolean match matrix in rank order; 0 without a match."""
    good = np.atleast_2d(good)
    n_true = good.sum(axis=1)
    count = np.cumsum(good, axis=1)  # i + 1 at the i-th true match
    rank = np.arange(good.shape[1], dtype=np.float64)[None, :]  # r_i
    p = count / (rank + 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p_prev = np.where(rank == 0, 1.0, (count - 1) / rank)
    area = np.where(good, (p_prev + p) / 2.0, 0.0).sum(axis=1)
    return np.where(n_true > 0, area / np.maximum(n_true, 1), 0.0)


def per_query(query_feats: np.ndarray, query_labels: Sequence[Any], gallery_feats: np.ndarray,
              gallery_labels: Sequence[Any], ks: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Per-query R@K (for each K in `ks` plus top 1%), AP, first-match rank (-1 if none).

    Chunked over queries so a 37k x 51k evaluation never holds a full score matrix."""
    ql, gl = np.asarray(query_labels), np.asarray(gallery_labels)
    q, g = l2_normalize(query_feats), l2_normalize(gallery_feats)
    if len(q) != len(ql) or len(g) != len(gl):
        raise ValueError("features and labels differ in length")
    k1 = top1pct_k(len(g))
    ks = tuple(ks or RECALL_KS)
    out = {f"R@{k}": np.zeros(len(q)) for k in ks}
    out.update({"R@top1%": np.zeros(len(q)), "AP": np.zeros(len(q)), "first_rank": np.full(len(q), -1, np.int64)})
    for s in range(0, len(q), _CHUNK):
        sl = slice(s, s + _CHUNK)
        order = np.argsort(-(q[sl] @ g.T), axis=1, kind="stable")
        good = _match_matrix(order, ql[sl], gl)
        for k in ks:
            out[f"R@{k}"][sl] = recall_at_k(good, k)
        out["R@top1%"][sl] = recall_at_k(good, k1)
        out["AP"][sl] = average_precision(good)
        has = good.any(axis=1)
        out["first_rank"][sl] = np.where(has, good.argmax(axis=1), -1)
    return out


def summarize(pq: dict[str, np.ndarray], mask: np.ndarray | None = None, num_gallery: int | None = None) -> dict[str, Any]:
    """Mean (in percent) of per-query results, optionally over a subset of queries."""
    sel = np.ones(len(pq["AP"]), bool) if mask is None else np.asarray(mask, bool)
    n = int(sel.sum())
    res: dict[str, Any] = {}
    for key in METRIC_KEYS:
        res[key] = float(100.0 * pq[key][sel].mean()) if n else None
    res["num_queries"] = n
    res["queries_without_match"] = int((pq["first_rank"][sel] < 0).sum())
    if num_gallery is not None:
        res["num_gallery"] = int(num_gallery)
        res["top1%_k"] = top1pct_k(num_gallery)
    return res


def evaluate_retrieval(query_feats: np.ndarray, query_labels: Sequence[Any], gallery_feats: np.ndarray,
                       gallery_labels: Sequence[Any]) -> dict[str, Any]:
    """R@1, R@5, R@10, R@top1%, AP in percent (mean over queries), plus counts."""
    pq = per_query(query_feats, query_labels, gallery_feats, gallery_labels)
    return summarize(pq, num_gallery=len(gallery_labels))
