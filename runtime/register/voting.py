"""Where in a large window of map keypoints the frame lies: translation voting, then matching
inside a small sub-window around each voted place.

Mutual nearest neighbours over a whole large window fail for a small frame: every frame
keypoint competes with all the look-alike map keypoints of the window, and its true match stops
being its single nearest one. Measured on a cross-domain flight over the aerovloc map at 80 m
(a 76 m patch, stored map features, heading unknown, registered at the truth): 31-61 RANSAC
inliers in a 120 m window, 7-24 in a 300 m one, 3-9 in a 600 m one (the start prior's scan):
never verified. The pairs that vote are mutual nearest neighbours within a neighbourhood of a
few cells (`local_mutual_pairs`): a map keypoint's best frame keypoint (few candidates: usually
the true one) that also picks it as its best nearby. Taking each frame keypoint's near-best
matches over the whole window instead buried the true one (median rank 48 at cosine 0.78 vs
0.85 for the best, in a 600 m window); a map keypoint's best frame keypoint alone let generic
frame keypoints cluster votes anywhere. With the pose's scale known and the frame turned to one
rotation hypothesis, each pair (frame point c, map point m) says where the frame's centre lies,
m - q0 e^(i turn) (c - centre), over residual turns 5 deg apart; true pairs agree to a few
pixels, wrong ones scatter. The strongest separated peaks are the places to look at; each is
then matched as a window of its own (mutual nearest neighbours among the map keypoints the frame
can overlap there, learned.py), so verification sees the kind of match a small window gives.
On that flight: 9-12 of 20 frames verified from the 300 m prior scan and the track instead of 1-2.
Cost: one frame x map product per rotation, as before (the photo, 1024 voting keypoints, against
91k stored keypoints of 1.08 km^2, 12 rotations: 4.6 s on this 2-core CPU).
"""
from __future__ import annotations

import math

import numpy as np

ROWS = 8192           # map keypoints per similarity block (8192 x 2048 frame keypoints x 4 B = 64 MB at most)


MAX_CELLS = 4096      # cell maxima are cells x frame keypoints float32: 4096 x 1024 x 4 B = 16 MB (x3 in flight)


def cell_size(cell_px: float, width_px: float, height_px: float) -> float:
    """cell_px, or coarser so that a width x height window holds at most MAX_CELLS cells (a whole
    map of tens of km^2 would otherwise ask for gigabytes)."""
    return max(float(cell_px), math.sqrt(max(width_px, 1.0) * max(height_px, 1.0) / MAX_CELLS))


def local_mutual_pairs(d1: np.ndarray, d2: np.ndarray, xy2: np.ndarray, cell_px: float, min_cos: float
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i1, i2, cos): map keypoint i2 (rows of d2 at complex px xy2) whose best frame keypoint is
    i1, and which is i1's best among the map keypoints of its own and the 8 neighbouring cells of
    cell_px: mutual nearest neighbours inside a ~3-cell neighbourhood, wherever it lies."""
    n1, n2 = len(d1), len(d2)
    if not n1 or not n2:
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0, np.float32)
    cell_px = cell_size(cell_px, float(np.ptp(xy2.real)), float(np.ptp(xy2.imag)))
    cx = np.floor((xy2.real - xy2.real.min()) / cell_px).astype(np.int64)
    cy = np.floor((xy2.imag - xy2.imag.min()) / cell_px).astype(np.int64)
    nx, ny = int(cx.max()) + 1, int(cy.max()) + 1
    cid = cy * nx + cx
    order = np.argsort(cid, kind="stable")
    d1t = np.ascontiguousarray(np.asarray(d1, np.float32).T)
    best = np.zeros(n2, np.int64)
    best_cos = np.zeros(n2, np.float32)
    cellmax = np.full((ny * nx, n1), -np.inf, np.float32)
    for s in range(0, n2, ROWS):
        rows = order[s:s + ROWS]
        sim = np.asarray(d2[rows], np.float32) @ d1t
        a = sim.argmax(axis=1)
        best[rows], best_cos[rows] = a, sim[np.arange(len(a)), a]
        c = cid[rows]
        starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
        # a loop of row-block maxima: ~12x faster than np.maximum.reduceat down axis 0; a cell cut
        # by a block edge appears in two blocks, hence the running maximum
        for a0, a1 in zip(starts, np.r_[starts[1:], len(rows)]):
            np.maximum(cellmax[c[a0]], sim[a0:a1].max(axis=0), out=cellmax[c[a0]])
    grid = np.pad(cellmax.reshape(ny, nx, n1), ((1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    near = grid[0:ny, 0:nx].copy()
    for dy in range(3):
        for dx in range(3):
            if dy or dx:
                np.maximum(near, grid[dy:dy + ny, dx:dx + nx], out=near)
    keep = np.flatnonzero((best_cos >= near[cy, cx, best]) & (best_cos > min_cos))
    return best[keep], keep, best_cos[keep]


def vote_places(src: np.ndarray, dst: np.ndarray, q0: float, centre: complex, turns_deg: np.ndarray,
                shape: tuple[int, int], bin_px: float, n_places: int, min_sep_px: float
                ) -> list[tuple[complex, float]]:
    """The n_places strongest places (complex map px of the frame centre, votes) where the pairs
    src -> dst (complex px) agree on the frame centre, dst - q0 e^(i turn) (src - centre), over
    the small residual turns given; at least min_sep_px apart, inside the (h, w) window."""
    h, w = shape
    if not len(src) or n_places < 1:
        return []
    nx, ny = int(math.ceil(w / bin_px)) + 2, int(math.ceil(h / bin_px)) + 2
    best: list[tuple[float, complex]] = []
    for turn in turns_deg:
        c = dst - q0 * complex(math.cos(math.radians(turn)), math.sin(math.radians(turn))) * (src - centre)
        bx = np.floor(c.real / bin_px).astype(np.int64) + 1
        by = np.floor(c.imag / bin_px).astype(np.int64) + 1
        inside = (bx >= 0) & (bx < nx) & (by >= 0) & (by < ny)
        grid = np.zeros((ny + 2, nx + 2))
        np.add.at(grid, (by[inside] + 1, bx[inside] + 1), 1.0)
        # 3 x 3 sum: a peak straddling bin edges
        smooth = sum(grid[dy:dy + ny, dx:dx + nx] for dy in range(3) for dx in range(3))
        for _ in range(n_places):
            k = int(smooth.argmax())
            y, x = divmod(k, nx)
            v = float(smooth[y, x])
            if v < 2:
                break
            sel = inside & (np.abs(by - y) <= 1) & (np.abs(bx - x) <= 1)
            best.append((v, complex(c[sel].mean())))
            r = int(math.ceil(min_sep_px / bin_px))  # the rest of this place's cluster is not another place
            smooth[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1] = 0.0
    best.sort(key=lambda p: -p[0])
    places: list[tuple[complex, float]] = []
    for v, p in best:
        if all(abs(p - q) >= min_sep_px for q, _ in places):
            places.append((p, v))
            if len(places) == n_places:
                break
    return places
