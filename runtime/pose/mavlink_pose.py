"""Frame pose from MAVLink telemetry (runtime.pose_sources.MavlinkPoseListener)."""
from __future__ import annotations

import math
import time
from typing import Any, Callable

from skyloc.runtime.pose.frame_pose import MAX_TILT_DEG, PoseSource
from skyloc.runtime.pose.frame_pose import PoseValues as Values

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
