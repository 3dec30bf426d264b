"""Temporal filter: reject fixes the aircraft cannot have flown to, smooth the rest by their accuracy.

Each frame gives one independent position with its own 1-sigma horizontal accuracy: a few metres
when map registration verified it, about a tile when only retrieval stands behind it. The filter
keeps a constant-velocity Kalman track (position + velocity, the same model on both axes) in a
local metric frame and:

- gates each candidate on speed with both accuracies allowed for: the distance from the last
  accepted position, minus `gate_sigmas` x (candidate accuracy + track accuracy) and `noise_m`,
  divided by the elapsed time, must not exceed `max_speed_mps`. So two good fixes a tenth of a
  second apart are not read as a 300 m/s jump, and a 2 m fix is held to a tighter gate than a
  50 m one;
- smooths with the Kalman gain, i.e. weights each fix by its inverse variance: a verified 2 m fix
  moves the track almost all the way, an unverified 50 m fix barely nudges it;
- trusts verified fixes first. A verified fix that disagrees with a track built only from
  unverified fixes replaces it at once. An unverified fix never re-initialises a track that holds
  verified fixes (its rejections do not count), so look-alike retrieval matches cannot drag a
  verified track away;
- rejected candidates of the same kind that agree with each other (pass the speed gate among
  themselves) form a challenger; when it has run for `max_rejections` frames in a row and for at
  least as many frames as the track has accepted fixes (capped at `max_support`), the filter
  re-initialises on it. So a wrong first fix, or a real gap, cannot lock the filter out forever,
  while an established track is not thrown away for a short streak of look-alikes;
- holds a new track's fixes back (`accepted` False, reason "init" / "tentative") until `confirm`
  fixes agree; before that a disagreeing fix simply starts the track over (a tentative track is
  not defended), so one look-alike match can start a track but never be sent;
- optionally rejects candidates whose confidence is below `min_confidence`, and always those with
  a non-finite position or accuracy (they never touch the track).

Confidence is the score margin between the best tile and the best tile of a *different* place
(centre more than `min_sep_m` away): neighbouring tiles of the right place overlap and score
almost the same, so the plain top-1/top-2 gap would say nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from skyloc.core.geo import haversine_m, latlon_to_local_m, local_m_to_latlon
from skyloc.runtime.outputs.schema import FixStatus


@dataclass
class FixCandidate:
    """What one frame proposes: a position with its 1-sigma horizontal accuracy."""

    lat: float
    lon: float
    accuracy_m: float = 50.0
    verified: bool = False
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
    accuracy_m: float  # 1-sigma of (lat, lon): the track's when accepted, else the candidate's
    confidence: float
    reason: str | None  # None | "init" | "reinit" (accepted); "speed" | "low-confidence" | "non-finite"
    speed_mps: float | None = None  # implied speed from the last accepted position
    rejections: int = 0  # length of the current challenger streak
    verified: bool = False  # the candidate was verified by registration


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


def distinct_places(scores: np.ndarray, indices: np.ndarray, centers: np.ndarray, min_sep_m: float,
                    limit: int) -> list[int]:
    """Positions in the top-k (best first) of at most `limit` hits more than min_sep_m apart."""
    keep: list[int] = []
    for j, i in enumerate(indices):
        if i < 0 or not math.isfinite(float(scores[j])):
            continue
        lat, lon = centers[i]
        if all(float(haversine_m(lat, lon, *centers[indices[q]])) > min_sep_m for q in keep):
            keep.append(j)
            if len(keep) >= limit:
                break
    return keep


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


def _finite_pos(x: float, name: str) -> float:
    if not (isinstance(x, (int, float)) and math.isfinite(x) and x > 0):
        raise ValueError(f"{name} must be a finite number > 0 (got {x!r})")
    return float(x)


class TemporalFilter:
    """Constant-velocity Kalman track of accepted fixes with a speed gate; see the module doc."""

    def __init__(self, max_speed_mps: float = 30.0, accel_mps2: float = 3.0, noise_m: float = 0.0,
                 gate_sigmas: float = 3.0, max_rejections: int = 5, min_confidence: float | None = None,
                 max_support: int | None = None, confirm: int = 1) -> None:
        self.max_speed_mps = _finite_pos(max_speed_mps, "max_speed_mps")
        self.accel_mps2 = _finite_pos(accel_mps2, "accel_mps2")  # process noise: unmodelled acceleration
        if not (math.isfinite(noise_m) and noise_m >= 0) or not (math.isfinite(gate_sigmas) and gate_sigmas >= 0):
            raise ValueError("noise_m and gate_sigmas must be finite and >= 0")
        if min_confidence is not None and not math.isfinite(min_confidence):
            raise ValueError("min_confidence must be finite")
        self.noise_m = float(noise_m)
        self.gate_sigmas = float(gate_sigmas)
        self.max_rejections = max(1, int(max_rejections))
        # a challenger never needs more than this many frames in a row (bounded recovery time)
        self.max_support = 3 * self.max_rejections if max_support is None else max(self.max_rejections, max_support)
        self.min_confidence = min_confidence
        self.confirm = max(1, int(confirm))
        self.reset()

    def reset(self) -> None:
        self._origin: tuple[float, float] | None = None
        self._x = np.zeros((2, 2))  # rows: east, north; columns: position, velocity
        self._p = np.zeros((2, 2))  # covariance of (position, velocity), the same on both axes
        self._t: float | None = None
        self._rejections = 0
        self._support = 0  # accepted fixes in the current track
        self.verified_support = 0  # ...of which verified
        self._challenger: tuple[float, float, float, float, bool] | None = None  # lat, lon, t, acc, verified
        self.last: tuple[float, float, float] | None = None  # (lat, lon, t) of the last accepted fix
        self.last_accuracy_m: float | None = None

    @property
    def sigma_m(self) -> float:
        return math.sqrt(max(self._p[0, 0], 0.0))

    def _init(self, c: FixCandidate, t: float, reason: str, support: int = 1) -> FilteredFix:
        self._origin = (c.lat, c.lon)
        self._x[:] = 0.0
        self._p = np.diag([c.accuracy_m ** 2, self.max_speed_mps ** 2])
        self._t = t
        self._rejections = 0
        self._support = support
        self.verified_support = int(c.verified)
        self._challenger = None
        self.last = (c.lat, c.lon, t)
        self.last_accuracy_m = c.accuracy_m
        return FilteredFix(support >= self.confirm, c.lat, c.lon, c.lat, c.lon, c.accuracy_m, c.confidence, reason,
                           verified=c.verified)

    def _implied_speed(self, lat: float, lon: float, acc: float, t_from: float, c: FixCandidate, t: float) -> float:
        dist = float(haversine_m(lat, lon, c.lat, c.lon))
        slack = self.noise_m + self.gate_sigmas * (acc + c.accuracy_m)
        return max(0.0, dist - slack) / max(t - t_from, 1e-6)

    def _reject(self, c: FixCandidate, reason: str, speed: float | None = None) -> FilteredFix:
        return FilteredFix(False, c.lat, c.lon, c.lat, c.lon, c.accuracy_m, c.confidence, reason, speed,
                           self._rejections, c.verified)

    def update(self, c: FixCandidate, t: float) -> FilteredFix:
        """Feed one candidate observed at time `t` (seconds, monotonic within a run)."""
        if not all(math.isfinite(v) for v in (c.lat, c.lon, c.accuracy_m, t)) or c.accuracy_m <= 0:
            return self._reject(c, FixStatus.NON_FINITE)
        if self.min_confidence is not None and not c.confidence >= self.min_confidence:
            return self._reject(c, FixStatus.LOW_CONFIDENCE)
        if self._origin is None or self._t is None or self.last is None:
            return self._init(c, t, FixStatus.INIT)
        last_lat, last_lon, _ = self.last
        speed = self._implied_speed(last_lat, last_lon, self.sigma_m, self._t, c, t)
        if speed > self.max_speed_mps:
            if self._support < self.confirm and (c.verified or self.verified_support == 0):
                fix = self._init(c, t, FixStatus.INIT)  # a tentative track is not defended: start over here
                fix.speed_mps = speed
                return fix
            if c.verified and self.verified_support == 0:
                fix = self._init(c, t, FixStatus.REINIT)  # verified beats a retrieval-only track
                fix.speed_mps = speed
                return fix
            if not c.verified and self.verified_support > 0:
                # never a challenger to verified history: count nothing
                return self._reject(c, FixStatus.SPEED, speed)
            ch = self._challenger
            if ch is not None and ch[4] == c.verified and \
                    self._implied_speed(ch[0], ch[1], ch[3], ch[2], c, t) <= self.max_speed_mps:
                self._rejections += 1
            else:  # a new streak starts here
                self._rejections = 1
            self._challenger = (c.lat, c.lon, t, c.accuracy_m, c.verified)
            need = max(self.max_rejections, min(self._support, self.max_support))
            if self._rejections >= need:
                fix = self._init(c, t, FixStatus.REINIT, support=self.confirm)  # the streak confirmed it
                fix.speed_mps = speed
                return fix
            return self._reject(c, FixStatus.SPEED, speed)
        self._rejections = 0
        self._challenger = None
        self._support += 1
        self.verified_support += int(c.verified)
        lat, lon, sigma = self._kalman(c, t)
        self.last = (lat, lon, t)
        self.last_accuracy_m = sigma
        ok = self._support >= self.confirm
        return FilteredFix(ok, lat, lon, c.lat, c.lon, sigma, c.confidence, None if ok else FixStatus.TENTATIVE, speed, 0,
                           c.verified)

    def _kalman(self, c: FixCandidate, t: float) -> tuple[float, float, float]:
        assert self._origin is not None and self._t is not None
        dt = max(t - self._t, 0.0)
        f = np.array([[1.0, dt], [0.0, 1.0]])
        q = self.accel_mps2 ** 2 * np.array([[dt ** 4 / 4, dt ** 3 / 2], [dt ** 3 / 2, dt ** 2]])
        x = self._x @ f.T  # each axis: (pos, vel) -> F (pos, vel)
        p = f @ self._p @ f.T + q
        r = c.accuracy_m ** 2
        gain = p[:, 0] / (p[0, 0] + r)  # inverse-variance weighting of prediction and fix
        z = np.array(latlon_to_local_m(c.lat, c.lon, *self._origin), dtype=np.float64)
        x = x + np.outer(z - x[:, 0], gain)
        p = p - np.outer(gain, p[0, :])
        v = float(np.hypot(*x[:, 1]))
        if v > self.max_speed_mps:  # the gate already bounds the truth; keep the track sane too
            x[:, 1] *= self.max_speed_mps / v
        self._x, self._p, self._t = x, 0.5 * (p + p.T), t
        lat, lon = local_m_to_latlon(x[0, 0], x[1, 0], *self._origin)
        return float(lat), float(lon), self.sigma_m

    def velocity_ne(self) -> tuple[float, float] | None:
        """(north, east) m/s of the track, or None before two fixes."""
        if self._support < 2:
            return None
        return float(self._x[1, 1]), float(self._x[0, 1])

    def search_radius_m(self, t: float, window_m: float) -> float | None:
        """Radius around the last accepted fix that can hold the aircraft at time t, or None."""
        if self.last is None:
            return None
        return window_m + self.max_speed_mps * max(0.0, t - self.last[2])
