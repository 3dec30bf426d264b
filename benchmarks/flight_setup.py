"""Flights that fit a map: speed and lens picked so a flight stays over the map, the take-off start prior, the maps present here."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from skyloc.core import geo
from skyloc.core.errors import SkylocError

PRIOR_M, PRIOR_OFFSET_M = 300.0, 150.0  # start prior of the pipeline flights: radius, centre off the truth



def _fov(altitude: float, fov_deg: float, ground_width_m: float) -> float:
    """The lens narrows with altitude so a frame keeps ~ground_width_m of ground: the real maps are
    only 0.4-0.6 km across, and a 60 deg lens at 250 m would need a map of over a kilometre."""
    return min(fov_deg, 2 * math.degrees(math.atan(ground_width_m / 2 / altitude)))


def _tile_m(altitude: float, fov_deg: float, width: int, height: int) -> float:
    """About half the short ground side of a nadir frame at this altitude: covered at any heading."""
    short = 2 * altitude * math.tan(math.radians(fov_deg) / 2) * min(width, height) / width
    return float(round(0.55 * short))


# (speed m/s, share of the ground width) tried in turn: the real maps are small (Turku: 0.2 km tiles
# with gaps) and a flight keeps its whole footprint on valid imagery; slower first, then a narrower lens
FLIGHT_FITS = ((8.0, 1.0), (4.0, 1.0), (4.0, 0.7), (2.0, 0.7))
# benchmark flights see the ground as another season and sensor than the map (synth.appearance)
BENCH_APPEARANCE = "full"


def fit_flight(map_path: Path, out: Path, alt: float, seconds: float, fps: float, tilt_max: float, width: int,
               height: int, fov_deg: float, seed: int, ground_width_m: float) -> tuple[Path, dict[str, Any]]:
    """The flight video at this altitude, slowed down or with a narrower lens when the map is too
    small for the first try; (video, the case's row fields). SkylocError when nothing fits."""
    from skyloc.synth.flight import FlightConfig, make_flight

    last: SkylocError | None = None
    for speed, share in FLIGHT_FITS:
        fov = _fov(alt, fov_deg, share * ground_width_m)
        tile_m = _tile_m(alt, fov, width, height)
        cfg = FlightConfig(seconds=seconds, fps=fps, speed_mps=speed, altitude_range_m=(alt, 1.1 * alt),
                           tilt_max_deg=tilt_max, attitude_deg=3.0, yaw_mode="random-walk", seed=seed,
                           width=width, height=height, fov_deg=fov, overwrite=True,
                           appearance=BENCH_APPEARANCE, lower_to_fit=False)  # the ladder above picks the fit
        try:
            video = make_flight(map_path, out, cfg)
        except SkylocError as exc:
            last = exc
            continue
        return video, {"altitude_m": alt, "fov_deg": round(fov, 1), "tile_m": tile_m, "speed_mps": speed}
    assert last is not None
    raise last


def start_prior(truth_csv: Path, seed: int, radius_m: float = PRIOR_M, off_m: float = PRIOR_OFFSET_M) -> str:
    """--start for a flight: a disc of radius_m whose centre is off_m from the first true position,
    in a random direction (an operator's take-off estimate, not the truth)."""
    with open(truth_csv, newline="") as f:
        first = next(csv.DictReader(f))
    a = np.random.default_rng(seed).uniform(0.0, 2.0 * math.pi)
    lat, lon = geo.offset_latlon(float(first["lat"]), float(first["lon"]), off_m * math.sin(a), off_m * math.cos(a))
    return f"{float(lat):.7f},{float(lon):.7f},{radius_m:g}"


def _present_maps(maps: Sequence[tuple[str, Path | None]], rows: list[dict], work_dir: Path, seed: int,
                  world_m: float) -> Iterator[tuple[str, Path]]:
    """The maps to fly: None = the procedural world (made here); a missing file adds a skipped row."""
    from skyloc.synth.world import make_world

    for map_name, map_path in maps:
        if map_path is None:
            map_path = make_world(work_dir / "world", seed=seed, size_m=world_m, mpp=0.5)
        elif not Path(map_path).exists():
            rows.append({"map": map_name, "status": f"skipped: {map_path} not present"})
            continue
        yield map_name, Path(map_path)
