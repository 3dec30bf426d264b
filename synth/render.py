"""Render a perspective view of a GeoMap: each output pixel's ray meets the ground, and the map is
sampled there (GeoMap.sample, mip-mapped by each pixel's ground footprint)."""
from __future__ import annotations

import numpy as np

from skyloc.core import geo
from skyloc.runtime.maps.base import GeoMap
from skyloc.synth.camera import Camera


def view_ground_latlon(cam: Camera, lat0: float, lon0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(lat, lon, footprint_m, hit) of every pixel centre of the view; camera metres are about (lat0, lon0)."""
    u, v = cam.pixel_grid()
    e, n, hit = cam.ground_points(u, v)
    # A pixel covers about the distance to its neighbours' ground points; take the larger axis so
    # oblique views blur slightly rather than alias.
    e0, n0 = np.where(hit, e, cam.east_m), np.where(hit, n, cam.north_m)
    de_r, de_c = np.gradient(e0)
    dn_r, dn_c = np.gradient(n0)
    fp = np.maximum(np.hypot(de_r, dn_r), np.hypot(de_c, dn_c))
    lat, lon = geo.local_m_to_latlon(e0, n0, lat0, lon0)
    return np.asarray(lat), np.asarray(lon), fp, hit


def render_view(gmap: GeoMap, cam: Camera, lat0: float, lon0: float) -> tuple[np.ndarray, np.ndarray]:
    """(rgb uint8 (H, W, 3), valid (H, W)): the camera's view; rays missing the map are black / invalid."""
    lat, lon, fp, hit = view_ground_latlon(cam, lat0, lon0)
    rgb, valid = gmap.sample(lat, lon, footprint_m=fp)
    valid &= hit
    rgb[~valid] = 0
    return rgb, valid


def view_is_valid(gmap: GeoMap, cam: Camera, lat0: float, lon0: float, probes: int = 9) -> bool:
    """Cheap pre-check: a probes x probes lattice of rays (borders included) all land on valid map."""
    g = np.linspace(0.0, 1.0, probes)
    u, v = np.meshgrid(g * cam.width, g * cam.height)
    e, n, hit = cam.ground_points(u, v)
    if not hit.all():
        return False
    lat, lon = geo.local_m_to_latlon(e, n, lat0, lon0)
    return bool(gmap.is_valid(np.asarray(lat), np.asarray(lon)).all())
