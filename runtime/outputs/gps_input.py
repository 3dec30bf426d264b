"""GPS_INPUT from a fix record: the single place of the rule "fix_type 3 only for a verified,
accepted, finite fix" (`gps_input_fields`), and the heading it carries (`yaw_cdeg`: only the
registration's measured heading, HeadingSource.REGISTRATION, in centidegrees with north = 36000
since 0 means "no yaw"). GPS time = UTC + 18 s (leap seconds since 2017-01-01). Split from
mavlink.py (the link), which re-exports these names.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

from skyloc.core.errors import SkylocError
from skyloc.runtime.outputs.schema import HeadingSource

GPS_EPOCH_UNIX = 315964800  # 1980-01-06T00:00:00Z
GPS_LEAP_SECONDS = 18  # GPS - UTC since 2017-01-01 (IERS bulletin C: no leap second announced since)
SECONDS_PER_WEEK = 7 * 24 * 3600


def mavutil():
    """pymavlink's mavutil set to MAVLink 2 (GPS_INPUT.yaw is a MAVLink 2 extension field)."""
    os.environ["MAVLINK20"] = "1"
    from pymavlink import mavutil as mu

    if getattr(mu.mavlink, "WIRE_PROTOCOL_VERSION", "1.0") != "2.0":
        mu.set_dialect(mu.current_dialect)
    return mu


def gps_time(unix_s: float) -> tuple[int, int]:
    """(GPS week, milliseconds into the week) for a UTC UNIX time."""
    gps_s = unix_s - GPS_EPOCH_UNIX + GPS_LEAP_SECONDS
    week = int(gps_s // SECONDS_PER_WEEK)
    ms = int(round((gps_s - week * SECONDS_PER_WEEK) * 1000.0))
    if ms >= SECONDS_PER_WEEK * 1000:  # rounding up into the next week
        week, ms = week + 1, ms - SECONDS_PER_WEEK * 1000
    return week, ms


@dataclass
class GpsInputConfig:
    """How fixes become GPS_INPUT. `unverified`: what a record that is not a verified, accepted,
    finite fix becomes: "skip" (nothing is sent; the autopilot times the GPS out) or "no-fix"
    (GPS_INPUT with fix_type 0 and no position, so the autopilot sees the link alive but no fix)."""

    fix_type: int = 3  # for fixes we vouch for: 3 = 3D (2 = 2D)
    unverified: str = "skip"
    satellites: int = 10  # passes ArduPilot's (>= 6) and PX4's (EKF2_REQ_NSATS = 6) checks; see README
    gps_id: int = 0
    hdop_m: float = 5.0  # hdop = accuracy_m / hdop_m (a GNSS-like user range error per unit DOP)
    default_accuracy_m: float | None = None  # horiz_accuracy for records without accuracy_m
    # heading sources sent as GPS yaw: only the registration's measurement. "pose" is the
    # autopilot's own heading (echoing it back would be circular); "rotation-search" is a
    # 360/R-degree guess that never verifies a fix on its own.
    yaw_sources: tuple[HeadingSource, ...] = (HeadingSource.REGISTRATION,)

    def __post_init__(self) -> None:
        if self.fix_type not in (2, 3):
            raise SkylocError(f"--fix-type {self.fix_type} must be 2 or 3 (RTK / DGPS types would claim an accuracy we do not have)")
        if self.unverified not in ("skip", "no-fix"):
            raise SkylocError(f"unverified policy {self.unverified!r} must be 'skip' or 'no-fix'")
        if isinstance(self.satellites, bool) or not isinstance(self.satellites, int) or not 0 <= self.satellites <= 254:
            raise SkylocError(f"--satellites {self.satellites!r} must be an integer 0..254")
        if not isinstance(self.gps_id, int) or not 0 <= self.gps_id <= 255:
            raise SkylocError(f"--gps-id {self.gps_id!r} must be an integer 0..255")
        if not math.isfinite(self.hdop_m) or self.hdop_m <= 0:
            raise SkylocError(f"hdop_m {self.hdop_m!r} must be a finite number > 0")
        a = self.default_accuracy_m
        if a is not None and (not math.isfinite(a) or a <= 0):
            raise SkylocError(f"--horiz-accuracy {a!r} must be a finite number of metres > 0")


def _num(record: dict[str, Any], key: str) -> float | None:
    v = record.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def vouched(record: dict[str, Any]) -> bool:
    """A fix we may send as a position: verified, accepted, with a finite in-range lat/lon."""
    lat, lon = fix_position(record)
    return record.get("verified") is True and record.get("accepted") is True and lat is not None


def fix_position(record: dict[str, Any]) -> tuple[float | None, float | None]:
    # the aircraft's position when known, else the record's lat/lon
    lat, lon = _num(record, "aircraft_lat"), _num(record, "aircraft_lon")
    if lat is None or lon is None:
        lat, lon = _num(record, "lat"), _num(record, "lon")
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None, None
    return lat, lon


def measured_heading(record: dict[str, Any],
                     sources: tuple[HeadingSource, ...] = (HeadingSource.REGISTRATION,)) -> float | None:
    """The record's heading in [0, 360) when it is one of `sources` (our own measurement), else None."""
    heading = _num(record, "heading_deg")
    if heading is None or record.get("heading_source") not in sources:
        return None
    return heading % 360.0


def yaw_cdeg(record: dict[str, Any], sources: tuple[HeadingSource, ...] = (HeadingSource.REGISTRATION,)) -> int | None:
    """GPS_INPUT.yaw in centidegrees 1..36000 (north = 36000: 0 means "no yaw"), or None."""
    heading = measured_heading(record, sources)
    if heading is None:
        return None
    cd = int(round(heading * 100.0))
    return 36000 if cd in (0, 36000) else cd


def gps_input_fields(record: dict[str, Any], cfg: GpsInputConfig, now_unix: float | None = None) -> dict[str, Any] | None:
    """GPS_INPUT fields for a record (pymavlink names), or None when nothing is to be sent.

    time_usec / time_week / time_week_ms: the frame's capture time (`capture_unix_s`, UTC), else
    `now_unix` (the send time). Velocity (vn_mps, ve_mps from the filter) and the heading (yaw,
    only when `heading_source` is an estimate of ours, in cdeg with north = 36000) are sent when
    present and finite; their ignore flags say so otherwise.
    """
    m = mavutil().mavlink
    t = _num(record, "capture_unix_s")
    t = (time.time() if now_unix is None else now_unix) if t is None or t <= GPS_EPOCH_UNIX else t
    week, week_ms = gps_time(t)
    ignore = (m.GPS_INPUT_IGNORE_FLAG_ALT | m.GPS_INPUT_IGNORE_FLAG_VDOP | m.GPS_INPUT_IGNORE_FLAG_VEL_VERT
              | m.GPS_INPUT_IGNORE_FLAG_SPEED_ACCURACY | m.GPS_INPUT_IGNORE_FLAG_VERTICAL_ACCURACY)
    f = dict(time_usec=int(round(t * 1e6)), gps_id=cfg.gps_id, time_week_ms=week_ms, time_week=week,
             lat=0, lon=0, alt=0.0, hdop=0.0, vdop=0.0, vn=0.0, ve=0.0, vd=0.0, speed_accuracy=0.0,
             horiz_accuracy=0.0, vert_accuracy=0.0, satellites_visible=cfg.satellites, yaw=0)
    if not vouched(record):
        if cfg.unverified == "skip":
            return None
        ignore |= (m.GPS_INPUT_IGNORE_FLAG_HDOP | m.GPS_INPUT_IGNORE_FLAG_VEL_HORIZ
                   | m.GPS_INPUT_IGNORE_FLAG_HORIZONTAL_ACCURACY)
        f.update(fix_type=m.GPS_FIX_TYPE_NO_GPS, satellites_visible=0, ignore_flags=ignore)
        return f
    lat, lon = fix_position(record)
    f.update(fix_type=cfg.fix_type, lat=int(round(lat * 1e7)), lon=int(round(lon * 1e7)))  # type: ignore[operator]
    acc = _num(record, "accuracy_m")
    acc = acc if acc is not None and acc > 0 else cfg.default_accuracy_m
    if acc is None:
        ignore |= m.GPS_INPUT_IGNORE_FLAG_HDOP | m.GPS_INPUT_IGNORE_FLAG_HORIZONTAL_ACCURACY
    else:
        f.update(horiz_accuracy=float(acc), hdop=float(acc) / cfg.hdop_m)
    vn, ve = _num(record, "vn_mps"), _num(record, "ve_mps")
    if vn is None or ve is None:
        ignore |= m.GPS_INPUT_IGNORE_FLAG_VEL_HORIZ
    else:
        f.update(vn=vn, ve=ve)
    cd = yaw_cdeg(record, cfg.yaw_sources)
    if cd is not None:
        f["yaw"] = cd
    f["ignore_flags"] = ignore
    return f


GPS_INPUT_ORDER = ("time_usec", "gps_id", "ignore_flags", "time_week_ms", "time_week", "fix_type", "lat", "lon",
                   "alt", "hdop", "vdop", "vn", "ve", "vd", "speed_accuracy", "horiz_accuracy", "vert_accuracy",
                   "satellites_visible", "yaw")
