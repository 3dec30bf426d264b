"""Georeferenced map readers: GeoTIFF (any CRS) and north-up PNG/JPEG tiles with a corners CSV.

One primitive, `GeoMap.sample(lat, lon)`, bilinearly samples the map at arbitrary WGS84 points;
crops, rendered drone views and tile grids are all built on it. Sampling is mip-mapped: each
point picks a pyramid level from its ground footprint (given, or estimated from the spacing of
the query grid) and blends the two nearest levels, so a 64 px crop of a 0.1 m/px orthophoto is
an area average rather than an aliased pick of single pixels.

No-data (GeoTIFF masks / nodata, tiles missing from the CSV, fully transparent PNG pixels) is
carried as a weight: colours are premultiplied by it, so they never bleed into valid pixels, and
a point is valid where the weight is >= 0.5. Alpha never changes a colour: it only marks
alpha == 0 as no-data (the Turku tiles carry a constant alpha, so all their pixels are valid).

Torch-free: the onboard runtime builds tile sets from these maps.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from skyloc.core import geo
from skyloc.core.errors import SkylocError

_BLOCK = 2048  # GeoTIFF points are read in blocks of this many output pixels per side (runtime.geotiff)


class GeoMap(ABC):
    """A map that can be sampled at WGS84 points. Subclasses supply `_to_native` and `_sample_level`."""

    name: str
    source: str
    metres_per_pixel: float
    max_level: int

    # --- subclass hooks -------------------------------------------------------------------
    @abstractmethod
    def bounds_latlon(self) -> tuple[float, float, float, float]:
        """(lat_min, lon_min, lat_max, lon_max)."""

    @abstractmethod
    def _to_native(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat WGS84 points -> the coordinates `_sample_level` takes."""

    @abstractmethod
    def _sample_level(self, a: np.ndarray, b: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
        """Native coords -> (premultiplied rgb float32 (N, 3), weight float32 (N,)) at a pyramid level."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "metres_per_pixel": self.metres_per_pixel,
                "bounds_latlon": list(self.bounds_latlon())}

    # --- public API -----------------------------------------------------------------------
    def sample(self, lat: np.ndarray, lon: np.ndarray, footprint_m: np.ndarray | float | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Bilinear, mip-mapped colours at the points: (rgb uint8 (..., 3), valid bool (...)).

        `footprint_m` is the ground size each output pixel stands for (scalar or per point); by
        default it is estimated from the spacing of a 2-D query grid (native resolution for
        other shapes). Invalid points get rgb 0.
        """
        lat = np.asarray(lat, dtype=np.float64)
        lon = np.asarray(lon, dtype=np.float64)
        shape = lat.shape
        if footprint_m is None:
            footprint_m = _grid_footprint(lat, lon)
        fp = np.broadcast_to(np.asarray(footprint_m, dtype=np.float64), shape).ravel()
        level = np.clip(np.log2(np.maximum(fp, 1e-9) / self.metres_per_pixel), 0.0, float(self.max_level))
        l0 = np.floor(level).astype(np.int64)
        t = (level - l0).astype(np.float32)
        a, b = self._to_native(lat.ravel(), lon.ravel())
        rgb = np.zeros((a.size, 3), np.float32)
        w = np.zeros(a.size, np.float32)
        for lv in np.unique(l0):
            idx = np.nonzero(l0 == lv)[0]
            c, wt = self._sample_level(a[idx], b[idx], int(lv))
            rgb[idx] += c * (1 - t[idx, None])
            w[idx] += wt * (1 - t[idx])
            up = idx[(t[idx] > 0) & (lv < self.max_level)]
            if up.size:
                c, wt = self._sample_level(a[up], b[up], int(lv) + 1)
                rgb[up] += c * t[up, None]
                w[up] += wt * t[up]
        valid = w >= 0.5
        out = np.zeros_like(rgb)
        out[valid] = rgb[valid] / w[valid, None]
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return out.reshape(*shape, 3), valid.reshape(shape)

    def is_valid(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Whether each point has data at native resolution."""
        lat = np.asarray(lat, dtype=np.float64)
        lon = np.asarray(lon, dtype=np.float64)
        a, b = self._to_native(lat.ravel(), np.asarray(lon, dtype=np.float64).ravel())
        _, w = self._sample_level(a, b, 0)
        return (w >= 0.5).reshape(lat.shape)

    def read_crop(self, lat: float, lon: float, size_m: float, out_px: int, yaw_deg: float = 0.0
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Square crop of size_m ground metres centred at (lat, lon), out_px pixels a side.

        yaw_deg turns the crop clockwise from north: the crop's up direction points at that heading
        (the view of a nadir camera whose top edge faces yaw_deg).
        """
        east, north = crop_offsets_m(size_m, out_px, yaw_deg)
        la, lo = geo.local_m_to_latlon(east, north, lat, lon)
        return self.sample(la, lo, footprint_m=size_m / out_px)

    def grid(self, tile_m: float, stride_m: float, min_valid: float = 1.0) -> np.ndarray:
        """(N, 2) lat/lon centres of tile_m squares on a metric grid, row-major north->south, west->east.

        The grid starts tile_m / 2 inside the north-west corner of the bounds. A square is kept when
        the valid fraction of a probe lattice over it (edges included, spacing <= tile_m / 16 and
        about 4 native pixels when finer, at most 65 x 65 probes) is >= min_valid.
        """
        if tile_m <= 0 or stride_m <= 0:
            raise SkylocError(f"grid: tile_m ({tile_m}) and stride_m ({stride_m}) must be > 0")
        lat_min, lon_min, lat_max, lon_max = self.bounds_latlon()
        lat0, lon0 = 0.5 * (lat_min + lat_max), 0.5 * (lon_min + lon_max)
        west, north = geo.latlon_to_local_m(lat_max, lon_min, lat0, lon0)
        east, south = geo.latlon_to_local_m(lat_min, lon_max, lat0, lon0)
        eps = 1e-6 * tile_m  # squares flush with the map edge count as inside
        ns = np.arange(north - tile_m / 2, south + tile_m / 2 - eps, -stride_m)
        es = np.arange(west + tile_m / 2, east - tile_m / 2 + eps, stride_m)
        if ns.size == 0 or es.size == 0:
            return np.zeros((0, 2))
        cn, ce = np.meshgrid(ns, es, indexing="ij")
        cn, ce = cn.ravel(), ce.ravel()
        k = int(np.clip(math.ceil(tile_m / (4 * self.metres_per_pixel)) + 1, 17, 65))
        probe = np.linspace(-tile_m / 2 + eps, tile_m / 2 - eps, k)
        pe, pn = np.meshgrid(probe, probe)
        frac = np.empty(cn.size)
        batch = max(1, 200_000 // (k * k))
        for s in range(0, cn.size, batch):
            e = ce[s:s + batch, None] + pe.ravel()[None]
            n = cn[s:s + batch, None] + pn.ravel()[None]
            la, lo = geo.local_m_to_latlon(e, n, lat0, lon0)
            frac[s:s + batch] = self.is_valid(la, lo).mean(axis=1)
        keep = frac >= min_valid - 1e-9
        la, lo = geo.local_m_to_latlon(ce[keep], cn[keep], lat0, lon0)
        return np.stack([np.atleast_1d(la), np.atleast_1d(lo)], axis=1)


def crop_offsets_m(size_m: float, out_px: int, yaw_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(east, north) metres of each pixel centre of a yawed square crop, relative to its centre."""
    u = ((np.arange(out_px) + 0.5) / out_px - 0.5) * size_m
    x, y_down = np.meshgrid(u, u)
    y_up = -y_down
    s, c = math.sin(math.radians(yaw_deg)), math.cos(math.radians(yaw_deg))
    return x * c + y_up * s, -x * s + y_up * c


def _grid_footprint(lat: np.ndarray, lon: np.ndarray) -> np.ndarray | float:
    """Ground spacing of a 2-D query grid: the larger of its row / column steps, per point."""
    if lat.ndim != 2 or min(lat.shape) < 2:
        return 0.0
    e, n = geo.latlon_to_local_m(lat, lon, float(lat.flat[0]), float(lon.flat[0]))
    de_r, de_c = np.gradient(e)
    dn_r, dn_c = np.gradient(n)
    return np.maximum(np.hypot(de_r, dn_r), np.hypot(de_c, dn_c))


def bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample an (h, w, C) array at continuous pixel coords (centre of pixel i at i + 0.5), edge-clamped."""
    h, w = img.shape[:2]
    xi = np.clip(x - 0.5, 0, w - 1)
    yi = np.clip(y - 0.5, 0, h - 1)
    x0 = np.minimum(np.floor(xi).astype(np.int64), w - 1)
    y0 = np.minimum(np.floor(yi).astype(np.int64), h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    fx = (xi - x0).astype(np.float32)[:, None]
    fy = (yi - y0).astype(np.float32)[:, None]
    top = img[y0, x0].astype(np.float32) * (1 - fx) + img[y0, x1].astype(np.float32) * fx
    bot = img[y1, x0].astype(np.float32) * (1 - fx) + img[y1, x1].astype(np.float32) * fx
    return top * (1 - fy) + bot * fy


# --- PNG / JPEG tiles with a corners CSV ------------------------------------------------------


def check_corners(tl_lat: float, tl_lon: float, br_lat: float, br_lon: float, where: str) -> None:
    """Refuse corners that are not finite, out of range or not a north-west / south-east pair."""
    vals = (tl_lat, tl_lon, br_lat, br_lon)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
        raise SkylocError(f"{where}: corners {vals} must be finite numbers")
    if max(abs(tl_lat), abs(br_lat)) > 90 or max(abs(tl_lon), abs(br_lon)) > 180:
        raise SkylocError(f"{where}: corners {vals} out of range (|lat| <= 90, |lon| <= 180); "
                          "check the column order: filename, tl_lat, tl_lon, br_lat, br_lon")
    if not (tl_lat > br_lat and br_lon > tl_lon):
        raise SkylocError(f"{where}: top-left must be north-west of bottom-right ({vals})")



