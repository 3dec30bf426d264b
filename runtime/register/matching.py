"""Descriptor matching and a pose-constrained RANSAC similarity, in numpy (torch-free).

Similarities are complex numbers: a point z = x + iy (image coords, y down) maps to q z + t, so
|q| is the scale and arg(q) the clockwise rotation on screen (the bearing convention of
register/base.py: `atan2(M[1, 0], M[0, 0])` of the equivalent 2x3 matrix [[a, -b, tx], [b, a, ty]]).

The RANSAC draws minimal two-point samples, keeps only hypotheses whose scale and rotation lie
inside the range the pose allows (a wrong place rarely fits both, so it gathers far fewer
inliers than an unconstrained fit would), scores them all at once, then refines the best by
least squares on its inliers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_CHUNK = 4096  # map descriptors per similarity block: 2048 x 4096 float32 = 32 MB


def mutual_nn(d1: np.ndarray, d2: np.ndarray, min_cos: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i1, i2, cos) of mutual nearest neighbours by cosine (rows L2-normalised) with cos > min_cos."""
    n1, n2 = len(d1), len(d2)
    if not n1 or not n2:
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0, np.float32)
    best12 = np.full(n1, -np.inf, np.float32)
    arg12 = np.zeros(n1, np.int64)
    arg21 = np.zeros(n2, np.int64)
    for s in range(0, n2, _CHUNK):
        block = d2[s:s + _CHUNK]
        # argmax along a row is ~50x faster than down a column: the transposed product is cheaper
        arg21[s:s + _CHUNK] = (block @ d1.T).argmax(axis=1)
        sim = d1 @ block.T
        j = sim.argmax(axis=1)
        v = sim[np.arange(n1), j]
        better = v > best12
        best12[better], arg12[better] = v[better], j[better] + s
    i1 = np.arange(n1)
    ok = (arg21[arg12] == i1) & (best12 > min_cos)
    return i1[ok], arg12[ok], best12[ok]


@dataclass
class Similarity:
    q: complex        # scale * exp(i * rotation)
    t: complex        # translation
    inliers: np.ndarray  # bool mask over the matches given
    rms_px: float     # RMS residual of the inliers, destination pixels

    @property
    def n(self) -> int:
        return int(self.inliers.sum())

    @property
    def scale(self) -> float:
        return abs(self.q)

    @property
    def rotation_deg(self) -> float:
        return math.degrees(math.atan2(self.q.imag, self.q.real))

    def apply(self, z: np.ndarray | complex) -> np.ndarray | complex:
        return self.q * z + self.t


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> tuple[complex, complex]:
    """Least-squares q, t with dst ~ q src + t (complex arrays, >= 2 points)."""
    ms, md = src.mean(), dst.mean()
    a, b = src - ms, dst - md
    q = complex(np.sum(np.conj(a) * b) / max(float(np.sum(np.abs(a) ** 2)), 1e-12))
    return q, complex(md - q * ms)


def _angle_ok(q: np.ndarray, centre_deg: float, half_deg: float) -> np.ndarray:
    if half_deg >= 180:
        return np.ones(q.shape, bool)
    d = (np.degrees(np.angle(q)) - centre_deg + 180.0) % 360.0 - 180.0
    return np.abs(d) <= half_deg


def ransac_similarity(src: np.ndarray, dst: np.ndarray, thr_px: float, scale_range: tuple[float, float],
                      rot_centre_deg: float = 0.0, rot_half_deg: float = 180.0, iters: int = 2000,
                      seed: int = 0) -> Similarity | None:
    """Best similarity dst ~ q src + t (complex (N,) arrays) with |q| in scale_range and arg(q)
    within rot_half_deg of rot_centre_deg; None when fewer than 2 matches or no hypothesis fits
    the constraints. Deterministic for a given seed."""
    n = len(src)
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, iters)
    j = (i + rng.integers(1, n, iters)) % n  # j != i
    ds = src[j] - src[i]
    good = np.abs(ds) > 1e-6
    q = np.where(good, (dst[j] - dst[i]) / np.where(good, ds, 1), 0)
    lo, hi = scale_range
    keep = good & (np.abs(q) >= lo) & (np.abs(q) <= hi) & _angle_ok(q, rot_centre_deg, rot_half_deg)
    if not keep.any():
        return None
    q, i = q[keep], i[keep]
    t = dst[i] - q * src[i]
    best, best_n = 0, -1
    for s in range(0, len(q), 512):  # hypotheses x matches residuals, in blocks
        r = np.abs(q[s:s + 512, None] * src[None] + t[s:s + 512, None] - dst[None])
        counts = (r < thr_px).sum(axis=1)
        k = int(counts.argmax())
        if counts[k] > best_n:
            best, best_n = s + k, int(counts[k])
    qb, tb = complex(q[best]), complex(t[best])
    inl = np.abs(qb * src + tb - dst) < thr_px
    for _ in range(3):  # refine on the inliers; keep the constraints
        if inl.sum() < 2:
            break
        q2, t2 = fit_similarity(src[inl], dst[inl])
        if not (lo <= abs(q2) <= hi and _angle_ok(np.array([q2]), rot_centre_deg, rot_half_deg)[0]):
            break
        inl2 = np.abs(q2 * src + t2 - dst) < thr_px
        if inl2.sum() < inl.sum():
            break
        qb, tb, inl = q2, t2, inl2
    res = np.abs(qb * src[inl] + tb - dst[inl])
    rms = float(np.sqrt(np.mean(res ** 2))) if inl.any() else float("inf")
    return Similarity(qb, tb, inl, rms)


def to_complex(xy: np.ndarray) -> np.ndarray:
    xy = np.asarray(xy, np.float64)
    return xy[:, 0] + 1j * xy[:, 1]
