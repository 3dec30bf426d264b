"""NMEA 0183 output (GGA + RMC) for autopilots and tools that take a GPS as NMEA sentences.

The same rule as GPS_INPUT (runtime/mavlink_link.vouched): only a verified, accepted, finite fix
carries a position (GGA quality 1, RMC status A); anything else goes out with quality 0 / status
V and empty position fields, so a receiver sees "no fix", never a position we cannot vouch for.
UTC time comes from the frame's capture time (`capture_unix_s`) when the record has it, else the
send time. HDOP = accuracy_m / hdop_m (as for GPS_INPUT). A vouched fix whose heading the map
registration measured adds HDT (true heading; ArduPilot's NMEA driver reads it as GPS yaw, as
GPS_INPUT.yaw); RMC's course over ground is the track's velocity direction, which is not the
heading (a multirotor flies sideways), so it is only sent when the track has a velocity. Sentences are checksummed (XOR of the
characters between '$' and '*') and end with CRLF.

Targets: udp:HOST:PORT (one datagram per sentence), a serial port /dev/ttyX:BAUD (pyserial), or
file:PATH (appends, for logs and tests).
"""
from __future__ import annotations

import math
import socket
import time
from typing import Any

from skyloc.core.errors import SkylocError
from skyloc.runtime.outputs.mavlink import fix_position, measured_heading, vouched
from skyloc.runtime.outputs.writers import Output, parse_host_port

KNOTS_PER_MPS = 3600.0 / 1852.0


def checksum(body: str) -> str:
    """Two hex digits: XOR of every character of the sentence body (between '$' and '*')."""
    x = 0
    for ch in body.encode("ascii"):
        x ^= ch
    return f"{x:02X}"


def sentence(body: str) -> str:
    return f"${body}*{checksum(body)}\r\n"


def _angle(value: float, deg_digits: int, hemis: str) -> tuple[str, str]:
    """(d..dmm.mmmm, hemisphere) with the minutes rounded in integer units so 59.99999' carries."""
    units = int(round(abs(value) * 60.0 * 10000))  # 1e-4 arc-minutes
    deg, rest = divmod(units, 60 * 10000)
    mins, frac = divmod(rest, 10000)
    return f"{deg:0{deg_digits}d}{mins:02d}.{frac:04d}", hemis[0] if value >= 0 else hemis[1]


def format_lat(lat: float) -> tuple[str, str]:
    return _angle(lat, 2, "NS")


def format_lon(lon: float) -> tuple[str, str]:
    return _angle(lon, 3, "EW")


def _utc(unix_s: float) -> tuple[str, str]:
    """('hhmmss.ss', 'ddmmyy') with the centiseconds rounded before splitting (no 60.00 s)."""
    cs = int(round(unix_s * 100.0))
    t = time.gmtime(cs // 100)
    return (f"{t.tm_hour:02d}{t.tm_min:02d}{t.tm_sec:02d}.{cs % 100:02d}",
            f"{t.tm_mday:02d}{t.tm_mon:02d}{t.tm_year % 100:02d}")


def _num(record: dict[str, Any], key: str) -> float | None:
    v = record.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def nmea_sentences(record: dict[str, Any], talker: str = "GP", satellites: int = 10, hdop_m: float = 5.0,
                   now_unix: float | None = None) -> list[str]:
    """[GGA, RMC] for one record, + HDT for a vouched fix with a registered heading (module doc)."""
    t = _num(record, "capture_unix_s")
    if t is None or t <= 0:
        t = time.time() if now_unix is None else now_unix
    hms, dmy = _utc(t)
    ok = vouched(record)
    lat_s = ns = lon_s = ew = hdop = sog = cog = ""
    if ok:
        lat, lon = fix_position(record)
        lat_s, ns = format_lat(lat)  # type: ignore[arg-type]
        lon_s, ew = format_lon(lon)  # type: ignore[arg-type]
        acc = _num(record, "accuracy_m")
        if acc is not None and acc > 0:
            hdop = f"{min(acc / hdop_m, 99.9):.1f}"
        vn, ve = _num(record, "vn_mps"), _num(record, "ve_mps")
        if vn is not None and ve is not None:
            sog = f"{math.hypot(vn, ve) * KNOTS_PER_MPS:.2f}"
            cog = f"{math.degrees(math.atan2(ve, vn)) % 360.0:.1f}"
    gga = (f"{talker}GGA,{hms},{lat_s},{ns},{lon_s},{ew},{1 if ok else 0},"
           f"{satellites if ok else 0:02d},{hdop},,M,,M,,")
    rmc = f"{talker}RMC,{hms},{'A' if ok else 'V'},{lat_s},{ns},{lon_s},{ew},{sog},{cog},{dmy},,,{'A' if ok else 'N'}"
    out = [sentence(gga), sentence(rmc)]
    heading = measured_heading(record) if ok else None
    if heading is not None:
        out.append(sentence(f"{talker}HDT,{heading:.1f},T"))
    return out


class NmeaOutput(Output):
    """GGA + RMC per record to udp:HOST:PORT, /dev/ttyX:BAUD or file:PATH; failures counted."""

    def __init__(self, target: str, talker: str = "GP", satellites: int = 10, hdop_m: float = 5.0) -> None:
        super().__init__()
        if len(talker) != 2 or not talker.isalpha() or not talker.isupper():
            raise SkylocError(f"NMEA talker {talker!r} must be two capital letters (GP, GN)")
        if isinstance(satellites, bool) or not isinstance(satellites, int) or not 0 <= satellites <= 99:
            raise SkylocError(f"NMEA satellites {satellites!r} must be an integer 0..99")
        if not math.isfinite(hdop_m) or hdop_m <= 0:
            raise SkylocError(f"NMEA hdop_m {hdop_m!r} must be a finite number > 0")
        self.target, self.talker, self.satellites, self.hdop_m = target, talker, satellites, hdop_m
        self._sock = self._serial = self._file = None
        self._addr: tuple[str, int] | None = None
        if target.startswith("udp:"):
            host, port = parse_host_port(target[4:], "--nmea udp:")
            try:
                self._addr = (socket.gethostbyname(host), port)
            except OSError as exc:
                raise SkylocError(f"--nmea host {host!r} does not resolve: {exc}") from None
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
            self._sock.connect(self._addr)  # a refused port then shows as ECONNREFUSED: counted
        elif target.startswith("file:"):
            try:
                self._file = open(target[5:], "ab", buffering=0)
            except OSError as exc:
                raise SkylocError(f"--nmea {target!r} cannot be opened: {exc}") from None
        elif target.startswith("/dev/") or target.upper().startswith("COM"):
            import serial  # pyserial: in the base install

            dev, sep, baud = target.rpartition(":")
            dev, baud_n = (dev, int(baud)) if sep and baud.isdigit() else (target, 9600)
            try:
                self._serial = serial.Serial(dev, baud_n, timeout=0, write_timeout=0.5)
            except (serial.SerialException, ValueError, OSError) as exc:
                raise SkylocError(f"--nmea serial port {dev!r} cannot be opened at {baud_n} baud: {exc}") from None
        else:
            raise SkylocError(f"--nmea {target!r}: give udp:HOST:PORT, /dev/ttyX:BAUD or file:PATH")
        self._closed = False

    def write(self, record: dict[str, Any]) -> None:
        if self._closed:
            return
        lines = nmea_sentences(record, self.talker, self.satellites, self.hdop_m)
        try:
            for line in lines:
                data = line.encode("ascii")
                if self._sock is not None:
                    self._sock.send(data)
                elif self._serial is not None:
                    self._serial.write(data)
                else:
                    self._file.write(data)  # type: ignore[union-attr]
            self.written += 1
        except OSError as exc:  # serial.SerialException is an OSError
            self.lost += 1
            self._failed(exc, f"writing NMEA to {self.target}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for h in (self._sock, self._serial, self._file):
            if h is not None:
                try:
                    h.close()
                except OSError as exc:
                    self._failed(exc, f"closing {self.target}")
