"""Flight paths that stay where the whole camera footprint is valid.

plan_path: a centripetal Catmull-Rom spline through random waypoints (the path earlier versions
flew, kept so their seeds fly the same flights). steer_path: when no such path fits (a long
flight over a small or holed map), the aircraft flies at constant speed and turns: every frame
it picks the turn rate (within +- turn_rate_dps) nearest a smoothly wandering one whose arc
ahead stays inside the valid region -- a full circle at the tightest turn always qualifies where
there is room for it, so a flight of any length fits wherever the region is about two turn
radii wide.
"""
from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from skyloc.core import geo
from skyloc.core.errors import SkylocError
from skyloc.runtime.maps.base import GeoMap


def catmull_rom(points: np.ndarray, per_segment: int = 40) -> np.ndarray:
    """Dense centripetal Catmull-Rom curve through points[1:-1] (the ends only shape the tangents)."""
    out = []
    for i in range(1, len(points) - 2):
        p0, p1, p2, p3 = points[i - 1:i + 3]
        t0 = 0.0
        t1 = t0 + max(np.linalg.norm(p1 - p0), 1e-6) ** 0.5
        t2 = t1 + max(np.linalg.norm(p2 - p1), 1e-6) ** 0.5
        t3 = t2 + max(np.linalg.norm(p3 - p2), 1e-6) ** 0.5
        t = np.linspace(t1, t2, per_segment, endpoint=False)[:, None]
        a1 = (t1 - t) / (t1 - t0) * p0 + (t - t0) / (t1 - t0) * p1
        a2 = (t2 - t) / (t2 - t1) * p1 + (t - t1) / (t2 - t1) * p2
        a3 = (t3 - t) / (t3 - t2) * p2 + (t - t2) / (t3 - t2) * p3
        b1 = (t2 - t) / (t2 - t0) * a1 + (t - t0) / (t2 - t0) * a2
        b2 = (t3 - t) / (t3 - t1) * a2 + (t - t1) / (t3 - t1) * a3
        out.append((t2 - t) / (t2 - t1) * b1 + (t - t1) / (t2 - t1) * b2)
    out.append(points[-2][None])
    return np.concatenate(out)


class _Region:
    """Where the camera's ground foot may go: valid map eroded by the footprint radius, on a metric grid."""

    def __init__(self, gmap: GeoMap, clearance_m: float) -> None:
        lat_min, lon_min, lat_max, lon_max = gmap.bounds_latlon()
        self.lat0, self.lon0 = 0.5 * (lat_min + lat_max), 0.5 * (lon_min + lon_max)
        self.west, self.north = geo.latlon_to_local_m(lat_max, lon_min, self.lat0, self.lon0)
        east, south = geo.latlon_to_local_m(lat_min, lon_max, self.lat0, self.lon0)
        span = max(east - self.west, self.north - south)
        self.g = max(clearance_m / 8.0, span / 1000.0, 0.5)
        nx, ny = int((east - self.west) / self.g) + 1, int((self.north - south) / self.g) + 1
        e = self.west + (np.arange(nx) + 0.5) * self.g
        n = self.north - (np.arange(ny) + 0.5) * self.g
        ee, nn = np.meshgrid(e, n)
        la, lo = geo.local_m_to_latlon(ee, nn, self.lat0, self.lon0)
        valid = gmap.is_valid(la, lo).astype(np.uint8)
        r = int(math.ceil(clearance_m / self.g)) + 1
        disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        # Outside the grid is invalid: pad before eroding so the border erodes too.
        padded = cv2.copyMakeBorder(valid, r, r, r, r, cv2.BORDER_CONSTANT, value=0)
        self.ok = cv2.erode(padded, disk)[r:-r, r:-r].astype(bool)
        self.planner = "waypoints"  # or "steered": which planner's path was flown

    def inside(self, e: np.ndarray, n: np.ndarray) -> np.ndarray:
        c = np.floor((np.asarray(e) - self.west) / self.g).astype(np.int64)
        r = np.floor((self.north - np.asarray(n)) / self.g).astype(np.int64)
        h, w = self.ok.shape
        good = (c >= 0) & (c < w) & (r >= 0) & (r < h)
        out = np.zeros(np.shape(e), bool)
        out[good] = self.ok[r[good], c[good]]
        return out

    def random_point(self, rng: np.random.Generator) -> np.ndarray:
        rows, cols = np.nonzero(self.ok)
        i = int(rng.integers(0, rows.size))
        return np.array([self.west + (cols[i] + 0.5) * self.g, self.north - (rows[i] + 0.5) * self.g])


def plan_path(region: _Region, rng: np.random.Generator, cfg: Any, footprint_m: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """(positions (N, 2) east/north, headings (N,) deg) for the N frames."""
    n = max(1, int(round(cfg.seconds * cfg.fps)))
    need = cfg.speed_mps * (n - 1) / cfg.fps
    lo, hi = (f * footprint_m for f in cfg.leg_factor)
    if not region.ok.any():
        raise SkylocError(f"flight: no part of the map keeps the whole {footprint_m:.0f} m camera footprint "
                          "valid; lower --altitude or --fov, or use a larger map")
    for _ in range(cfg.max_tries):
        pts = [region.random_point(rng)]
        heading = rng.uniform(0, 2 * math.pi)
        length, stuck = 0.0, 0
        while length < need + 2 * hi and stuck < 60:
            turn = math.radians(cfg.max_turn_deg if stuck < 20 else 180.0)
            h = heading + rng.uniform(-turn, turn)
            leg = rng.uniform(lo, hi)
            nxt = pts[-1] + leg * np.array([math.sin(h), math.cos(h)])
            s = np.linspace(0, 1, int(leg / (region.g / 2)) + 2)[:, None]
            seg = pts[-1] + s * (nxt - pts[-1])
            if region.inside(seg[:, 0], seg[:, 1]).all():
                pts.append(nxt)
                heading, length, stuck = h, length + leg, 0
            else:
                stuck += 1
        if length < need + 2 * hi:
            continue
        # Extra end points give the spline its end tangents; start the flight one leg in.
        curve = catmull_rom(np.array([2 * pts[0] - pts[1]] + pts + [2 * pts[-1] - pts[-2]]), 60)
        if not region.inside(curve[:, 0], curve[:, 1]).all():
            continue
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(curve, axis=0), axis=1))])
        s0 = arc[np.searchsorted(arc, np.linalg.norm(pts[1] - pts[0]) * 0.5)]
        s = s0 + cfg.speed_mps * np.arange(n) / cfg.fps
        if s[-1] > arc[-1] - 1.0:
            continue
        pos = np.stack([np.interp(s, arc, curve[:, 0]), np.interp(s, arc, curve[:, 1])], 1)
        ahead = np.stack([np.interp(s + 1.0, arc, curve[:, 0]), np.interp(s + 1.0, arc, curve[:, 1])], 1)
        d = ahead - np.stack([np.interp(s - 1.0, arc, curve[:, 0]), np.interp(s - 1.0, arc, curve[:, 1])], 1)
        yaw = np.degrees(np.arctan2(d[:, 0], d[:, 1])) % 360.0
        return pos, yaw
    raise SkylocError(f"flight: could not fit a {need:.0f} m path inside the valid map after {cfg.max_tries} "
                      "tries; shorten --seconds, lower --speed or --altitude, or use a larger map")


def _arc(e: float, n: float, h: float, omega: np.ndarray, v: float, t: np.ndarray
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions and headings after times t (broadcast) at speed v and turn rate omega (rad/s);
    heading clockwise from north, so the velocity is v (sin h, cos h)."""
    h1 = h + omega * t
    small = np.abs(omega) < 1e-9
    w = np.where(small, 1.0, omega)
    de = np.where(small, v * t * np.sin(h), v / w * (np.cos(h) - np.cos(h1)))
    dn = np.where(small, v * t * np.cos(h), v / w * (np.sin(h1) - np.sin(h)))
    return e + de, n + dn, h1


def steer_path(region: _Region, rng: np.random.Generator, frames: int, fps: float, speed_mps: float,
               turn_rate_dps: float = 20.0, tries: int = 40) -> tuple[np.ndarray, np.ndarray] | None:
    """(positions (N, 2), headings (N,) deg) of a turning flight inside region, or None."""
    if not region.ok.any() or speed_mps <= 0:
        return None
    wmax = math.radians(turn_rate_dps)
    radius = speed_mps / wmax
    omegas = np.linspace(-wmax, wmax, 9)
    step = max(region.g / 2, 0.5)
    # probe a half turn ahead at most rates and the whole circle at the tightest (circling is always safe)
    k = int(math.ceil(2 * math.pi * radius / step)) + 1
    frac = np.linspace(0, 1, k)[None, :]
    span = np.where(np.abs(omegas) >= wmax - 1e-9, 2 * math.pi, math.pi + 1.0)[:, None] * radius / speed_mps
    probe_t = frac * span
    dt = 1.0 / fps
    for _ in range(tries):
        e, n = region.random_point(rng)
        h = float(rng.uniform(0, 2 * math.pi))
        wander = 0.0
        pos, yaw = [], []
        for _ in range(frames):
            pos.append((e, n))
            yaw.append(math.degrees(h) % 360.0)
            # Ornstein-Uhlenbeck wander of the wished turn rate: gentle curves when there is room
            wander = 0.8 * wander + 0.35 * wmax * float(rng.standard_normal())
            pe, pn, _ = _arc(e, n, h, omegas[:, None], speed_mps, probe_t)
            ok = region.inside(pe, pn).all(axis=1)
            if not ok.any():
                break
            choice = int(np.argmin(np.where(ok, np.abs(omegas - wander), np.inf)))
            e1, n1, h1 = _arc(e, n, h, np.array(omegas[choice]), speed_mps, np.array(dt))
            e, n, h = float(e1), float(n1), float(h1)
        if len(pos) == frames:
            return np.array(pos), np.array(yaw)
    return None


def fit_path(gmap: GeoMap, rng: np.random.Generator, cfg: Any, footprint_m: float, waypoints: bool = True
             ) -> tuple[np.ndarray, np.ndarray, _Region]:
    """The waypoint path when it fits (and waypoints), else a steered one: (positions, headings, region)."""
    region = _Region(gmap, footprint_m + cfg.margin_m)
    first = SkylocError(f"flight: no path keeps the whole {footprint_m:.0f} m camera footprint on the valid map")
    if waypoints:
        try:
            pos, yaw = plan_path(region, rng, cfg, footprint_m)
            return pos, yaw, region
        except SkylocError as exc:
            first = exc
    n = max(1, int(round(cfg.seconds * cfg.fps)))
    got = steer_path(region, rng, n, cfg.fps, cfg.speed_mps)
    if got is None:
        raise first
    region.planner = "steered"
    return got[0], got[1], region
