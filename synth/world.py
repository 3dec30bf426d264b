"""A seeded procedural orthophoto: the built-in map for the demo and the tests.

The world is a Voronoi patchwork of zones (towns, industry, fields, forest, parks, orchards)
overlaid with a river, ponds, main roads and tracks. Every zone type has varied orientation,
scale and palette, so 64-128 px crops of 50-200 m differ enough for a small CNN to tell places
apart. Everything is drawn in pixels with OpenCV from one np.random.default_rng(seed): the same
seed gives the same bytes. `make_world` writes map.png + map.csv (corners CSV), so the world is
read back through runtime.maps.open_map like any user map.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from skyloc.core import geo
from skyloc.core.errors import SkylocError
from skyloc.runtime.maps.mosaic import write_corners_csv
from skyloc.synth.world_zones import (
    ZONE_P,
    ZONES,
    _fields,
    _noise,
    _Painter,
    _park,
    _town,
    _woods,
)

# Default anchor: farmland and villages west of Bern, Switzerland (any plausible place works).
DEFAULT_LAT, DEFAULT_LON = 46.9480, 7.3000
@dataclass
class WorldConfig:
    size_m: float = 1500.0
    mpp: float = 1.0
    lat: float = DEFAULT_LAT  # centre of the world
    lon: float = DEFAULT_LON
    seed: int = 0
    zone_m: float = 230.0  # typical zone diameter


def _curve(rng: np.random.Generator, size_px: int, n: int = 200) -> np.ndarray:
    """A smooth random curve between points on two different map edges (pixel coords, may overrun)."""
    def edge_point(e: int) -> np.ndarray:
        t = rng.uniform(0.1, 0.9) * size_px
        return np.array([(t, -20.0), (size_px + 20.0, t), (t, size_px + 20.0), (-20.0, t)][e])
    e0 = int(rng.integers(0, 4))
    e1 = (e0 + int(rng.integers(1, 4))) % 4
    a, b = edge_point(e0), edge_point(e1)
    t = np.linspace(0, 1, n)[:, None]
    d = b - a
    normal = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-9)
    wiggle = sum(rng.uniform(-0.06, 0.06) * size_px / f * np.sin(math.pi * f * t) for f in (1, 2, 3))
    return a + t * d + wiggle * normal


def generate_world(cfg: WorldConfig) -> np.ndarray:
    """The RGB world image (H, W, 3) uint8, north up, cfg.mpp metres per pixel."""
    if cfg.size_m <= 0 or cfg.mpp <= 0 or cfg.size_m / cfg.mpp < 64:
        raise SkylocError(f"world: size_m={cfg.size_m}, mpp={cfg.mpp} must give at least 64 pixels a side")
    rng = np.random.default_rng(cfg.seed)
    k = 1.0 / cfg.mpp
    n_px = int(round(cfg.size_m * k))
    img = np.zeros((n_px, n_px, 3), np.float32)
    # Zones: Voronoi cells of jittered seeds.
    n_side = max(2, int(round(cfg.size_m / cfg.zone_m)))
    g = (np.arange(n_side) + 0.5) / n_side * n_px
    sx, sy = np.meshgrid(g, g)
    seeds = np.stack([sx.ravel(), sy.ravel()], 1) + rng.uniform(-0.35, 0.35, (n_side * n_side, 2)) * n_px / n_side
    types = rng.choice(len(ZONES), len(seeds), p=ZONE_P)
    # Voronoi cells as polygons (cv2.Subdiv2D): far cheaper than a per-pixel nearest-seed search.
    sub = cv2.Subdiv2D((0, 0, n_px, n_px))
    for x, y in seeds:
        sub.insert((float(x), float(y)))
    facets, _ = sub.getVoronoiFacetList([])
    label = np.zeros((n_px, n_px), np.int32)
    for i, facet in enumerate(facets):
        cv2.fillConvexPoly(label, np.round(facet * 16).astype(np.int32), i, cv2.LINE_8, 4)
    for i, (t, facet) in enumerate(zip(types, facets)):
        x0, y0 = np.clip(np.floor(facet.min(0)).astype(int), 0, n_px)
        x1, y1 = np.clip(np.ceil(facet.max(0)).astype(int) + 1, 0, n_px)
        h, w = y1 - y0, x1 - x0
        if h <= 0 or w <= 0:
            continue
        p = _Painter(img, k, rng)
        zone = ZONES[t]
        if zone == "fields":
            patch = _fields(p, h, w, x0, y0)
        elif zone in ("town", "industrial"):
            patch = _town(p, h, w, x0, y0, zone == "industrial")
        elif zone == "forest":
            patch = _woods(p, h, w, 0.06, (35, 60, 30), False)
        elif zone == "orchard":
            patch = _woods(p, h, w, 0.0, (120, 140, 80), True)
        else:
            patch = _park(p, h, w)
        sel = label[y0:y1, x0:x1] == i
        img[y0:y1, x0:x1][sel] = patch[sel]
    _water_and_roads(img, rng, k)
    # Large-scale tone variation and fine grain, so no two areas are flat copies of each other.
    img *= (1.0 + 0.08 * _noise(rng, n_px, n_px, 300 * k))[..., None]
    img += rng.normal(0, 3.0, img.shape).astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), 0.6)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _water_and_roads(img: np.ndarray, rng: np.random.Generator, k: float) -> None:
    n_px = img.shape[0]
    river = _curve(rng, n_px)
    width = rng.uniform(14, 26) * k
    pts = [np.round(river * 16).astype(np.int32)]
    cv2.polylines(img, pts, False, (150, 140, 105), int(width + 6 * k), cv2.LINE_AA, 4)  # banks
    cv2.polylines(img, pts, False, (45, 75, 85), int(width), cv2.LINE_AA, 4)
    for _ in range(rng.integers(2, 6)):  # ponds: wobbly ellipses
        c = rng.uniform(0.1, 0.9, 2) * n_px
        r = rng.uniform(12, 35) * k
        a = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        rad = r * (1 + 0.25 * np.sin(3 * a + rng.uniform(0, 6)) + 0.1 * np.sin(5 * a + rng.uniform(0, 6)))
        poly = np.stack([c[0] + rad * np.cos(a) * rng.uniform(0.6, 1.4), c[1] + rad * np.sin(a)], 1)
        cv2.fillPoly(img, [np.round(poly * 16).astype(np.int32)], (40, 70, 80), cv2.LINE_AA, 4)
    for _ in range(rng.integers(2, 5)):  # main roads, on bridges over the river
        road = np.round(_curve(rng, n_px) * 16).astype(np.int32)
        w = rng.uniform(9, 13) * k
        cv2.polylines(img, [road], False, (150, 150, 145), int(w + 3 * k), cv2.LINE_AA, 4)
        cv2.polylines(img, [road], False, (85, 85, 90), int(w), cv2.LINE_AA, 4)
        seg = road[::6]
        for i in range(0, len(seg) - 1, 2):  # dashed centre line
            cv2.line(img, tuple(seg[i]), tuple(seg[i + 1]), (230, 230, 220), max(1, int(0.4 * k)), cv2.LINE_AA, 4)
    for _ in range(rng.integers(4, 9)):  # dirt tracks
        pts = np.cumsum(rng.normal(0, 60 * k, (5, 2)), axis=0) + rng.uniform(0, n_px, 2)
        cv2.polylines(img, [np.round(pts * 16).astype(np.int32)], False, (165, 145, 110), max(1, int(3 * k)), cv2.LINE_AA, 4)


def world_corners(cfg: WorldConfig) -> tuple[float, float, float, float]:
    return geo.corners_for_centre(cfg.lat, cfg.lon, cfg.size_m, cfg.size_m)


def make_world(out_dir: Path | str, seed: int = WorldConfig.seed, size_m: float = WorldConfig.size_m,
               mpp: float = WorldConfig.mpp, lat: float = WorldConfig.lat, lon: float = WorldConfig.lon) -> Path:
    """Write the procedural world as out_dir/map.png + out_dir/map.csv; returns the CSV path."""
    cfg = WorldConfig(size_m=size_m, mpp=mpp, lat=lat, lon=lon, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    img = generate_world(cfg)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise SkylocError(f"world: PNG encoding failed for {out / 'map.png'}")
    (out / "map.png").write_bytes(buf.tobytes())
    cfg.size_m = img.shape[0] * mpp  # the corners describe the pixels actually drawn
    return write_corners_csv(out / "map.csv", [("map.png", *world_corners(cfg))])
