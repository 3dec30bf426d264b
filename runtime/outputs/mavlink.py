"""The autopilot link: one MAVLink 2 connection, heartbeats, received messages, GPS_INPUT.

`MavlinkLink` owns the connection. A thread independent of the frames sends a HEARTBEAT every
`heartbeat_s` (so the autopilot keeps seeing the companion computer while the model is busy or
the camera is down) and reads what the autopilot sends; every received message whose numbers
are all finite is handed to the registered listeners (`add_listener(fn)`, e.g. the pose
sources' `MavlinkPoseListener.feed`). Messages carrying NaN / Inf are counted and dropped, except
the fields MAVLink defines as "NaN = unknown", which reach listeners as None. Listeners run on
the link thread: keep them short and thread-safe; an exception in one is counted, never fatal.

`gps_input_fields(record, cfg)` turns a fix record into GPS_INPUT fields, or None when the
record must not be sent; it is the single place of the rule "fix_type 3 only for a verified,
accepted, finite fix". GPS time = UTC + 18 s (leap seconds since 2017-01-01).
"""
from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from skyloc.core.errors import SkylocError

log = logging.getLogger(__name__)

GPS_EPOCH_UNIX = 315964800  # 1980-01-06T00:00:00Z
GPS_LEAP_SECONDS = 18  # GPS - UTC since 2017-01-01 (IERS bulletin C: no leap second announced since)
SECONDS_PER_WEEK = 7 * 24 * 3600

# (message, field) pairs where MAVLink defines NaN as "unknown": passed on as None, not dropped
NAN_MEANS_UNKNOWN = {
    ("GIMBAL_DEVICE_ATTITUDE_STATUS", "angular_velocity_x"), ("GIMBAL_DEVICE_ATTITUDE_STATUS", "angular_velocity_y"),
    ("GIMBAL_DEVICE_ATTITUDE_STATUS", "angular_velocity_z"), ("GIMBAL_DEVICE_ATTITUDE_STATUS", "delta_yaw"),
    ("GIMBAL_DEVICE_ATTITUDE_STATUS", "delta_yaw_velocity"), ("ALTITUDE", "bottom_clearance"),
}


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


def check_id(value: Any, flag: str) -> int:
    """A MAVLink system / component id: an integer 1..255."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
        raise SkylocError(f"{flag} {value!r} must be an integer 1..255 (MAVLink ids are one byte, 0 = broadcast)")
    return value


def open_mavlink(url: str, source_system: int = 1, source_component: int = 191):
    """pymavlink connection from a URL: udpout:HOST:PORT / udpin:HOST:PORT / tcp:HOST:PORT as
    pymavlink spells them; a serial port as /dev/ttyTHS1:921600 or /dev/ttyTHS1,921600 (pyserial);
    file:PATH writes raw MAVLink bytes to a file (logging, tests)."""
    check_id(source_system, "--mavlink-sysid")
    check_id(source_component, "--mavlink-compid")
    mu = mavutil()
    try:
        if url.startswith("file:"):
            return mu.mavlogfile(url[5:], write=True, notimestamps=True,
                                 source_system=source_system, source_component=source_component)
        if url.startswith("serial:"):
            url = url[7:]
        if url.startswith("/dev/") or url.upper().startswith("COM"):
            dev, baud = url, 115200
            for sep in (",", ":"):
                head, s, tail = url.rpartition(sep)
                if s and tail.isdigit():
                    dev, baud = head, int(tail)
                    break
            return mu.mavlink_connection(dev, baud=baud, source_system=source_system,
                                         source_component=source_component, autoreconnect=True)
        return mu.mavlink_connection(url, source_system=source_system, source_component=source_component)
    except Exception as exc:  # pyserial's SerialException, socket errors, pymavlink's ValueErrors
        raise SkylocError(f"--mavlink {url!r} cannot be opened ({type(exc).__name__}: {exc}); use "
                          "udpout:HOST:PORT, udpin:HOST:PORT, tcp:HOST:PORT, /dev/ttyX:BAUD or file:PATH") from None


def finite_message(msg: Any) -> bool:
    """True when every number in `msg` is finite; "NaN = unknown" fields are set to None."""
    kind = msg.get_type()
    for name in msg.get_fieldnames():
        v = getattr(msg, name, None)
        vals = v if isinstance(v, (list, tuple)) else (v,)
        if any(isinstance(x, float) and not math.isfinite(x) for x in vals):
            if (kind, name) in NAN_MEANS_UNKNOWN and not isinstance(v, (list, tuple)):
                setattr(msg, name, None)
            else:
                return False
    return True


@dataclass
class LinkStats:
    heartbeats: int = 0
    received: int = 0
    dispatched: int = 0
    nonfinite_dropped: int = 0  # messages with NaN / Inf, never handed on
    listener_errors: int = 0
    send_errors: int = 0
    recv_errors: int = 0


class MavlinkLink:
    """A MAVLink 2 connection with a heartbeat / receive thread and message listeners."""

    def __init__(self, url: str, source_system: int = 1, source_component: int = 191,
                 heartbeat_s: float = 1.0) -> None:
        if not math.isfinite(heartbeat_s) or heartbeat_s <= 0:
            raise SkylocError(f"MAVLink heartbeat period {heartbeat_s!r} must be a finite number of seconds > 0")
        self.url = url
        self.conn = open_mavlink(url, source_system, source_component)
        self.mavlink = mavutil().mavlink
        self.heartbeat_s = heartbeat_s
        self.stats = LinkStats()
        self.nonfinite_by_type: collections.Counter[str] = collections.Counter()
        self._listeners: list[Callable[[Any], None]] = []
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._receive = not url.startswith("file:")
        self.heartbeat()  # the autopilot sees us before the first frame
        self._thread = threading.Thread(target=self._run, name="skyloc-mavlink", daemon=True)
        self._thread.start()

    def add_listener(self, fn: Callable[[Any], None]) -> None:
        """Call fn(msg) for every received, finite message (on the link thread)."""
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[Any], None]) -> None:
        self._listeners.remove(fn)

    def send(self, name: str, *args: Any) -> bool:
        """conn.mav.<name>_send(*args) under the send lock; False (counted) when the link fails."""
        try:
            with self._send_lock:
                getattr(self.conn.mav, name + "_send")(*args)
            return True
        except OSError as exc:  # serial hiccup, unplugged cable, no route: count, keep flying
            self.stats.send_errors += 1
            if self.stats.send_errors <= 5 or self.stats.send_errors % 100 == 0:
                log.warning("MAVLink %s to %s failed: %s (%d send errors)", name, self.url, exc, self.stats.send_errors)
            return False

    def heartbeat(self) -> None:
        m = self.mavlink
        if self.send("heartbeat", m.MAV_TYPE_ONBOARD_CONTROLLER, m.MAV_AUTOPILOT_INVALID, 0, 0, m.MAV_STATE_ACTIVE):
            self.stats.heartbeats += 1

    def _run(self) -> None:
        next_hb = time.monotonic() + self.heartbeat_s
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_hb:
                self.heartbeat()
                next_hb = max(next_hb + self.heartbeat_s, now)  # no burst after a stall
            got = self._drain() if self._receive else 0
            if not got:
                self._stop.wait(0.01)

    def _drain(self, max_messages: int = 200) -> int:
        n = 0
        for _ in range(max_messages):
            try:
                msg = self.conn.recv_match(blocking=False)
            except Exception as exc:  # a garbled stream or a dropped socket must not end the thread
                self.stats.recv_errors += 1
                if self.stats.recv_errors <= 5:
                    log.warning("MAVLink receive on %s failed: %s", self.url, exc)
                return n
            if msg is None:
                return n
            n += 1
            if msg.get_type() == "BAD_DATA":
                continue
            self.stats.received += 1
            if not finite_message(msg):
                self.stats.nonfinite_dropped += 1
                self.nonfinite_by_type[msg.get_type()] += 1
                continue
            for fn in list(self._listeners):
                try:
                    fn(msg)
                except Exception:
                    self.stats.listener_errors += 1
                    if self.stats.listener_errors <= 5:
                        log.exception("MAVLink listener %r failed on %s", fn, msg.get_type())
            self.stats.dispatched += 1
        return n

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=2.0)
        try:
            self.conn.close()
        except OSError:
            pass


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
    # heading_source values that are our own estimate (fix_schema: pose | register | rotation-search | none);
    # "pose" is the autopilot's own heading: echoing it back as a GPS yaw would be circular
    yaw_sources: tuple[str, ...] = ("register", "rotation-search")

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
    heading = _num(record, "heading_deg")
    if heading is not None and record.get("heading_source") in cfg.yaw_sources:
        cd = int(round((heading % 360.0) * 100.0))
        f["yaw"] = 36000 if cd in (0, 36000) else cd  # 0 means "no yaw" in GPS_INPUT
    f["ignore_flags"] = ignore
    return f


GPS_INPUT_ORDER = ("time_usec", "gps_id", "ignore_flags", "time_week_ms", "time_week", "fix_type", "lat", "lon",
                   "alt", "hdop", "vdop", "vn", "ve", "vd", "speed_accuracy", "horiz_accuracy", "vert_accuracy",
                   "satellites_visible", "yaw")
