"""Small pure geodesy helpers: WGS84 lat/lon <-> local metres <-> map pixels.

Everything is vectorised numpy and torch-free (the onboard runtime uses it). Local metres are an
equirectangular tangent plane about an origin: east = R cos(lat0) dlon, north = R dlat. Over the
few kilometres a drone map covers this is within a metre or so of the geodesic distance, which
is far below what image retrieval resolves, and it inverts exactly.

Pixel convention for north-up images georeferenced by their corners (the corners CSV format):
continuous pixel coordinates (x, y) have (0, 0) at the outer top-left corner of the top-left
pixel and (width, height) at the outer bottom-right corner, so pixel (col, row) has its centre at
(col + 0.5, row + 0.5). The CSV's top-left / bottom-right lat/lon are those outer corners, and
lat/lon vary linearly with x / y in between.
"""
from __future__ import annotations

import math
from typing import Union

import numpy as np

EARTH_RADIUS_M = 6378137.0  # WGS84 equatorial radius

ArrayLike = Union[float, np.ndarray]


def haversine_m(lat1: ArrayLike, lon1: ArrayLike, lat2: ArrayLike, lon2: ArrayLike) -> ArrayLike:
    """Great-circle distance in metres (spherical Earth of radius EARTH_RADIUS_M)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp = p2 - p1
    dl = np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    d = 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    return float(d) if np.ndim(d) == 0 else d


def latlon_to_local_m(lat: ArrayLike, lon: ArrayLike, lat0: float, lon0: float) -> tuple[ArrayLike, ArrayLike]:
    """(east_m, north_m) of points relative to the origin (lat0, lon0)."""
    east = EARTH_RADIUS_M * math.cos(math.radians(lat0)) * np.radians(np.asarray(lon, dtype=np.float64) - lon0)
    north = EARTH_RADIUS_M * np.radians(np.asarray(lat, dtype=np.float64) - lat0)
    return _unwrap(east), _unwrap(north)


def local_m_to_latlon(east_m: ArrayLike, north_m: ArrayLike, lat0: float, lon0: float) -> tuple[ArrayLike, ArrayLike]:
    """Inverse of latlon_to_local_m."""
    lat = lat0 + np.degrees(np.asarray(north_m, dtype=np.float64) / EARTH_RADIUS_M)
    lon = lon0 + np.degrees(np.asarray(east_m, dtype=np.float64) / (EARTH_RADIUS_M * math.cos(math.radians(lat0))))
    return _unwrap(lat), _unwrap(lon)


def offset_latlon(lat: ArrayLike, lon: ArrayLike, east_m: ArrayLike, north_m: ArrayLike) -> tuple[ArrayLike, ArrayLike]:
    """Move points by (east_m, north_m) metres; the scale is taken at each point's own latitude."""
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    new_lat = lat + np.degrees(np.asarray(north_m, dtype=np.float64) / EARTH_RADIUS_M)
    new_lon = lon + np.degrees(np.asarray(east_m, dtype=np.float64) / (EARTH_RADIUS_M * np.cos(np.radians(lat))))
    return _unwrap(new_lat), _unwrap(new_lon)


def metres_per_degree(lat: float) -> tuple[float, float]:
    """(metres per degree of latitude, metres per degree of longitude) at a latitude."""
    m_lat = EARTH_RADIUS_M * math.pi / 180.0
    return m_lat, m_lat * math.cos(math.radians(lat))


# --- north-up images georeferenced by their outer corners -----------------------------------


def corners_pixel_to_latlon(
    x: ArrayLike, y: ArrayLike, width: int, height: int,
    tl_lat: float, tl_lon: float, br_lat: float, br_lon: float,
) -> tuple[ArrayLike, ArrayLike]:
    """Continuous pixel coordinates (x right, y down; see module doc) -> (lat, lon)."""
    fx = np.asarray(x, dtype=np.float64) / width
    fy = np.asarray(y, dtype=np.float64) / height
    return _unwrap(tl_lat + fy * (br_lat - tl_lat)), _unwrap(tl_lon + fx * (br_lon - tl_lon))


def corners_latlon_to_pixel(
    lat: ArrayLike, lon: ArrayLike, width: int, height: int,
    tl_lat: float, tl_lon: float, br_lat: float, br_lon: float,
) -> tuple[ArrayLike, ArrayLike]:
    """(lat, lon) -> continuous pixel coordinates (x, y); inverse of corners_pixel_to_latlon."""
    x = (np.asarray(lon, dtype=np.float64) - tl_lon) / (br_lon - tl_lon) * width
    y = (np.asarray(lat, dtype=np.float64) - tl_lat) / (br_lat - tl_lat) * height
    return _unwrap(x), _unwrap(y)


def corners_metres_per_pixel(
    width: int, height: int, tl_lat: float, tl_lon: float, br_lat: float, br_lon: float,
) -> tuple[float, float]:
    """Ground size of one pixel (east-west, north-south) in metres, at the image's mid latitude."""
    m_lat, m_lon = metres_per_degree(0.5 * (tl_lat + br_lat))
    return abs(br_lon - tl_lon) * m_lon / width, abs(tl_lat - br_lat) * m_lat / height


def corners_for_centre(lat: float, lon: float, width_m: float, height_m: float) -> tuple[float, float, float, float]:
    """(tl_lat, tl_lon, br_lat, br_lon) of a north-up rectangle of the given metres centred at a point."""
    tl_lat, tl_lon = local_m_to_latlon(-width_m / 2, height_m / 2, lat, lon)
    br_lat, br_lon = local_m_to_latlon(width_m / 2, -height_m / 2, lat, lon)
    return float(tl_lat), float(tl_lon), float(br_lat), float(br_lon)


def _unwrap(a: np.ndarray) -> ArrayLike:
    """numpy scalars -> Python float so scalar calls return plain floats."""
    return float(a) if np.ndim(a) == 0 else a
