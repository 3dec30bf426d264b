"""GeoTIFF maps (rasterio; any CRS, positions reported as WGS84), read window by window so
large files stream. Split from runtime/maps/base.py, whose GeoMap interface it implements."""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from skyloc.core import geo
from skyloc.core.errors import SkylocError
from skyloc.runtime.maps.base import _BLOCK, GeoMap, bilinear

def import_rasterio(path: Any = None) -> Any:
    """rasterio, or a SkylocError naming the extra that brings it (the drone install leaves it out)."""
    try:
        import rasterio
    except ImportError as exc:
        what = f"map {path}: " if path is not None else ""
        raise SkylocError(f"{what}GeoTIFF maps need rasterio, which the base install leaves out ({exc}): "
                          f'pip install "skyloc[maps]" (or pip install rasterio), or convert the map to '
                          f"PNG/JPEG + a corners CSV") from None
    return rasterio


class GeoTiffMap(GeoMap):
    """A GeoTIFF read window by window (large files stream); any CRS, the dataset mask is no-data."""

    def __init__(self, path: Path) -> None:
        rasterio = import_rasterio(path)  # heavy; only GeoTIFF users pay for it
        from rasterio.warp import transform_bounds

        try:
            with warnings.catch_warnings():  # no geotransform: refused below with our own message
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                self._ds = rasterio.open(path)
        except Exception as exc:  # rasterio raises its own RasterioIOError / CPLE_* types
            raise SkylocError(f"map {path}: cannot open as GeoTIFF ({exc}); check the file") from None
        ds = self._ds
        if ds.crs is None:
            raise SkylocError(f"map {path}: the GeoTIFF has no CRS; georeference it (e.g. gdal_translate -a_srs)")
        if ds.transform.is_identity or not all(math.isfinite(v) for v in tuple(ds.transform)[:6]) \
                or abs(ds.transform.determinant) == 0:
            # GDAL reports the identity when the file has no geotransform: every pixel would be
            # placed at (0, 0) degrees / metres of the CRS, i.e. tiles at Null Island.
            raise SkylocError(f"map {path}: the GeoTIFF has a CRS but no geotransform (pixel -> map coordinates); "
                              f"georeference it (e.g. gdal_translate -a_ullr / gdalwarp with GCPs)")
        self.source, self.name = str(path), Path(path).stem
        self._bands = [1, 2, 3] if ds.count >= 3 else [1]
        self._inv = ~ds.transform
        lon_min, lat_min, lon_max, lat_max = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=21)
        self._bounds = (lat_min, lon_min, lat_max, lon_max)
        from skyloc.runtime.maps.base import check_corners

        check_corners(lat_max, lon_min, lat_min, lon_max, f"map {path} (bounds in WGS84)")
        # Native resolution: ground distance between neighbouring pixels at the image centre.
        cx, cy = ds.width / 2, ds.height / 2
        la, lo = self._pixel_to_latlon(np.array([cx, cx + 1, cx]), np.array([cy, cy, cy + 1]))
        dx = geo.haversine_m(la[0], lo[0], la[1], lo[1])
        dy = geo.haversine_m(la[0], lo[0], la[2], lo[2])
        self.metres_per_pixel = float(math.sqrt(dx * dy))
        self.max_level = max(0, int(math.floor(math.log2(max(1, min(ds.width, ds.height))))) - 2)
        self._scale = self._value_scale()

    def _pixel_to_latlon(self, col: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from rasterio.warp import transform

        xs, ys = _affine(self._ds.transform, col, row)
        lon, lat = transform(self._ds.crs, "EPSG:4326", np.atleast_1d(xs), np.atleast_1d(ys))
        return np.asarray(lat), np.asarray(lon)

    def _value_scale(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Non-8-bit rasters: a fixed 2..98 % stretch from a decimated read of the whole image."""
        if self._ds.dtypes[0] == "uint8":
            return None
        k = max(1, max(self._ds.width, self._ds.height) // 1024)
        shape = (len(self._bands), max(1, self._ds.height // k), max(1, self._ds.width // k))
        data = self._ds.read(self._bands, out_shape=shape, masked=True).astype(np.float64)
        lo = np.array([np.percentile(b.compressed(), 2) if b.count() else 0.0 for b in data])
        hi = np.array([np.percentile(b.compressed(), 98) if b.count() else 1.0 for b in data])
        return lo, np.maximum(hi, lo + 1e-9)

    def bounds_latlon(self) -> tuple[float, float, float, float]:
        return self._bounds

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(type="geotiff", crs=str(self._ds.crs), width=self._ds.width, height=self._ds.height)
        return d

    def _to_native(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from rasterio.warp import transform

        if lat.size == 0:
            return lat, lon
        xs, ys = transform("EPSG:4326", self._ds.crs, lon, lat)
        col, row = _affine(self._inv, np.asarray(xs), np.asarray(ys))
        return np.asarray(col, np.float64), np.asarray(row, np.float64)

    def _sample_level(self, col: np.ndarray, row: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
        rgb = np.zeros((col.size, 3), np.float32)
        w = np.zeros(col.size, np.float32)
        W, H = self._ds.width, self._ds.height
        inside = np.nonzero((col >= 0) & (col <= W) & (row >= 0) & (row <= H))[0]
        s = 2 ** level
        block = _BLOCK * s
        keys = (np.floor(col[inside] / block).astype(np.int64) * 1_000_003 + np.floor(row[inside] / block).astype(np.int64))
        for key in np.unique(keys):
            idx = inside[keys == key]
            c, r = col[idx], row[idx]
            c0 = int(max(0, (math.floor(c.min()) // s - 1) * s)); c1 = int(min(W, (math.ceil(c.max()) // s + 2) * s))
            r0 = int(max(0, (math.floor(r.min()) // s - 1) * s)); r1 = int(min(H, (math.ceil(r.max()) // s + 2) * s))
            rgb[idx], w[idx] = self._read_window(c - c0, r - r0, c0, r0, c1 - c0, r1 - r0, s)
        return rgb, w

    def _read_window(self, x: np.ndarray, y: np.ndarray, c0: int, r0: int, cw: int, rh: int, s: int
                     ) -> tuple[np.ndarray, np.ndarray]:
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        win = Window(c0, r0, cw, rh)
        oh, ow = max(1, math.ceil(rh / s)), max(1, math.ceil(cw / s))
        rs = Resampling.average if s > 1 else Resampling.nearest
        data = self._ds.read(self._bands, window=win, out_shape=(len(self._bands), oh, ow), resampling=rs)
        mask = self._ds.dataset_mask(window=win, out_shape=(oh, ow), resampling=rs).astype(np.float32) / 255.0
        data = data.astype(np.float32)
        if self._scale is not None:
            lo, hi = self._scale
            data = np.clip((data - lo[:, None, None]) / (hi - lo)[:, None, None] * 255.0, 0, 255)
        img = np.moveaxis(data, 0, -1)
        if img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        img = img * mask[..., None]  # premultiply: no-data never bleeds into valid colours
        both = np.concatenate([img, mask[..., None]], axis=2)
        out = bilinear(both, x * ow / cw, y * oh / rh)
        return out[:, :3], out[:, 3]


def _affine(t: Any, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply an affine.Affine to coordinate arrays (written out: its `*` operator is deprecated)."""
    return t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f
