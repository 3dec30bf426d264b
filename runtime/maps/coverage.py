"""Does a tile set suit the camera and the altitudes it flies? Checked when `skyloc run` starts.

A frame is registered against the largest tile it covers entirely (localize.rectify
.pick_scale_level); a frame that covers less ground than the smallest tile is skipped as
`no-coverage`. With tiles larger than the footprint every frame is skipped and the user sees
only "fixes 0", so the run refuses such a tile set before it opens any output, and warns when
only part of the altitude range is served -- both saying which `skyloc tiles --tile-m / --scales`
would serve the whole range.

What a frame covers grows linearly with altitude for a given camera and attitude. Where the run
cannot know the frame size (--hfov without --camera) a square frame is assumed: the most ground
an hfov can cover, so the check never refuses a tile set that could work.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from skyloc.core.errors import SkylocError
from skyloc.runtime.localize.rectify import ground_coverage_m
from skyloc.runtime.pose.camera import CameraModel
from skyloc.runtime.pose.frame_pose import FramePose

LADDER = 1.4  # ratio between suggested scale levels: every altitude gets a tile within 1.4x of its coverage


def tile_advice(coverage_lo_m: float, coverage_hi_m: float) -> str:
    """`--tile-m T --scales ...` whose levels serve coverages from lo to hi."""
    t = max(5.0, 5.0 * math.floor(0.95 * coverage_lo_m / 5.0))
    scales = [1.0]
    while t * scales[-1] * LADDER <= coverage_hi_m:
        scales.append(scales[-1] * LADDER)
    return f"--tile-m {t:.0f} --scales " + ",".join(f"{s:.2g}" for s in scales)


def coverage_range_m(camera: CameraModel, altitudes_m: tuple[float, float], tilt_deg: float = 0.0,
                     heading_known: bool = True) -> tuple[float, float]:
    """Side of the ground square a frame covers: the least (lowest altitude, worst heading) and the
    most (highest altitude, best heading). A north-up square inside a turned frame is smallest at
    diagonal headings; without a heading the square must survive any rotation."""
    yaws = (0.0, 15.0, 30.0, 45.0, 60.0, 75.0, 90.0) if heading_known else (None,)
    lo, hi = altitudes_m
    least = min(ground_coverage_m(camera, FramePose(altitude_m=lo, yaw_deg=y, camera_tilt_deg=tilt_deg)) for y in yaws)
    most = max(ground_coverage_m(camera, FramePose(altitude_m=hi, yaw_deg=y, camera_tilt_deg=tilt_deg)) for y in yaws)
    return least, most


def check_tile_sides(sides_m: Sequence[float], camera: CameraModel, altitudes_m: tuple[float, float],
                     tilt_deg: float, heading_known: bool, where: str) -> str | None:
    """Raise when no tile side is served at any altitude of the range; return a warning when only
    part of the range is served; None when all is well."""
    lo_alt, hi_alt = altitudes_m
    cov_lo, cov_hi = coverage_range_m(camera, altitudes_m, tilt_deg, heading_known)
    smallest = min(sides_m)
    sides = ", ".join(f"{s:.0f}" for s in sorted(sides_m))
    at = f"{lo_alt:.0f}-{hi_alt:.0f} m" if hi_alt > lo_alt else f"{lo_alt:.0f} m"
    seen = (f"the frames cover {cov_lo:.0f}-{cov_hi:.0f} m squares (by altitude and heading) at {at}"
            if cov_hi > cov_lo * 1.005 else f"the frames cover a {cov_lo:.0f} m square at {at}")
    how = "" if heading_known else " (heading unknown: a square that stays covered at any rotation)"
    if not cov_hi > 0 or smallest > cov_hi * (1 + 1e-9):
        raise SkylocError(f"tile set {where}: its tiles are {sides} m but {seen}{how}: every frame would be skipped "
                          f"as no-coverage. Rebuild it with `skyloc tiles ... {tile_advice(cov_lo, cov_hi)}`, "
                          "or check --altitude / --camera / --hfov")
    if smallest > cov_lo * (1 + 1e-9):
        need = lo_alt * smallest / cov_lo  # coverage is proportional to altitude
        return (f"tile set {where}: its smallest tiles are {smallest:.0f} m but {seen}{how}: frames below "
                f"{need:.0f} m will be skipped as no-coverage; `skyloc tiles ... {tile_advice(cov_lo, cov_hi)}` "
                "serves the whole range")
    return None


def run_altitudes(opt: Any, poses: Any) -> tuple[float, float] | None:
    """The altitude range the run will fly: --telemetry's altitude column, else --altitude; None
    when only the frames will say (EXIF, MAVLink)."""
    tel = getattr(poses, "telemetry", None)
    series = getattr(tel, "series", {}) if tel is not None else {}
    if "altitude_m" in series and series["altitude_m"][1]:
        vals = series["altitude_m"][1]
        return float(min(vals)), float(max(vals))
    if getattr(opt, "altitude", None):
        return float(opt.altitude), float(opt.altitude)
    return None


def run_camera(cam: Any) -> CameraModel | None:
    """The camera the check can use: a CameraModel, or an hfov-only camera as a square frame."""
    if isinstance(cam, CameraModel):
        return cam
    hfov = getattr(cam, "hfov_deg", None)
    if hfov is not None and hasattr(cam, "scaled_to"):
        return cam.scaled_to(1000, 1000)
    return None


def check_run_coverage(ts: Any, opt: Any, cam: Any, poses: Any) -> str | None:
    """`skyloc run`'s start check (see the module doc); a warning to log, or None. Skipped where
    the camera or the altitude comes only with the frames, or the run knows only a GSD."""
    camera, alts = run_camera(cam), run_altitudes(opt, poses)
    if camera is None or alts is None or not all(math.isfinite(a) and a > 0 for a in alts):
        return None
    tile_m = float(ts.meta.get("tile_m") or 0.0)
    levels = sorted({float(s) for s in ts.scale}) if len(ts.scale) else [1.0]
    if not tile_m > 0:
        return None
    tilt = float(getattr(opt, "camera_tilt", 0.0) or 0.0)
    heading = _heading_possible(opt, poses)
    return check_tile_sides([tile_m * s for s in levels], camera, alts, tilt, heading, str(ts.path))


def _heading_possible(opt: Any, poses: Any) -> bool:
    """Whether any frame may come with a heading (then its covered square is the larger, north-up
    one): --yaw, a telemetry yaw column, MAVLink, or image files' EXIF."""
    if not getattr(opt, "use_heading", True):
        return False
    tel = getattr(poses, "telemetry", None)
    return (getattr(opt, "yaw", None) is not None or "yaw_deg" in (getattr(tel, "series", None) or {})
            or getattr(poses, "mavlink", None) is not None or getattr(poses, "exif", None) is not None)
