"""Where fixes go: JSON lines (file / stdout), UDP datagrams, MAVLink GPS_INPUT.

Every output takes the per-frame record dict the loop builds (see runtime/loop.py) and is
closed (flushed) in the loop's `finally`, so a signal never leaves a half-written line.
"""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, TextIO

from skyloc.runtime.errors import SkylocError
from skyloc.runtime.pose import PoseInputs

log = logging.getLogger(__name__)

GPS_EPOCH_UNIX = 315964800  # 1980-01-06T00:00:00Z
GPS_LEAP_SECONDS = 18  # GPS - UTC since 2017-01-01
SECONDS_PER_WEEK = 7 * 24 * 3600


class Output(ABC):
    @abstractmethod
    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None:  # idempotent
        pass

    def __enter__(self) -> "Output":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JsonLinesOutput(Output):
    """One JSON object per line to a file, or stdout for None / "-".

    Line-buffered: each line reaches the OS as it is written, so even a hard kill leaves only
    complete lines behind (the last one at worst missing).
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self._owned = path not in (None, "-")
        if self._owned:
            p = Path(path)  # type: ignore[arg-type]
            p.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._f: TextIO = open(p, "w", buffering=1, encoding="utf-8")
            except OSError as exc:
                raise SkylocError(f"cannot write fixes to {p}: {exc}") from None
        else:
            self._f = sys.stdout
        self._closed = False

    def write(self, record: dict[str, Any]) -> None:
        if not self._closed:
            self._f.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._f.flush()
        finally:
            if self._owned:
                self._f.close()


def parse_host_port(spec: str) -> tuple[str, int]:
    host, sep, port = spec.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SkylocError(f"--udp {spec!r} is not HOST:PORT (e.g. 127.0.0.1:14560)")
    return host, int(port)


class UdpOutput(Output):
    """Each record as one JSON datagram; send errors (nobody listening) are ignored."""

    def __init__(self, host: str, port: int, accepted_only: bool = False) -> None:
        try:
            self._addr = (socket.gethostbyname(host), int(port))
        except OSError as exc:
            raise SkylocError(f"--udp host {host!r} does not resolve: {exc}") from None
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self.accepted_only = accepted_only
        self.errors = 0

    def write(self, record: dict[str, Any]) -> None:
        if self.accepted_only and not record.get("accepted"):
            return
        try:
            self._sock.sendto(json.dumps(record, separators=(",", ":")).encode(), self._addr)
        except OSError:
            self.errors += 1

    def close(self) -> None:
        self._sock.close()


def gps_time(unix_s: float) -> tuple[int, int]:
    """(GPS week, milliseconds into the week) for a UNIX time."""
    gps_s = unix_s - GPS_EPOCH_UNIX + GPS_LEAP_SECONDS
    week = int(gps_s // SECONDS_PER_WEEK)
    return week, int(round((gps_s - week * SECONDS_PER_WEEK) * 1000.0))


def open_mavlink(url: str, source_system: int = 1, source_component: int = 191):
    """pymavlink connection from a URL.

    udpout:HOST:PORT / udpin:HOST:PORT / tcp:HOST:PORT as pymavlink spells them; a serial port
    as /dev/ttyTHS1:921600 or /dev/ttyTHS1,921600 (baud after the device); file:PATH writes raw
    MAVLink bytes to a file (logging, tests).
    """
    from pymavlink import mavutil  # only when MAVLink output is asked for

    try:
        if url.startswith("file:"):
            return mavutil.mavlogfile(url[5:], write=True, notimestamps=True,
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
            return mavutil.mavlink_connection(dev, baud=baud, source_system=source_system,
                                              source_component=source_component)
        return mavutil.mavlink_connection(url, source_system=source_system, source_component=source_component)
    except (OSError, ValueError) as exc:
        raise SkylocError(f"--mavlink {url!r} cannot be opened ({exc}); use udpout:HOST:PORT, "
                          "udpin:HOST:PORT, tcp:HOST:PORT, /dev/ttyX:BAUD or file:PATH") from None


class MavlinkOutput(Output):
    """GPS_INPUT for every accepted fix (the aircraft's position when known, else the ground
    point), a 1 Hz HEARTBEAT as an onboard computer, and the attitude / altitude the autopilot
    streams back on the same link (`poll(pose)`).

    ArduPilot: GPS_TYPE (or GPS2_TYPE) = 14 (MAVLink); have the autopilot stream ATTITUDE and
    GLOBAL_POSITION_INT (SRx_EXTRA1 / SRx_POSITION) if the aircraft position is wanted.
    """

    def __init__(self, url: str, fix_type: int = 3, satellites: int = 0, gps_id: int = 0,
                 horiz_accuracy_m: float | None = None, rejected_fix_type: int | None = None,
                 source_system: int = 1, source_component: int = 191, heartbeat_s: float = 1.0) -> None:
        from pymavlink import mavutil

        self._mavlink = mavutil.mavlink
        self.conn = open_mavlink(url, source_system, source_component)
        self.url = url
        self.fix_type = int(fix_type)
        self.rejected_fix_type = rejected_fix_type  # None: send nothing for rejected frames
        self.satellites = int(satellites)
        self.gps_id = int(gps_id)
        self.horiz_accuracy_m = horiz_accuracy_m
        self.heartbeat_s = heartbeat_s
        self._last_heartbeat = -math.inf
        self._closed = False
        self.sent = 0
        self.errors = 0
        m = self._mavlink
        self._ignore = (m.GPS_INPUT_IGNORE_FLAG_ALT | m.GPS_INPUT_IGNORE_FLAG_HDOP | m.GPS_INPUT_IGNORE_FLAG_VDOP
                        | m.GPS_INPUT_IGNORE_FLAG_VEL_HORIZ | m.GPS_INPUT_IGNORE_FLAG_VEL_VERT
                        | m.GPS_INPUT_IGNORE_FLAG_SPEED_ACCURACY | m.GPS_INPUT_IGNORE_FLAG_VERTICAL_ACCURACY)
        if horiz_accuracy_m is None:
            self._ignore |= m.GPS_INPUT_IGNORE_FLAG_HORIZONTAL_ACCURACY
        # terrain-relative altitudes beat home-relative; remember each with its arrival time
        self._alt_terrain: tuple[float, float] | None = None
        self._heartbeat()

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat >= self.heartbeat_s:
            self._last_heartbeat = now
            m = self._mavlink
            self.conn.mav.heartbeat_send(m.MAV_TYPE_ONBOARD_CONTROLLER, m.MAV_AUTOPILOT_INVALID, 0, 0,
                                         m.MAV_STATE_ACTIVE)

    def send_fix(self, lat: float, lon: float, fix_type: int | None = None, unix_s: float | None = None) -> None:
        """One GPS_INPUT: lat/lon in degE7 integers, GPS week time from the system clock."""
        unix_s = time.time() if unix_s is None else unix_s
        week, week_ms = gps_time(unix_s)
        self.conn.mav.gps_input_send(
            int(unix_s * 1e6), self.gps_id, self._ignore, week_ms, week,
            self.fix_type if fix_type is None else int(fix_type),
            int(round(lat * 1e7)), int(round(lon * 1e7)),
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
            float(self.horiz_accuracy_m or 0.0), 0.0, self.satellites,
        )
        self.sent += 1

    def write(self, record: dict[str, Any]) -> None:
        if self._closed:
            return
        try:
            self._heartbeat()
            lat = record.get("aircraft_lat", record.get("lat"))
            lon = record.get("aircraft_lon", record.get("lon"))
            if lat is None or lon is None:
                return
            if record.get("accepted"):
                self.send_fix(lat, lon)
            elif self.rejected_fix_type is not None:
                self.send_fix(lat, lon, fix_type=self.rejected_fix_type)
        except OSError as exc:  # a serial hiccup must not stop localization
            self.errors += 1
            log.warning("MAVLink write to %s failed: %s", self.url, exc)

    def poll(self, pose: PoseInputs, max_messages: int = 200) -> None:
        """Drain waiting messages (non-blocking) and update `pose` from the telemetry in them."""
        if self._closed:
            return
        now = time.monotonic()
        for _ in range(max_messages):
            try:
                msg = self.conn.recv_match(type=["ATTITUDE", "GLOBAL_POSITION_INT", "ALTITUDE"], blocking=False)
            except (OSError, ValueError):
                self.errors += 1
                return
            if msg is None:
                break
            kind = msg.get_type()
            if kind == "ATTITUDE":
                pose.roll_deg = math.degrees(msg.roll)
                pose.pitch_deg = math.degrees(msg.pitch)
                pose.yaw_deg = math.degrees(msg.yaw) % 360.0
            elif kind == "ALTITUDE":
                if msg.bottom_clearance > 0:  # rangefinder: height over what is really below
                    self._alt_terrain = (float(msg.bottom_clearance), now)
                elif msg.altitude_terrain > -1000:  # < -1000 means unknown
                    self._alt_terrain = (float(msg.altitude_terrain), now)
                pose.altitude_m = self._terrain_alt(now)
                if pose.altitude_m is None:
                    pose.altitude_m = float(msg.altitude_relative)
            elif kind == "GLOBAL_POSITION_INT":
                alt = self._terrain_alt(now)
                pose.altitude_m = msg.relative_alt / 1000.0 if alt is None else alt

    def _terrain_alt(self, now: float, max_age_s: float = 2.0) -> float | None:
        if self._alt_terrain is None or now - self._alt_terrain[1] > max_age_s:
            return None
        return self._alt_terrain[0]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.conn.close()
        except OSError:
            pass
