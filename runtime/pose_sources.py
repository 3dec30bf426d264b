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
import re
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterable

from skyloc.runtime.camera import CameraModel
from skyloc.runtime.errors import SkylocError
from skyloc.runtime.exif import read_exif
from skyloc.runtime.pose import MAX_TILT_DEG, FramePose

FIELDS = ("altitude_m", "roll_deg", "pitch_deg", "yaw_deg", "camera_tilt_deg", "gsd_m")
Values = dict[str, float]


def _field_ok(name: str, v: float) -> bool:
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
    name = "pose"

    @abstractmethod
    def values_for(self, frame_time_s: float, frame_meta: dict[str, Any]) -> Values:
        """The fields this source knows for the frame (see module doc)."""

    def pose_for(self, frame_time_s: float, frame_meta: dict[str, Any]) -> FramePose:
        vals = self.values_for(frame_time_s, frame_meta)
        return FramePose(time_s=frame_time_s, source=self.name, **vals)


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


# --- EXIF / DJI XMP ------------------------------------------------------------------------------

_XMP_ATTR = re.compile(rb'drone-dji:(\w+)\s*=\s*"([^"]*)"')
_XMP_ELEM = re.compile(rb"<drone-dji:(\w+)>([^<]*)</drone-dji:\1>")


def read_dji_xmp(data: bytes) -> dict[str, str]:
    """drone-dji:* properties of the XMP packet in a JPEG's bytes (attribute or element form).

    The packet is plain XML in an APP1 segment; a regex reads it without an XML parser (no entity
    expansion on untrusted files). Empty when there is none.
    """
    start = data.find(b"<x:xmpmeta")
    if start < 0:
        return {}
    end = data.find(b"</x:xmpmeta>", start)
    packet = data[start:end if end > 0 else start + 65536]
    out = {k.decode("ascii"): v.decode("utf-8", "replace").strip() for k, v in _XMP_ATTR.findall(packet)}
    out.update({k.decode("ascii"): v.decode("utf-8", "replace").strip() for k, v in _XMP_ELEM.findall(packet)})
    return out


def _num(d: dict[str, Any], key: str) -> float | None:
    try:
        v = float(d[key])
    except (KeyError, TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class ExifPose(PoseSource):
    """Pose from the image file's DJI XMP: RelativeAltitude (above the take-off point: the ground
    there is assumed level with the ground below), GimbalPitchDegree (-90 = nadir -> tilt 0),
    GimbalYawDegree (camera heading; FlightYawDegree when absent). Reads frame_meta["path"]."""

    name = "exif"

    def __init__(self, head_bytes: int = 1 << 20) -> None:
        self.head_bytes = head_bytes
        self._cache: dict[str, tuple[dict[str, str], dict[str, Any]]] = {}
        self.problems: list[str] = []

    def tags(self, path: str | os.PathLike) -> tuple[dict[str, str], dict[str, Any]]:
        """(DJI XMP properties, EXIF tags) of an image file, cached."""
        key = str(path)
        if key not in self._cache:
            try:
                with open(key, "rb") as f:
                    data = f.read(self.head_bytes)
            except OSError as exc:
                raise SkylocError(f"pose from EXIF: cannot read {key}: {exc}") from None
            if len(self._cache) > 64:  # a folder is read in order: old entries are not needed again
                self._cache.clear()
            self._cache[key] = (read_dji_xmp(data), read_exif(data[:262144]))
        return self._cache[key]

    def values_for(self, frame_time_s: float, frame_meta: dict[str, Any]) -> Values:
        path = frame_meta.get("path")
        if not path:
            return {}
        xmp, _ = self.tags(path)
        out: Values = {}
        alt = _num(xmp, "RelativeAltitude")
        if alt is not None and alt > 0:
            out["altitude_m"] = alt
        elif alt is not None:
            self.problems.append(f"{Path(path).name}: RelativeAltitude {alt} m is not above ground; ignored")
        gp = _num(xmp, "GimbalPitchDegree")
        if gp is not None:
            # within a degree past nadir counts as nadir (gimbal noise)
            tilt = 0.0 if -91.0 <= gp <= -90.0 else 90.0 + gp
            if 0.0 <= tilt <= MAX_TILT_DEG:
                out.update(camera_tilt_deg=tilt, roll_deg=0.0, pitch_deg=0.0)
            else:
                self.problems.append(f"{Path(path).name}: GimbalPitchDegree {gp} is more than {MAX_TILT_DEG:g} "
                                     "deg from nadir; not usable for a ground fix")
        yaw = _num(xmp, "GimbalYawDegree")
        yaw = yaw if yaw is not None else _num(xmp, "FlightYawDegree")
        if yaw is not None:
            out["yaw_deg"] = yaw % 360.0
        return out

    def camera_for(self, frame_meta: dict[str, Any], width: int, height: int) -> CameraModel | None:
        """Intrinsics from the file when no camera file is given: DJI DewarpData (fx, fy, centre
        offsets, k1 k2 p1 p2 k3), else CalibratedFocalLength, else FocalLengthIn35mmFilm."""
        path = frame_meta.get("path")
        if not path:
            return None
        xmp, exif = self.tags(path)
        dew = [s.strip() for s in xmp.get("DewarpData", "").split(";")[-1].split(",")]
        try:
            fx, fy, dx, dy, k1, k2, p1, p2, k3 = (float(v) for v in dew)
            return CameraModel(fx, fy, width / 2 + dx, height / 2 + dy, width, height,  # as DJI's K.txt
                               (k1, k2, p1, p2, k3))
        except (ValueError, SkylocError):
            pass
        f = _num(xmp, "CalibratedFocalLength")
        cx, cy = _num(xmp, "CalibratedOpticalCenterX"), _num(xmp, "CalibratedOpticalCenterY")
        if f and f > 0 and cx is not None and cy is not None and 0 < cx < width and 0 < cy < height:
            return CameraModel(f, f, cx, cy, width, height)
        f35 = _num(exif, "FocalLengthIn35mmFilm")
        if f35 and f35 > 0:
            return CameraModel.from_focal_35mm(f35, width, height)
        return None


# --- MAVLink -------------------------------------------------------------------------------------

_YAW_IN_EARTH_FRAME = 2048  # GIMBAL_DEVICE_FLAGS_YAW_IN_EARTH_FRAME
_UNKNOWN_TERRAIN_M = -1000.0  # ALTITUDE.altitude_terrain below this is "unknown" (MAVLink spec)


class MavlinkPoseListener(PoseSource):
    """Latest attitude / altitude / gimbal from decoded pymavlink messages handed to `feed`.

    The output that owns the MAVLink connection passes every received message; the listener never
    opens a link. Each value keeps the message's own timestamp (`boot_s`, autopilot clock) and the
    receive time (`rx_s`, `clock`, default time.monotonic); values older than max_age_s on the
    receive clock are not used. NaN / Inf fields are rejected and counted in `rejected`.
    Altitude: ALTITUDE.altitude_terrain (above terrain) when known, else ALTITUDE.altitude_relative,
    else GLOBAL_POSITION_INT.relative_alt (above home). A gimbal status (earth-referenced pitch)
    makes the camera's attitude the gimbal's: roll = pitch = 0, tilt = 90 + gimbal pitch, yaw =
    vehicle yaw + gimbal yaw (or the gimbal's earth-frame yaw when its flags say so).
    """

    name = "mavlink"

    def __init__(self, max_age_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s, self.clock = float(max_age_s), clock
        self.latest: dict[str, tuple[float, float | None, float]] = {}  # key -> (value, boot_s, rx_s)
        self.rejected: dict[str, int] = {}
        self.received: dict[str, int] = {}

    def _put(self, key: str, value: float, boot_s: float | None, rx: float) -> None:
        self.latest[key] = (float(value), boot_s, rx)

    def _reject(self, kind: str) -> None:
        self.rejected[kind] = self.rejected.get(kind, 0) + 1

    def feed(self, msg: Any) -> None:
        kind = msg.get_type() if hasattr(msg, "get_type") else ""
        handler = {"ATTITUDE": self._attitude, "GLOBAL_POSITION_INT": self._gpi, "ALTITUDE": self._altitude,
                   "GIMBAL_DEVICE_ATTITUDE_STATUS": self._gimbal}.get(kind)
        if handler is None:
            return
        self.received[kind] = self.received.get(kind, 0) + 1
        try:
            handler(msg, self.clock())
        except (AttributeError, TypeError, ValueError):
            self._reject(kind)

    def _attitude(self, m: Any, rx: float) -> None:
        vals = [float(m.roll), float(m.pitch), float(m.yaw)]
        if not all(math.isfinite(v) for v in vals):
            return self._reject("ATTITUDE")
        roll, pitch, yaw = (math.degrees(v) for v in vals)
        if abs(roll) >= 90 or abs(pitch) >= 90:
            return self._reject("ATTITUDE")
        boot = m.time_boot_ms / 1000.0
        self._put("roll_deg", roll, boot, rx)
        self._put("pitch_deg", pitch, boot, rx)
        self._put("yaw_deg", yaw % 360.0, boot, rx)

    def _gpi(self, m: Any, rx: float) -> None:
        alt = float(m.relative_alt) / 1000.0
        if not math.isfinite(alt):
            return self._reject("GLOBAL_POSITION_INT")
        self._put("alt_home", alt, m.time_boot_ms / 1000.0, rx)

    def _altitude(self, m: Any, rx: float) -> None:
        terr, rel = float(m.altitude_terrain), float(m.altitude_relative)
        boot = m.time_usec / 1e6
        if not (math.isfinite(terr) or math.isfinite(rel)):
            return self._reject("ALTITUDE")
        if math.isfinite(terr) and terr > _UNKNOWN_TERRAIN_M:
            self._put("alt_terrain", terr, boot, rx)
        if math.isfinite(rel):
            self._put("alt_relative", rel, boot, rx)

    def _gimbal(self, m: Any, rx: float) -> None:
        w, x, y, z = (float(v) for v in m.q)
        n = math.sqrt(w * w + x * x + y * y + z * z)
        if not (math.isfinite(n) and n > 0.5):
            return self._reject("GIMBAL_DEVICE_ATTITUDE_STATUS")
        w, x, y, z = w / n, x / n, y / n, z / n
        pitch = math.degrees(math.asin(max(-1.0, min(1.0, 2.0 * (w * y - z * x)))))
        yaw = math.degrees(math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z)))
        boot = m.time_boot_ms / 1000.0
        self._put("gimbal_pitch", pitch, boot, rx)
        self._put("gimbal_yaw", yaw, boot, rx)
        self._put("gimbal_yaw_earth", 1.0 if int(m.flags) & _YAW_IN_EARTH_FRAME else 0.0, boot, rx)

    def _fresh(self, key: str, now: float) -> float | None:
        v = self.latest.get(key)
        if v is None or now - v[2] > self.max_age_s:
            return None
        return v[0]

    def values_for(self, frame_time_s: float, frame_meta: dict[str, Any]) -> Values:
        now = self.clock()
        g = lambda k: self._fresh(k, now)  # noqa: E731
        out: Values = {}
        for key in ("alt_terrain", "alt_relative", "alt_home"):
            a = g(key)
            if a is not None and a > 0:
                out["altitude_m"] = a
                break
        yaw = g("yaw_deg")
        gp = g("gimbal_pitch")
        if gp is not None:
            tilt = 0.0 if gp <= -90.0 + 1e-6 else 90.0 + gp
            if 0.0 <= tilt <= MAX_TILT_DEG:
                out.update(camera_tilt_deg=tilt, roll_deg=0.0, pitch_deg=0.0)
                gy = g("gimbal_yaw")
                if g("gimbal_yaw_earth"):
                    yaw = gy
                elif yaw is not None and gy is not None:
                    yaw = yaw + gy
        else:
            for k in ("roll_deg", "pitch_deg"):
                v = g(k)
                if v is not None:
                    out[k] = v
        if yaw is not None:
            out["yaw_deg"] = yaw % 360.0
        return out


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
