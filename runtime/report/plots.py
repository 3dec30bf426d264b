"""The report's pictures, drawn with OpenCV alone (no matplotlib on a drone computer).

`trajectory_png`: fixes over the map (or a metric grid), truth as a white line; `series_png`:
values over time (error vs truth); `latency_png`: per-stage latency percentiles as bars.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from skyloc.core import geo
from skyloc.core.atomic import write_bytes_atomic
from skyloc.core.errors import SkylocError

# BGR
GREEN, CYAN, RED, WHITE, BLACK, GREY = (0, 200, 0), (255, 220, 0), (0, 0, 230), (255, 255, 255), (0, 0, 0), (128, 128, 128)
ORANGE = (0, 140, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def write_png(path: str | os.PathLike, bgr: np.ndarray) -> Path:
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise SkylocError(f"cannot encode {path} as PNG")
    return write_bytes_atomic(path, buf.tobytes())


def _text(img: np.ndarray, s: str, xy: tuple[int, int], colour=BLACK, scale: float = 0.45, thick: int = 1) -> None:
    cv2.putText(img, s, xy, FONT, scale, colour, thick, cv2.LINE_AA)


def nice_step(span: float, target: int = 6) -> float:
    """A 1/2/5 x 10^n tick step giving about `target` ticks over span."""
    if not span > 0:
        return 1.0
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


class View:
    """Local east/north metres around a centre -> pixels of a north-up picture."""

    def __init__(self, lats: np.ndarray, lons: np.ndarray, max_px: int = 1000, margin: float = 0.08,
                 min_span_m: float = 100.0) -> None:
        self.lat0, self.lon0 = float(np.mean([lats.min(), lats.max()])), float(np.mean([lons.min(), lons.max()]))
        e, n = geo.latlon_to_local_m(lats, lons, self.lat0, self.lon0)
        half_w = max(float(np.max(np.abs(e))) * (1 + margin), min_span_m / 2)
        half_h = max(float(np.max(np.abs(n))) * (1 + margin), min_span_m / 2)
        self.mpp = 2 * max(half_w, half_h) / max_px
        self.w, self.h = max(200, int(2 * half_w / self.mpp)), max(200, int(2 * half_h / self.mpp))

    def px(self, lat: np.ndarray | float, lon: np.ndarray | float) -> np.ndarray:
        e, n = geo.latlon_to_local_m(np.asarray(lat, float), np.asarray(lon, float), self.lat0, self.lon0)
        x = self.w / 2 + np.asarray(e) / self.mpp
        y = self.h / 2 - np.asarray(n) / self.mpp
        return np.stack([x, y], -1)

    def background(self, gmap: Any | None) -> np.ndarray:
        """The map under the view (BGR, grey where it has no data), or a grey canvas with a metric grid."""
        img = np.full((self.h, self.w, 3), 70, np.uint8)
        if gmap is not None:
            xs = (np.arange(self.w) + 0.5 - self.w / 2) * self.mpp
            ys = (self.h / 2 - np.arange(self.h) - 0.5) * self.mpp
            e, n = np.meshgrid(xs, ys)
            lat, lon = geo.local_m_to_latlon(e, n, self.lat0, self.lon0)
            rgb, valid = gmap.sample(lat, lon, footprint_m=self.mpp)
            img[valid] = rgb[valid][:, ::-1]
            return img
        step = nice_step(self.w * self.mpp, 8)
        for k in range(-int(self.w * self.mpp / step), int(self.w * self.mpp / step) + 1):
            x = int(round(self.w / 2 + k * step / self.mpp))
            cv2.line(img, (x, 0), (x, self.h), (90, 90, 90), 1)
        for k in range(-int(self.h * self.mpp / step), int(self.h * self.mpp / step) + 1):
            y = int(round(self.h / 2 + k * step / self.mpp))
            cv2.line(img, (0, y), (self.w, y), (90, 90, 90), 1)
        return img

    def decorate(self, img: np.ndarray) -> None:
        """Scale bar and north arrow."""
        target = self.w * self.mpp / 5
        bar_m = max(m * 10 ** e for e in range(-1, 7) for m in (1, 2, 5) if m * 10 ** e <= max(target, 0.1))
        L = int(round(bar_m / self.mpp))
        x0, y0 = 15, self.h - 20
        cv2.rectangle(img, (x0 - 6, y0 - 22), (x0 + L + 70, y0 + 8), WHITE, -1)
        cv2.line(img, (x0, y0), (x0 + L, y0), BLACK, 3)
        _text(img, f"{bar_m:g} m", (x0 + L + 6, y0 + 4))
        cx, cy = self.w - 25, 45
        cv2.arrowedLine(img, (cx, cy + 25), (cx, cy - 10), WHITE, 3, tipLength=0.4)
        _text(img, "N", (cx - 6, cy + 42), WHITE, 0.6, 2)


def trajectory_png(path: str | os.PathLike, fixes: Sequence[dict[str, Any]], truth: Sequence[tuple[float, float]],
                   gmap: Any | None = None, title: str = "") -> Path:
    """Fixes over the map: accepted (green dots joined), verified (cyan ring), rejected (red x), truth (white)."""
    pos = [(f["lat"], f["lon"]) for f in fixes]
    allpts = np.array(pos + list(truth), float).reshape(-1, 2)
    if not len(allpts):
        raise SkylocError("report: the run holds no fix and no truth to draw (every frame was skipped)")
    view = View(allpts[:, 0], allpts[:, 1])
    img = view.background(gmap)
    if len(truth) >= 2:
        t = view.px(*np.array(truth, float).T).round().astype(np.int32)
        cv2.polylines(img, [t], False, BLACK, 4, cv2.LINE_AA)
        cv2.polylines(img, [t], False, WHITE, 2, cv2.LINE_AA)
    acc = [f for f in fixes if f.get("accepted")]
    if len(acc) >= 2:
        a = view.px(np.array([f["lat"] for f in acc]), np.array([f["lon"] for f in acc])).round().astype(np.int32)
        cv2.polylines(img, [a], False, GREEN, 1, cv2.LINE_AA)
    counts = {"accepted": 0, "verified": 0, "rejected": 0}
    for f in fixes:
        x, y = (int(v) for v in view.px(f["lat"], f["lon"]).round())
        if not f.get("accepted"):
            counts["rejected"] += 1
            cv2.drawMarker(img, (x, y), RED, cv2.MARKER_TILTED_CROSS, 9, 2, cv2.LINE_AA)
            continue
        counts["accepted"] += 1
        cv2.circle(img, (x, y), 3, GREEN, -1, cv2.LINE_AA)
        if f.get("verified"):
            counts["verified"] += 1
            cv2.circle(img, (x, y), 6, CYAN, 2, cv2.LINE_AA)
    view.decorate(img)
    legend = [(f"accepted ({counts['accepted']})", GREEN), (f"verified ({counts['verified']})", CYAN),
              (f"rejected ({counts['rejected']})", RED)] + ([("truth", WHITE)] if truth else [])
    cv2.rectangle(img, (8, 8), (200, 18 + 20 * len(legend) + (20 if title else 0)), (40, 40, 40), -1)
    y = 28
    if title:
        _text(img, title[:28], (14, y), WHITE)
        y += 20
    for label, colour in legend:
        cv2.circle(img, (22, y - 5), 5, colour, -1)
        _text(img, label, (34, y), WHITE)
        y += 20
    return write_png(path, img)


def _axes(img: np.ndarray, box: tuple[int, int, int, int], xr: tuple[float, float], yr: tuple[float, float],
          xlabel: str, ylabel: str, title: str):
    x0, y0, x1, y1 = box
    cv2.rectangle(img, (x0, y0), (x1, y1), BLACK, 1)

    def to_px(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        px = x0 + (np.asarray(x, float) - xr[0]) / (xr[1] - xr[0]) * (x1 - x0)
        py = y1 - (np.asarray(y, float) - yr[0]) / (yr[1] - yr[0]) * (y1 - y0)
        return np.stack([px, py], -1).round().astype(np.int32)

    for lo, hi, axis in ((xr[0], xr[1], "x"), (yr[0], yr[1], "y")):
        step = nice_step(hi - lo)
        v = math.ceil(lo / step) * step
        while v <= hi + 1e-9:
            if axis == "x":
                (px, _), = to_px([v], [yr[0]])
                cv2.line(img, (int(px), y1), (int(px), y1 + 5), BLACK, 1)
                _text(img, f"{v:g}", (int(px) - 12, y1 + 20), BLACK, 0.4)
            else:
                (_, py), = to_px([xr[0]], [v])
                cv2.line(img, (x0 - 5, int(py)), (x1, int(py)), (220, 220, 220), 1)
                _text(img, f"{v:g}", (5, int(py) + 4), BLACK, 0.4)
            v += step
    _text(img, xlabel, ((x0 + x1) // 2 - 40, y1 + 40))
    _text(img, ylabel, (5, y0 - 10))
    _text(img, title, (x0 + 60, y0 - 10), BLACK, 0.5)
    return to_px


def series_png(path: str | os.PathLike, series: Sequence[tuple[str, np.ndarray, np.ndarray, tuple, str]],
               xlabel: str, ylabel: str, title: str) -> Path:
    """Points / lines over x: each series is (label, x, y, BGR colour, 'dot' | 'line')."""
    W, H = 900, 420
    img = np.full((H, W, 3), 255, np.uint8)
    xs = np.concatenate([s[1] for s in series if len(s[1])]) if any(len(s[1]) for s in series) else np.array([0.0])
    ys = np.concatenate([s[2] for s in series if len(s[2])]) if any(len(s[2]) for s in series) else np.array([0.0])
    xr = (float(xs.min()), float(xs.max()) if xs.max() > xs.min() else float(xs.min()) + 1.0)
    yr = (0.0, float(np.percentile(ys, 99)) * 1.1 if len(ys) and np.percentile(ys, 99) > 0 else 1.0)
    to_px = _axes(img, (60, 40, W - 170, H - 50), xr, yr, xlabel, ylabel, title)
    for i, (label, x, y, colour, style) in enumerate(series):
        if len(x):
            p = to_px(x, np.minimum(y, yr[1]))  # clipped at the top so outliers stay visible
            if style == "line" and len(p) >= 2:
                cv2.polylines(img, [p], False, colour, 2, cv2.LINE_AA)
            else:
                for q in p:
                    cv2.circle(img, (int(q[0]), int(q[1])), 3, colour, -1, cv2.LINE_AA)
        cv2.circle(img, (W - 155, 55 + 22 * i), 5, colour, -1)
        _text(img, f"{label} ({len(x)})", (W - 145, 60 + 22 * i), BLACK, 0.42)
    return write_png(path, img)


def latency_png(path: str | os.PathLike, latency: dict[str, dict[str, float | None]], title: str) -> Path:
    """Horizontal bars per stage: p50 (bar), p90 and max (ticks)."""
    stages = [s for s, v in latency.items() if v.get("p50") is not None]
    W, H = 900, 80 + 40 * max(1, len(stages))
    img = np.full((H, W, 3), 255, np.uint8)
    top = max([float(latency[s]["max"] or 0) for s in stages] + [1.0])
    x0, x1 = 120, W - 290  # bars left, numbers in a column on the right
    to_x = lambda v: int(round(x0 + v / top * (x1 - x0)))  # noqa: E731
    _text(img, title, (x0, 25), BLACK, 0.5)
    for i, s in enumerate(stages):
        v = latency[s]
        y = 50 + 40 * i
        _text(img, s, (10, y + 17))
        cv2.rectangle(img, (x0, y), (to_x(v["p50"]), y + 24), (200, 140, 60), -1)
        for key, colour in (("p90", ORANGE), ("max", RED)):
            if v.get(key) is not None:
                cv2.line(img, (to_x(v[key]), y - 2), (to_x(v[key]), y + 26), colour, 2)
        _text(img, f"p50 {v['p50']:.1f}  p90 {v['p90']:.1f}  max {v['max']:.1f} ms", (x1 + 15, y + 17), BLACK, 0.42)
    _text(img, "bar: p50, orange: p90, red: max", (x0, H - 12), GREY, 0.4)
    return write_png(path, img)
