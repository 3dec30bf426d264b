"""The soak's receiving ends (benchmarks/soak.py): a pymavlink "autopilot" that decodes every GPS_INPUT
and answers with NaN-yaw ATTITUDE, and an NMEA UDP sink with its own checksum check and GGA parser."""
from __future__ import annotations

import socket
import threading
import time
from typing import Any

T0_UNIX = 1_767_225_600.0  # 2026-01-01T00:00:00Z: the flight's capture clock (GPS_INPUT / NMEA time)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Autopilot:
    """A pymavlink udpin endpoint: decodes every GPS_INPUT; answers with ATTITUDE whose yaw is NaN."""

    def __init__(self, port: int) -> None:
        from skyloc.runtime.outputs.mavlink import mavutil

        self.mu = mavutil()
        self.conn = self.mu.mavlink_connection(f"udpin:127.0.0.1:{port}", source_system=1, source_component=1)
        self.conn.port.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.gps: list[Any] = []
        self.heartbeats = 0
        self.attitudes_sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last_att = 0.0
        while not self._stop.is_set():
            msg = self.conn.recv_match(blocking=True, timeout=0.05)
            if msg is not None:
                kind = msg.get_type()
                if kind == "GPS_INPUT":
                    self.gps.append(msg)
                elif kind == "HEARTBEAT":
                    self.heartbeats += 1
            now = time.monotonic()
            if self.heartbeats and now - last_att > 0.1:  # once we know where skyloc is
                self.conn.mav.attitude_send(int(now * 1000) & 0xFFFFFFFF, 0.0, 0.0, float("nan"), 0.0, 0.0, 0.0)
                self.attitudes_sent += 1
                last_att = now

    def close(self, drain_s: float = 1.0) -> None:
        time.sleep(drain_s)  # datagrams still in flight
        self._stop.set()
        self._thread.join(timeout=5)
        self.conn.close()


class NmeaSink:
    """UDP receiver of NMEA sentences; checks each checksum independently of runtime/outputs/nmea.py."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.05)
        self.sentences: list[str] = []
        self.bad_checksum = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            for line in data.decode("ascii", "replace").splitlines():
                body, star, cs = line.strip().lstrip("$").partition("*")
                x = 0
                for ch in body.encode("ascii", "replace"):
                    x ^= ch
                if not star or cs.upper() != f"{x:02X}":
                    self.bad_checksum += 1
                else:
                    self.sentences.append(body)

    def close(self, drain_s: float = 0.5) -> None:
        time.sleep(drain_s)
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def _nmea_deg(v: str, hemi: str, deg_digits: int) -> float:
    d = float(v[:deg_digits]) + float(v[deg_digits:]) / 60.0
    return -d if hemi in ("S", "W") else d


def nmea_fixes(sentences: list[str], fps: float) -> list[tuple[int, float, float]]:
    """(frame, lat, lon) of every GGA with fix quality >= 1; the frame from its UTC time."""
    out = []
    for s in sentences:
        f = s.split(",")
        if not f[0].endswith("GGA") or len(f) < 7 or f[6] in ("", "0"):
            continue
        hh, mm, ss = int(f[1][:2]), int(f[1][2:4]), float(f[1][4:])
        t = hh * 3600 + mm * 60 + ss - (T0_UNIX % 86400)
        out.append((int(round(t * fps)), _nmea_deg(f[2], f[3], 2), _nmea_deg(f[4], f[5], 3)))
    return out
