"""Plain-Python University-1652 metrics: the independent reference the metric and eval tests
compare training.metrics against (shared so both test files check the same definition)."""
from __future__ import annotations

import math


def naive_metrics(qf, ql, gf, gl):
    """Plain-Python University-1652 protocol: cosine score, rank descending, R@K, trapezoidal AP.
    Queries without any true match count as 0."""
    def unit(v):
        n = math.sqrt(sum(float(a) * float(a) for a in v))
        return [float(a) / n for a in v]

    gal = [unit(g) for g in gf]
    k1 = max(1, round(len(gl) * 0.01))
    sums = {"R@1": 0.0, "R@5": 0.0, "R@10": 0.0, "R@top1%": 0.0, "AP": 0.0}
    for q, lab in zip(qf, ql):
        qu = unit(q)
        scores = [sum(a * b for a, b in zip(qu, g)) for g in gal]
        order = sorted(range(len(gal)), key=lambda j: -scores[j])
        true_ranks = [r for r, j in enumerate(order) if gl[j] == lab]
        if not true_ranks:
            continue
        for name, k in (("R@1", 1), ("R@5", 5), ("R@10", 10), ("R@top1%", k1)):
            sums[name] += 1.0 if true_ranks[0] < k else 0.0
        ap = 0.0
        for i, r in enumerate(true_ranks):
            p = (i + 1) / (r + 1)
            p_prev = 1.0 if r == 0 else i / r
            ap += (p_prev + p) / 2
        sums["AP"] += ap / len(true_ranks)
    return {k: 100.0 * v / len(ql) for k, v in sums.items()}
