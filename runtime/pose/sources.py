"""Where each frame's altitude and attitude come from: flags, a telemetry CSV, EXIF/DJI XMP, MAVLink.

One interface, `PoseSource.pose_for(frame_time_s, frame_meta) -> FramePose`. Each source also
answers `values_for(...)`: the fields it knows for that frame (altitude_m, roll_deg, pitch_deg,
yaw_deg, camera_tilt_deg, gsd_m; a missing field is absent), so `ChainPose` can take each value
from the first source that has it. `frame_meta` is the Frame.meta of runtime.sources (path, exif).

Gimbal sources (DJI XMP, GIMBAL_DEVICE_ATTITUDE_STATUS) describe a stabilised camera: its pitch
and roll are relative to the horizon, so they give camera_tilt_deg = 90 + gimbal pitch (DJI's
-90 = nadir -> tilt 0) and roll = pitch = 0, and their yaw is the camera's heading.
"""
from __future__ import annotations

import bisect
import csv
import math
import os
from pathlib import Path
from typing import Any, Iterable

from skyloc.core.errors import SkylocError
from skyloc.runtime.pose.frame_pose import MAX_TILT_DEG, POSE_FIELDS as FIELDS, FramePose, PoseSource
from skyloc.runtime.pose.frame_pose import PoseValues as Values
from skyloc.runtime.pose.frame_pose import pose_field_ok as _field_ok
from skyloc.runtime.pose.exif_pose import ExifPose, read_dji_xmp
from skyloc.runtime.pose.mavlink_pose import MavlinkPoseListener

__all__ = ["PoseSource", "FlagPose", "TelemetryCsvPose", "ExifPose", "read_dji_xmp", "MavlinkPoseListener",
           "ChainPose", "FIELDS"]


class FlagPose(PoseSource):
    """Fixed values from the command line (--altitude, --roll, --pitch, --yaw, --camera-tilt, --gsd)."""

    name = "flags"

    def __init__(self, altitude_m: float | None = None, roll_deg: float | None = None,
                 pitch_deg: float | None = None, yaw_deg: float | None = None,
                 camera_tilt_deg: float | None = None, gsd_m: float | None = None) -> None:
        given = dict(altitude_m=altitude_m, roll_deg=roll_deg, pitch_deg=pitch_deg, yaw_deg=yaw_deg,
                     camera_tilt_deg=camera_tilt_deg, gsd_m=gsd_m)
        self.values = {k: float(v) for k, v in given.items() if v is not None}
        flag = {"altitude_m": "--altitude", "roll_deg": "--roll", "pitch_deg": "--pitch", "yaw_deg": "--yaw",
                "camera_tilt_deg": "--camera-tilt", "gsd_m": "--gsd"}
        for k, v in self.values.items():
            if not _field_ok(k, v):
                raise SkylocError(f"{flag[k]} {v}: out of range (altitude, gsd > 0; |roll|, |pitch| < 90; "
                                  f"tilt 0..{MAX_TILT_DEG:g}; all finite)")

    def values_for(self, frame_time_s: float, frame_meta: dict[str, Any]) -> Values:
        return dict(self.values)


# --- telemetry CSV ---------------------------------------------------------------------------------

CSV_COLUMNS = {"altitude_m": "altitude_m", "roll_deg": "roll_deg", "pitch_deg": "pitch_deg", "yaw_deg": "yaw_deg",
               "tilt_deg": "camera_tilt_deg", "camera_tilt_deg": "camera_tilt_deg", "gsd_m": "gsd_m"}


class TelemetryCsvPose(PoseSource):
    """Per-frame values from a CSV log joined on time (column `time_s`, the frame clock + time_offset_s).

    Each column is interpolated linearly between the samples around the frame time (yaw along the
    shorter arc) when they are at most max_gap_s apart; outside or across a larger gap the nearest
    sample is used only within max_gap_s / 2, else the value is missing for that frame. A row with
    a bad cell (not a number, NaN/Inf, out of range) or a bad time is skipped and reported in
    `problems` (file:line). Empty cells are just missing. A synthetic flight's truth.csv works.
    """

    name = "telemetry"

    def __init__(self, path: str | os.PathLike, max_gap_s: float = 1.0, time_offset_s: float = 0.0) -> None:
        self.path = Path(path)
        if not (math.isfinite(max_gap_s) and max_gap_s > 0) or not math.isfinite(time_offset_s):
            raise SkylocError(f"--telemetry {self.path}: max gap ({max_gap_s}) must be > 0 and the time offset finite")
        self.max_gap_s, self.offset = float(max_gap_s), float(time_offset_s)
        try:
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                header = [h.strip() for h in (reader.fieldnames or [])]
                reader.fieldnames = header
                rows = [(reader.line_num, r) for r in reader]
        except (OSError, csv.Error, UnicodeDecodeError) as exc:
            raise SkylocError(f"--telemetry {self.path} cannot be read as CSV: {exc}") from None
        if "time_s" not in header:
            raise SkylocError(f"--telemetry {self.path}: need a `time_s` column (seconds on the frames' clock) "
                              f"and any of {', '.join(CSV_COLUMNS)}; found {', '.join(header) or 'no header'}")
        cols = [c for c in header if c in CSV_COLUMNS]
        if not cols:
            raise SkylocError(f"--telemetry {self.path} has none of the columns {', '.join(CSV_COLUMNS)}")
        self.problems: list[str] = []
        series: dict[str, list[tuple[float, float]]] = {CSV_COLUMNS[c]: [] for c in cols}
        last_t = -math.inf
        for line, r in rows:
            try:
                t = float(r["time_s"])
                if not math.isfinite(t):
                    raise ValueError(f"time_s {r['time_s']!r} is not finite")
                if t <= last_t:
                    raise ValueError(f"time_s {t} does not increase (previous {last_t})")
                vals = {}
                for c in cols:
                    cell = (r.get(c) or "").strip()
                    if cell == "":
                        continue
                    v = float(cell)
                    if not _field_ok(CSV_COLUMNS[c], v):
                        raise ValueError(f"{c} = {cell!r} is not finite or out of range")
                    vals[CSV_COLUMNS[c]] = v
            except (TypeError, ValueError) as exc:
                self.problems.append(f"{self.path.name}:{line}: skipped ({exc})")
                continue
            last_t = t
            for k, v in vals.items():
                series[k].append((t, v))
        self.series = {k: ([t for t, _ in s], [v for _, v in s]) for k, s in series.items() if s}
        if not self.series:
            raise SkylocError(f"--telemetry {self.path}: no usable rows ({len(self.problems)} skipped"
                              + (f"; first: {self.problems[0]}" if self.problems else "") + ")")

    @property
    def skipped(self) -> int:
        return len(self.problems)

    def values_for(self, frame_time_s: float, frame_meta: dict[str, Any]) -> Values:
        t = frame_time_s + self.offset
        out: Values = {}
        if not math.isfinite(t):
            return out
        for k, (ts, vs) in self.series.items():
            v = _interp(ts, vs, t, self.max_gap_s, circular=(k == "yaw_deg"))
            if v is not None:
                out[k] = v
        return out


def _interp(ts: list[float], vs: list[float], t: float, max_gap: float, circular: bool) -> float | None:
    i = bisect.bisect_right(ts, t)  # ts[i-1] <= t < ts[i]
    if 0 < i < len(ts) and ts[i] - ts[i - 1] <= max_gap:
        a = (t - ts[i - 1]) / (ts[i] - ts[i - 1])
        v0, v1 = vs[i - 1], vs[i]
        if circular:
            d = (v1 - v0 + 180.0) % 360.0 - 180.0
            return (v0 + a * d) % 360.0
        return v0 + a * (v1 - v0)
    near = [j for j in (i - 1, i) if 0 <= j < len(ts)]
    j = min(near, key=lambda j: abs(ts[j] - t))
    return vs[j] if abs(ts[j] - t) <= max_gap / 2 else None


# --- chain ---------------------------------------------------------------------------------------


class ChainPose(PoseSource):
    """Each field from the first source that has it (e.g. telemetry, MAVLink, EXIF, then flags).

    no_heading drops the yaw of every source (compass failure: the localizer searches headings).
    The pose's `source` names where each field came from, e.g. "altitude_m=exif,yaw_deg=flags".
    """

    name = "chain"

    def __init__(self, sources: Iterable[PoseSource], no_heading: bool = False) -> None:
        self.sources = list(sources)
        self.no_heading = no_heading

    def values_for(self, frame_time_s: float, frame_meta: dict[str, Any]) -> Values:
        return self._merge(frame_time_s, frame_meta)[0]

    def _merge(self, frame_time_s: float, frame_meta: dict[str, Any]) -> tuple[Values, dict[str, str]]:
        out: Values = {}
        origin: dict[str, str] = {}
        for src in self.sources:
            for k, v in src.values_for(frame_time_s, frame_meta).items():
                if k not in out:
                    out[k], origin[k] = v, src.name
        if self.no_heading:
            out.pop("yaw_deg", None)
            origin.pop("yaw_deg", None)
        return out, origin

    def pose_for(self, frame_time_s: float, frame_meta: dict[str, Any]) -> FramePose:
        vals, origin = self._merge(frame_time_s, frame_meta)
        src = ",".join(f"{k}={origin[k]}" for k in FIELDS if k in origin)
        return FramePose(time_s=frame_time_s, source=src, **vals)
