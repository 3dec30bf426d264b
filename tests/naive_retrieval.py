"""Plain-Python University-1652 metrics, written from the reference evaluation
(University-1652 `evaluate_gpu.py`: `compute_mAP` and its caller), independently of
skyloc.core.metrics. Shared by the metric and eval tests so both check one definition.

Per query: score = cosine, gallery sorted by score descending; `good` = gallery items of the
query's location. The CMC curve is 0 before the first good rank r0 and 1 from r0 on; the
reported R@K is CMC[K - 1] and R@top1% is CMC[round(0.01 * G)] (Python's round), i.e. a hit
within the top round(0.01 G) + 1. AP is the trapezoid over the good ranks. A query without any
good item adds 0 to every sum, and every mean divides by the number of queries.
"""
from __future__ import annotations

import math


def _unit(v):
    n = math.sqrt(sum(float(a) * float(a) for a in v))
    return [float(a) / n for a in v]


def naive_cmc_ap(ranked_labels, label):
    """(cmc list of 0/1 by rank, ap) of one query whose gallery, best first, has `ranked_labels`;
    cmc is None when the query has no good item (the reference's cmc[0] = -1)."""
    rows_good = [r for r, g in enumerate(ranked_labels) if g == label]
    if not rows_good:
        return None, 0.0
    cmc = [0] * len(ranked_labels)
    for r in range(rows_good[0], len(ranked_labels)):
        cmc[r] = 1
    ngood = len(rows_good)
    ap = 0.0
    for i in range(ngood):
        d_recall = 1.0 / ngood
        precision = (i + 1) * 1.0 / (rows_good[i] + 1)
        old_precision = i * 1.0 / rows_good[i] if rows_good[i] != 0 else 1.0
        ap += d_recall * (old_precision + precision) / 2
    return cmc, ap


def naive_from_rankings(rankings, labels, num_gallery):
    """Metrics in percent from per-query ranked gallery labels (hand-made rankings)."""
    sums = {"R@1": 0.0, "R@5": 0.0, "R@10": 0.0, "R@top1%": 0.0, "AP": 0.0}
    for ranked, lab in zip(rankings, labels):
        cmc, ap = naive_cmc_ap(ranked, lab)
        if cmc is None:
            continue
        for name, idx in (("R@1", 0), ("R@5", 4), ("R@10", 9), ("R@top1%", round(num_gallery * 0.01))):
            sums[name] += cmc[min(idx, num_gallery - 1)]
        sums["AP"] += ap
    return {k: 100.0 * v / len(labels) for k, v in sums.items()}


def naive_metrics(qf, ql, gf, gl):
    """The University-1652 protocol on features: cosine score, rank descending (ties keep
    gallery order), then `naive_from_rankings`."""
    gal = [_unit(g) for g in gf]
    rankings = []
    for q in qf:
        qu = _unit(q)
        scores = [sum(a * b for a, b in zip(qu, g)) for g in gal]
        order = sorted(range(len(gal)), key=lambda j: -scores[j])
        rankings.append([gl[j] for j in order])
    return naive_from_rankings(rankings, list(ql), len(gl))
