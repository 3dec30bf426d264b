"""Aircraft position from the ground point seen at the image centre (pure geometry).

Retrieval localizes the *ground point at the image centre*. When the camera looks straight
down that is also the aircraft's horizontal position; when it does not (airframe pitched or
rolled, camera mounted tilted), the aircraft sits `altitude` away along the ray back up the
optical axis. Flat ground at the given height below the aircraft is assumed: over the few
hundred metres a fix covers, terrain slope is a smaller error than retrieval itself.

Frames (aerospace convention): body x forward, y right, z down; NED world. Attitude is the
usual yaw-pitch-roll (Z-Y-X) sequence: yaw clockwise from north, pitch nose-up positive, roll
right-wing-down positive. The camera is rigidly mounted looking down (body +z) and tilted
forward by `camera_tilt_deg` (0 = nadir, 90 = looking at the horizon straight ahead). A
stabilised gimbal that holds the camera level is described by pitch = roll = 0 and its own
tilt.

`FramePose` is the validated per-frame pose the localizer consumes (runtime.pose_sources makes
them); `camera_to_ned` turns it into the camera's orientation. Camera axes (OpenCV): x = image
right, y = image down, z = optical axis; mounted so that at tilt 0 the image top faces the nose.

`PoseInputs` holds the latest altitude / attitude, from flags, MAVLink telemetry
(runtime.outputs.MavlinkOutput.poll) or a per-frame CSV log (`TelemetryLog`).
"""
from __future__ import annotations

import csv
import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from skyloc.core.errors import SkylocError
from skyloc.core.geo import offset_latlon

# Beyond this angle from nadir the ray meets the ground so far away (or not at all) that the
# flat-ground assumption is meaningless; such frames get no aircraft position.
MAX_OFF_NADIR_DEG = 75.0


MAX_TILT_DEG = 75.0


def _finite(name: str, v: object, source: str) -> float:
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x) or isinstance(v, bool):
        raise SkylocError(f"pose{source}: {name} = {v!r} is not a finite number")
    return x


@dataclass
class FramePose:
    """Altitude above ground and attitude of one frame; validated on construction (SkylocError).

    altitude_m: height above the ground under the aircraft (> 0) or None (unknown: then gsd_m,
    or a scale search). roll / pitch: airframe attitude, |.| < 90 (aerospace convention, see
    module doc). yaw_deg: heading clockwise from true north, normalised to [0, 360), None =
    unknown (compass failure, --no-heading). camera_tilt_deg: camera pitched forward from nadir
    in [0, 75] (gimbal or fixed mount). gsd_m: metres per pixel across the image at its centre
    (for a nadir camera altitude / fx), used when the altitude is unknown. time_s: the frame time
    the pose belongs to. source: which source(s) gave the values, for the record.
    """

    altitude_m: float | None = None
    roll_deg: float = 0.0
    pitch_deg: float = 0.0
    yaw_deg: float | None = None
    camera_tilt_deg: float = 0.0
    gsd_m: float | None = None
    time_s: float | None = None
    source: str = ""

    def __post_init__(self) -> None:
        src = f" ({self.source})" if self.source else ""
        if self.altitude_m is not None:
            self.altitude_m = _finite("altitude_m", self.altitude_m, src)
            if self.altitude_m <= 0:
                raise SkylocError(f"pose{src}: altitude above ground {self.altitude_m} m must be > 0")
        for name in ("roll_deg", "pitch_deg"):
            v = _finite(name, getattr(self, name), src)
            if abs(v) >= 90.0:
                raise SkylocError(f"pose{src}: {name} = {v} must be within (-90, 90) degrees")
            setattr(self, name, v)
        if self.yaw_deg is not None:
            self.yaw_deg = _finite("yaw_deg", self.yaw_deg, src) % 360.0
            if self.yaw_deg >= 360.0:  # -1e-18 % 360 rounds to 360.0
                self.yaw_deg = 0.0
        self.camera_tilt_deg = _finite("camera_tilt_deg", self.camera_tilt_deg, src)
        if not 0.0 <= self.camera_tilt_deg <= MAX_TILT_DEG:
            raise SkylocError(f"pose{src}: camera tilt {self.camera_tilt_deg} deg must be in [0, {MAX_TILT_DEG:g}] "
                              "(0 = nadir, positive = pitched forward)")
        if self.gsd_m is not None:
            self.gsd_m = _finite("gsd_m", self.gsd_m, src)
            if self.gsd_m <= 0:
                raise SkylocError(f"pose{src}: gsd {self.gsd_m} m/px must be > 0")
        if self.time_s is not None:
            self.time_s = _finite("time_s", self.time_s, src)

    @classmethod
    def checked(cls, **kw: object) -> "FramePose":
        return cls(**kw)  # type: ignore[arg-type]

    def with_(self, **kw: object) -> "FramePose":
        """A validated copy with some fields replaced."""
        return replace(self, **kw)  # type: ignore[arg-type]

    def attitude(self, yaw_deg: float | None = None) -> "Attitude":
        """Attitude with yaw_deg (default: this pose's yaw, 0 when unknown)."""
        y = yaw_deg if yaw_deg is not None else (self.yaw_deg or 0.0)
        return Attitude(self.roll_deg, self.pitch_deg, y)


def camera_to_ned(pose: FramePose, yaw_deg: float | None = None) -> np.ndarray:
    """3x3 rotation taking camera-frame vectors (x right, y down, z optical axis) to NED.

    yaw_deg overrides the pose's yaw (None: the pose's, or 0 when unknown: then "north" is the
    aircraft's heading). At tilt 0 the camera looks along body +z with the image top at the nose.
    """
    t = math.radians(pose.camera_tilt_deg)
    # columns: camera x, y, z in body axes (x forward, y right, z down)
    cam_in_body = np.array([[0.0, -math.cos(t), math.sin(t)],
                            [1.0, 0.0, 0.0],
                            [0.0, math.sin(t), math.cos(t)]])
    return body_to_ned(pose.attitude(yaw_deg)) @ cam_in_body


POSE_FIELDS = ("altitude_m", "roll_deg", "pitch_deg", "yaw_deg", "camera_tilt_deg", "gsd_m")
PoseValues = dict[str, float]


def pose_field_ok(name: str, v: float) -> bool:
    """The range FramePose accepts, checked at the edge so one bad sample is skipped, not fatal."""
    if not math.isfinite(v):
        return False
    if name in ("altitude_m", "gsd_m"):
        return v > 0
    if name in ("roll_deg", "pitch_deg"):
        return abs(v) < 90
    if name == "camera_tilt_deg":
        return 0 <= v <= MAX_TILT_DEG
    return True


class PoseSource(ABC):
    """Where a frame's pose comes from (runtime.pose_sources). `values_for` gives the fields the
    source knows for that frame (a subset of POSE_FIELDS) so sources can be chained."""

    name = "pose"

    @abstractmethod
    def values_for(self, frame_time_s: float, frame_meta: dict[str, Any]) -> PoseValues:
        """The fields this source knows for the frame (absent = unknown)."""

    def pose_for(self, frame_time_s: float, frame_meta: dict[str, Any]) -> FramePose:
        vals = self.values_for(frame_time_s, frame_meta)
        return FramePose(time_s=frame_time_s, source=self.name, **vals)


@dataclass
class Attitude:
    """Aircraft attitude in degrees (see module doc for the conventions)."""

    roll_deg: float = 0.0
    pitch_deg: float = 0.0
    yaw_deg: float = 0.0


def body_to_ned(att: Attitude) -> np.ndarray:
    """3x3 rotation taking body-frame vectors to NED: Rz(yaw) @ Ry(pitch) @ Rx(roll)."""
    r, p, y = (math.radians(a) for a in (att.roll_deg, att.pitch_deg, att.yaw_deg))
    cr, sr, cp, sp, cy, sy = math.cos(r), math.sin(r), math.cos(p), math.sin(p), math.cos(y), math.sin(y)
    rz = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
    return rz @ ry @ rx


def camera_axis_ned(att: Attitude, camera_tilt_deg: float = 0.0) -> np.ndarray:
    """Unit optical axis in NED (north, east, down)."""
    t = math.radians(camera_tilt_deg)
    return body_to_ned(att) @ np.array([math.sin(t), 0.0, math.cos(t)])


def ground_offset_m(altitude_m: float, att: Attitude, camera_tilt_deg: float = 0.0,
                    max_off_nadir_deg: float = MAX_OFF_NADIR_DEG) -> tuple[float, float] | None:
    """(east_m, north_m) from the aircraft to the ground point at the image centre.

    None when the axis is more than `max_off_nadir_deg` from straight down (or points up).
    """
    n, e, d = camera_axis_ned(att, camera_tilt_deg)
    if d <= math.cos(math.radians(max_off_nadir_deg)):
        return None
    scale = altitude_m / d
    return e * scale, n * scale


def aircraft_position(ground_lat: float, ground_lon: float, altitude_m: float, att: Attitude,
                      camera_tilt_deg: float = 0.0,
                      max_off_nadir_deg: float = MAX_OFF_NADIR_DEG) -> tuple[float, float] | None:
    """Aircraft (lat, lon) given the ground point at the image centre; None if not computable."""
    if not (math.isfinite(altitude_m) and altitude_m >= 0.0):
        return None
    off = ground_offset_m(altitude_m, att, camera_tilt_deg, max_off_nadir_deg)
    if off is None:
        return None
    lat, lon = offset_latlon(ground_lat, ground_lon, -off[0], -off[1])
    return float(lat), float(lon)


@dataclass
class PoseInputs:
    """The latest known altitude above ground and attitude; fields None until known.

    Filled from command-line flags (fixed values) and/or MAVLink telemetry (updated per frame).
    """

    altitude_m: float | None = None
    roll_deg: float | None = None
    pitch_deg: float | None = None
    yaw_deg: float | None = None
    camera_tilt_deg: float = 0.0

    def attitude(self) -> Attitude:
        return Attitude(self.roll_deg or 0.0, self.pitch_deg or 0.0, self.yaw_deg or 0.0)

    def aircraft(self, ground_lat: float, ground_lon: float) -> tuple[float, float] | None:
        """Aircraft position for a ground fix, or None if altitude / heading are unknown.

        Heading is required unless the camera is at nadir and the airframe level, in which
        case the aircraft is simply above the ground point.
        """
        if self.altitude_m is None:
            return None
        level = not self.roll_deg and not self.pitch_deg and not self.camera_tilt_deg
        if self.yaw_deg is None and not level:
            return None
        return aircraft_position(ground_lat, ground_lon, self.altitude_m, self.attitude(), self.camera_tilt_deg)


TELEMETRY_FIELDS = {"altitude_m": "altitude_m", "roll_deg": "roll_deg", "pitch_deg": "pitch_deg",
                    "yaw_deg": "yaw_deg", "tilt_deg": "camera_tilt_deg"}


class TelemetryLog:
    """Attitude / altitude per frame from a CSV flight log (e.g. a synthetic flight's truth.csv).

    Columns: `frame` (or `time_s`) plus any of altitude_m, roll_deg, pitch_deg, yaw_deg, tilt_deg.
    Only these are read; position columns in the file are ignored on purpose (they are what
    we are estimating).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        path = Path(path)
        try:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        except OSError as exc:
            raise SkylocError(f"--telemetry {path} cannot be read: {exc}") from None
        if not rows or not ({"frame", "time_s"} & set(rows[0])):
            raise SkylocError(f"--telemetry {path}: need a header with `frame` or `time_s` and any of "
                              f"{', '.join(TELEMETRY_FIELDS)}")
        cols = [c for c in TELEMETRY_FIELDS if c in rows[0]]
        if not cols:
            raise SkylocError(f"--telemetry {path} has none of the columns {', '.join(TELEMETRY_FIELDS)}")
        try:
            self.by_frame = ({int(r["frame"]): self._values(r, cols) for r in rows} if "frame" in rows[0] else {})
            self.times = np.array([float(r["time_s"]) for r in rows]) if "time_s" in rows[0] else np.zeros(0)
            self.rows = [self._values(r, cols) for r in rows]
        except ValueError as exc:
            raise SkylocError(f"--telemetry {path}: bad number ({exc})") from None

    @staticmethod
    def _values(row: dict[str, str], cols: list[str]) -> dict[str, float]:
        return {TELEMETRY_FIELDS[c]: float(row[c]) for c in cols if row[c] not in ("", None)}

    def apply(self, pose: PoseInputs, frame: int, time_s: float) -> bool:
        """Set pose fields for this frame (by index, else the nearest earlier time); True if found."""
        vals = self.by_frame.get(frame)
        if vals is None and self.times.size:
            i = int(np.searchsorted(self.times, time_s, side="right")) - 1
            vals = self.rows[i] if i >= 0 else None
        if vals is None:
            return False
        for k, v in vals.items():
            setattr(pose, k, v)
        return True
