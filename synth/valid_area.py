"""Where a map holds valid imagery, on a metric grid: distance to the nearest hole or edge.

Datasets fit each location's altitude to the clearance around it; flights steer their path
through the part that keeps the whole camera footprint valid. Metres are local east / north
about the map's centre (core.geo), the grid's cells g metres wide.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from skyloc.core import geo
from skyloc.runtime.maps.base import GeoMap


class ValidArea:
    """The map's validity on a grid of cell_m metres and each cell's clearance (metres to the
    nearest invalid cell or the map's edge, conservative by one cell)."""

    def __init__(self, gmap: GeoMap, cell_m: float | None = None) -> None:
        lat_min, lon_min, lat_max, lon_max = gmap.bounds_latlon()
        self.lat0, self.lon0 = 0.5 * (lat_min + lat_max), 0.5 * (lon_min + lon_max)
        self.west, self.north = geo.latlon_to_local_m(lat_max, lon_min, self.lat0, self.lon0)
        self.east, self.south = geo.latlon_to_local_m(lat_min, lon_max, self.lat0, self.lon0)
        span = max(self.east - self.west, self.north - self.south)
        # ~1000 cells across keeps the grid to a few MB whatever the map's size
        self.g = float(cell_m) if cell_m else max(span / 1000.0, 0.5)
        nx = int((self.east - self.west) / self.g) + 1
        ny = int((self.north - self.south) / self.g) + 1
        e = self.west + (np.arange(nx) + 0.5) * self.g
        n = self.north - (np.arange(ny) + 0.5) * self.g
        ee, nn = np.meshgrid(e, n)
        la, lo = geo.local_m_to_latlon(ee, nn, self.lat0, self.lon0)
        self.valid = np.asarray(gmap.is_valid(la, lo), bool)
        # Outside the grid is invalid: pad so the border counts as an edge.
        padded = cv2.copyMakeBorder(self.valid.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
        dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
        # a cell's centre may lie up to half a diagonal from the true point; one cell covers it
        self.clearance_grid = np.maximum(dist * self.g - self.g, 0.0).astype(np.float32)

    def _cells(self, e: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = np.floor((np.asarray(e, float) - self.west) / self.g).astype(np.int64)
        r = np.floor((self.north - np.asarray(n, float)) / self.g).astype(np.int64)
        h, w = self.valid.shape
        good = (c >= 0) & (c < w) & (r >= 0) & (r < h)
        return r, c, good

    def clearance_m(self, e: np.ndarray | float, n: np.ndarray | float) -> np.ndarray:
        """Metres from (e, n) to the nearest invalid map; 0 off the grid."""
        r, c, good = self._cells(e, n)
        out = np.zeros(np.shape(r), np.float32)
        out[good] = self.clearance_grid[r[good], c[good]]
        return out

    def clearance_at(self, lat: float, lon: float) -> float:
        e, n = geo.latlon_to_local_m(lat, lon, self.lat0, self.lon0)
        return float(self.clearance_m(np.array([e]), np.array([n]))[0])

    def max_clearance_m(self) -> float:
        return float(self.clearance_grid.max()) if self.clearance_grid.size else 0.0

    def cell_centre(self, row: int, col: int) -> np.ndarray:
        return np.array([self.west + (col + 0.5) * self.g, self.north - (row + 0.5) * self.g])

    def largest_square_m(self) -> float:
        """Side of a square that fits (any orientation) around the clearest point."""
        return math.sqrt(2.0) * self.max_clearance_m()
