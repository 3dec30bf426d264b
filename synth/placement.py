"""Where a dataset's locations go: dart throwing inside the map, and nadir altitudes fitted to
the valid map around each location.

Nadir views are aimed at the target, so everything they see scales with the altitude: the reach
at altitude h is h times the reach at 1 m (synth.nadir.nadir_extent_m). A location whose
clearance (metres to the nearest hole or edge) is c therefore keeps every view valid up to
c / reach-per-metre; it gets its views from [MIN, min(MAX, that)] and is skipped below MIN.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
import math

import numpy as np

from skyloc.core import geo
from skyloc.runtime.maps.base import GeoMap
from skyloc.synth.nadir import NadirViewConfig, nadir_extent_m
from skyloc.synth.valid_area import ValidArea


class Placer:
    """Dart throwing of location centres in local metres, with validity and separation checks."""

    def __init__(self, gmap: GeoMap, rng: np.random.Generator, sep_m: float) -> None:
        self.gmap, self.rng, self.sep = gmap, rng, sep_m
        lat_min, lon_min, lat_max, lon_max = gmap.bounds_latlon()
        self.lat0, self.lon0 = 0.5 * (lat_min + lat_max), 0.5 * (lon_min + lon_max)
        self.west, self.north = geo.latlon_to_local_m(lat_max, lon_min, self.lat0, self.lon0)
        self.east, self.south = geo.latlon_to_local_m(lat_min, lon_max, self.lat0, self.lon0)
        self.taken: list[tuple[float, float]] = []

    def draw(self, margin_m: float) -> tuple[float, float] | None:
        """A candidate (lat, lon) at least margin_m inside the bounds and sep_m from the others."""
        lo_e, hi_e = self.west + margin_m, self.east - margin_m
        lo_n, hi_n = self.south + margin_m, self.north - margin_m
        if lo_e >= hi_e or lo_n >= hi_n:
            return None
        e, n = self.rng.uniform(lo_e, hi_e), self.rng.uniform(lo_n, hi_n)
        if any(math.hypot(e - a, n - b) < self.sep for a, b in self.taken):
            return None
        lat, lon = geo.local_m_to_latlon(e, n, self.lat0, self.lon0)
        return float(lat), float(lon)

    def accept(self, lat: float, lon: float) -> None:
        e, n = geo.latlon_to_local_m(lat, lon, self.lat0, self.lon0)
        self.taken.append((float(e), float(n)))


def square_valid(gmap: GeoMap, lat: float, lon: float, size_m: float, probes: int = 9) -> bool:
    g = np.linspace(-size_m / 2, size_m / 2, probes)
    e, n = np.meshgrid(g, g)
    la, lo = geo.local_m_to_latlon(e, n, lat, lon)
    return bool(gmap.is_valid(la, lo).all())


@dataclass
class NadirFit:
    """The nadir settings' altitude range (real metres, scale applied) and reach per metre."""

    cfg: NadirViewConfig
    lo_m: float
    hi_m: float
    reach_per_m: float  # inf when a view can see the horizon

    @classmethod
    def of(cls, cfg: NadirViewConfig, width: int, height: int) -> "NadirFit":
        lo, hi = (a * cfg.scale for a in cfg.altitude_range_m)
        return cls(cfg, lo, hi, nadir_extent_m(cfg, width, height) / hi)

    def reach_m(self, altitude_m: float) -> float:
        return self.reach_per_m * altitude_m

    def top_altitude_m(self, clearance_m: float) -> float | None:
        """Highest altitude (<= MAX) whose views stay within clearance_m; None below MIN."""
        # 2 % below the bound: the border samples of nadir_extent_m miss nothing larger than that
        top = min(self.hi_m, 0.98 * clearance_m / self.reach_per_m)
        return top if top >= self.lo_m else None

    def config_up_to(self, top_m: float) -> NadirViewConfig:
        return replace(self.cfg, altitude_range_m=(self.cfg.altitude_range_m[0], top_m / self.cfg.scale))


def placement_advice(area: ValidArea, sat_m: float, spiral_reach_m: float, spiral_scale: float,
                     fit: NadirFit | None, sep_m: float) -> str:
    """Settings that would place locations on this map, from its clearest point."""
    c = area.max_clearance_m()
    # sizes for 0.6 c leave the centres a region about 0.8 c across, room for a few at 0.3 c spacing
    f = 0.6
    tips = []
    if sat_m / 2 > c:
        tips.append(f"--sat-size-m {max(1.0, f * area.largest_square_m()):.0f} (the satellite crop is {sat_m:.0f} m)")
    if spiral_reach_m > c:
        tips.append(f"--spiral-scale {f * spiral_scale * c / spiral_reach_m:.2f} (spiral views reach "
                    f"{spiral_reach_m:.0f} m)")
    if fit is not None and fit.reach_m(fit.lo_m) > c:
        lo = f * c / fit.reach_per_m / fit.cfg.scale
        hi = max(lo, fit.cfg.altitude_range_m[1])
        tips.append(f"--nadir-altitude-range {lo:.0f},{hi:.0f} (nadir views at the lowest altitude, "
                    f"{fit.lo_m:.0f} m, reach {fit.reach_m(fit.lo_m):.0f} m; or lower --nadir-fov / "
                    "--nadir-tilt-max)")
    if not tips or sep_m > 0.3 * c:
        tips.append(f"--min-separation-m {min(0.5 * sep_m, 0.3 * c):.0f} (locations are {sep_m:.0f} m apart)")
    return (f"the clearest point of the valid map is {c:.0f} m from a hole or edge; try "
            + "; ".join(tips) + "; or fewer --locations or a larger map")
