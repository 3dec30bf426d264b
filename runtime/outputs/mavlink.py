"""The autopilot link: one MAVLink 2 connection, heartbeats, received messages, GPS_INPUT.

`MavlinkLink` owns the connection. A thread independent of the frames sends a HEARTBEAT every
`heartbeat_s` (so the autopilot keeps seeing the companion computer while the model is busy or
the camera is down) and reads what the autopilot sends; every received message whose numbers
are all finite is handed to the registered listeners (`add_listener(fn)`, e.g. the pose
sources' `MavlinkPoseListener.feed`). Messages carrying NaN / Inf are counted and dropped, except
the fields MAVLink defines as "NaN = unknown", which reach listeners as None. Listeners run on
the link thread: keep them short and thread-safe; an exception in one is counted, never fatal.

`gps_input_fields(record, cfg)` (gps_input.py, re-exported here) turns a fix record into GPS_INPUT fields, or None when the
record must not be sent; it is the single place of the rule "fix_type 3 only for a verified,
accepted, finite fix". GPS time = UTC + 18 s (leap seconds since 2017-01-01).
"""
from __future__ import annotations

import collections
import errno
import logging
import math
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from skyloc.core.errors import SkylocError
from skyloc.runtime.outputs.gps_input import (  # noqa: F401  (re-exported: the names callers use)
    GPS_EPOCH_UNIX, GPS_INPUT_ORDER, GPS_LEAP_SECONDS, SECONDS_PER_WEEK, GpsInputConfig, fix_position, gps_input_fields,
    gps_time, measured_heading, mavutil, vouched, yaw_cdeg,
)

log = logging.getLogger(__name__)

# (message, field) pairs where MAVLink defines NaN as "unknown": passed on as None, not dropped
NAN_MEANS_UNKNOWN = {
    ("GIMBAL_DEVICE_ATTITUDE_STATUS", "angular_velocity_x"), ("GIMBAL_DEVICE_ATTITUDE_STATUS", "angular_velocity_y"),
    ("GIMBAL_DEVICE_ATTITUDE_STATUS", "angular_velocity_z"), ("GIMBAL_DEVICE_ATTITUDE_STATUS", "delta_yaw"),
    ("GIMBAL_DEVICE_ATTITUDE_STATUS", "delta_yaw_velocity"), ("ALTITUDE", "bottom_clearance"),
}


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
    refused: int = 0  # udpout: the host answered "port unreachable" (nobody listens there)


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
        self._watch_refusals()
        self.heartbeat()  # the autopilot sees us before the first frame
        self._thread = threading.Thread(target=self._run, name="skyloc-mavlink", daemon=True)
        self._thread.start()

    def _watch_refusals(self) -> None:
        """pymavlink's udpout swallows ECONNREFUSED: connect its socket so the kernel keeps the
        ICMP "port unreachable" as a socket error, and count it before each read / write."""
        conn, port = self.conn, getattr(self.conn, "port", None)
        if not isinstance(port, socket.socket) or port.type != socket.SOCK_DGRAM or getattr(conn, "udp_server", True):
            return
        try:
            host, p = conn.destination_addr
            port.connect((socket.gethostbyname(host), int(p)))
        except (OSError, ValueError, TypeError):
            return

        def checked(fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(*a: Any) -> Any:
                if port.fileno() >= 0 and port.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED:
                    self.stats.refused += 1
                    if self.stats.refused <= 3:
                        log.warning("MAVLink %s: connection refused (nothing listens there)", self.url)
                return fn(*a)
            return call

        conn.recv, conn.write = checked(conn.recv), checked(conn.write)

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
