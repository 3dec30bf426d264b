"""Temporal filter: reject fixes the aircraft cannot have flown to, smooth the rest.

Retrieval gives one independent guess per frame; most are near the truth, a few land on a
look-alike place kilometres away. The filter keeps an alpha-beta track (position + velocity)
in a local metric frame and:

- rejects a candidate whose distance from the last accepted position, minus `noise_m` (the
  retrieval's own position noise, about a tile stride, so two good fixes a tenth of a second
  apart are not read as a 300 m/s jump), divided by the elapsed time exceeds `max_speed_mps`;
- rejected candidates that agree with each other (pass the same speed gate among themselves)
  form a challenger; when the challenger has run for `max_rejections` frames in a row, and
  for at least as many frames as the current track has accepted fixes (capped at
  `max_support`), the filter re-initialises on it. So a wrong first fix, or a real gap (the
  camera was off), cannot lock the filter out forever, while a well-established track is not
  thrown away for a short streak of look-alike matches, and scattered outliers never win;
- optionally rejects candidates whose confidence is below `min_confidence`.

Confidence is the score margin between the best tile and the best tile of a *different*
place (centre more than `min_sep_m` away): neighbouring tiles of the right place overlap
and score almost the same, so the plain top-1/top-2 gap would say nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from skyloc.runtime.geo import haversine_m, latlon_to_local_m, local_m_to_latlon


@dataclass
class FixCandidate:
    """What the matcher proposes for one frame."""

    lat: float
    lon: float
    score: float = 0.0
    confidence: float = 1.0
    tile: int = -1


@dataclass
class FilteredFix:
    accepted: bool
    lat: float  # filtered estimate when accepted, else the raw candidate
    lon: float
    raw_lat: float
    raw_lon: float
    confidence: float
    reason: str | None  # None | "init" | "reinit" (accepted); "speed" | "low-confidence" (rejected)
    speed_mps: float | None = None  # implied speed from the last accepted position
    rejections: int = 0  # length of the current challenger streak (consistent speed rejections)


def place_margin(scores: np.ndarray, indices: np.ndarray, centers: np.ndarray, min_sep_m: float) -> float:
    """Score of the best hit minus the best hit at a distinct place (> min_sep_m away).

    `scores`/`indices` are one query's top-k (descending, -1 = missing); `centers` (N, 2) lat/lon.
    When every hit in the top-k is the same place, the margin is at least best - k-th score,
    which is what is returned (a lower bound, so confidence is never overstated).
    """
    valid = indices >= 0
    if not valid.any():
        return 0.0
    s, idx = scores[valid], indices[valid]
    best_lat, best_lon = centers[idx[0]]
    d = haversine_m(best_lat, best_lon, centers[idx[1:], 0], centers[idx[1:], 1])
    far = np.flatnonzero(np.asarray(d) > min_sep_m)
    other = s[1 + far[0]] if far.size else (s[-1] if s.size > 1 else 0.0)
    return float(s[0] - other)


def refine_position(scores: np.ndarray, indices: np.ndarray, centers: np.ndarray, radius_m: float) -> tuple[float, float]:
    """Score-weighted centre of the top-k hits within radius_m of the best one.

    The frame rarely sits exactly on a grid tile: it overlaps several neighbours, which all
    score high. Weighting their centres by how much each beats the k-th score (so unrelated
    hits weigh ~0, and the weights need no temperature tuned to a model's score range) puts
    the fix between grid points instead of snapping to one.
    """
    valid = indices >= 0
    s, idx = scores[valid].astype(np.float64), indices[valid]
    best = centers[idx[0]]
    if radius_m <= 0 or s.size < 2:
        return float(best[0]), float(best[1])
    d = np.asarray(haversine_m(best[0], best[1], centers[idx, 0], centers[idx, 1]))
    near = d <= radius_m
    w = (s - s[-1])[near]
    if not np.isfinite(w).all() or w.sum() <= 0:
        return float(best[0]), float(best[1])
    pts = centers[idx[near]]
    return float(pts[:, 0] @ w / w.sum()), float(pts[:, 1] @ w / w.sum())


class TemporalFilter:
    """Alpha-beta track of accepted fixes with a speed gate; see the module doc."""

    def __init__(self, max_speed_mps: float = 30.0, alpha: float = 0.5, beta: float = 0.1,
                 noise_m: float = 0.0, max_rejections: int = 5, min_confidence: float | None = None,
                 max_support: int | None = None) -> None:
        if max_speed_mps <= 0:
            raise ValueError("max_speed_mps must be > 0")
        if not 0.0 < alpha <= 1.0 or not 0.0 <= beta <= 1.0:
            raise ValueError("alpha must be in (0, 1] and beta in [0, 1]")
        self.max_speed_mps = max_speed_mps
        self.alpha = alpha  # 1.0 = no smoothing
        self.beta = beta
        self.noise_m = noise_m
        self.max_rejections = max(1, int(max_rejections))
        # a challenger never needs more than this many frames in a row (bounded recovery time)
        self.max_support = 3 * self.max_rejections if max_support is None else max(self.max_rejections, max_support)
        self.min_confidence = min_confidence
        self.reset()

    def reset(self) -> None:
        self._origin: tuple[float, float] | None = None
        self._pos = np.zeros(2)  # east, north metres about the origin
        self._vel = np.zeros(2)
        self._t: float | None = None
        self._rejections = 0
        self._support = 0  # accepted fixes in the current track
        self._challenger: tuple[float, float, float] | None = None  # last (lat, lon, t) of the streak
        self.last: tuple[float, float, float] | None = None  # (lat, lon, t) of the last accepted fix

    def _init(self, c: FixCandidate, t: float, reason: str) -> FilteredFix:
        self._origin = (c.lat, c.lon)
        self._pos[:] = 0.0
        self._vel[:] = 0.0
        self._t = t
        self._rejections = 0
        self._support = 1
        self._challenger = None
        self.last = (c.lat, c.lon, t)
        return FilteredFix(True, c.lat, c.lon, c.lat, c.lon, c.confidence, reason)

    def _implied_speed(self, lat: float, lon: float, t_from: float, c: FixCandidate, t: float) -> float:
        dist = haversine_m(lat, lon, c.lat, c.lon)
        return max(0.0, dist - self.noise_m) / max(t - t_from, 1e-6)

    def update(self, c: FixCandidate, t: float) -> FilteredFix:
        """Feed one candidate observed at time `t` (seconds, monotonic within a run)."""
        if self.min_confidence is not None and c.confidence < self.min_confidence:
            return FilteredFix(False, c.lat, c.lon, c.lat, c.lon, c.confidence, "low-confidence",
                               rejections=self._rejections)
        if self._origin is None or self._t is None:
            return self._init(c, t, "init")
        dt = t - self._t
        lat0, lon0 = self._origin
        last_lat, last_lon, _ = self.last  # type: ignore[misc]
        speed = self._implied_speed(last_lat, last_lon, self._t, c, t)
        if speed > self.max_speed_mps:
            ch = self._challenger
            if ch is not None and self._implied_speed(ch[0], ch[1], ch[2], c, t) <= self.max_speed_mps:
                self._rejections += 1
            else:  # a new streak starts here
                self._rejections = 1
            self._challenger = (c.lat, c.lon, t)
            need = max(self.max_rejections, min(self._support, self.max_support))
            if self._rejections >= need:
                fix = self._init(c, t, "reinit")
                fix.speed_mps = speed
                return fix
            return FilteredFix(False, c.lat, c.lon, c.lat, c.lon, c.confidence, "speed", speed, self._rejections)
        self._rejections = 0
        self._challenger = None
        self._support += 1
        z = np.array(latlon_to_local_m(c.lat, c.lon, lat0, lon0), dtype=np.float64)
        pred = self._pos + self._vel * max(dt, 0.0)
        r = z - pred
        self._pos = pred + self.alpha * r
        if dt > 1e-6:
            self._vel = self._vel + (self.beta / dt) * r
            v = float(np.hypot(*self._vel))
            if v > self.max_speed_mps:  # the gate already bounds the truth; keep the track sane too
                self._vel *= self.max_speed_mps / v
        self._t = t
        lat, lon = local_m_to_latlon(self._pos[0], self._pos[1], lat0, lon0)
        self.last = (float(lat), float(lon), t)
        return FilteredFix(True, float(lat), float(lon), c.lat, c.lon, c.confidence, None, speed, 0)

    def search_radius_m(self, t: float, window_m: float) -> float | None:
        """Radius around the last accepted fix that can hold the aircraft at time t, or None."""
        if self.last is None:
            return None
        return window_m + self.max_speed_mps * max(0.0, t - self.last[2])
