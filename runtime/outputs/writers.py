"""Where fixes go: JSON lines (file / stdout), UDP datagrams, MAVLink GPS_INPUT (NMEA: runtime/outputs/nmea.py).

Every output takes the per-frame record dict the loop builds, never raises into the loop for
an I/O failure (a full disk, a closed pipe, an unplugged serial cable), and counts each failure
in `errors` (by kind in `error_kinds`; records not delivered in `lost`) so the loop can put them
in the summary and the exit code. Records go out as valid JSON (NaN / Inf become null, proven by
`allow_nan=False`) with a `schema` field.
"""
from __future__ import annotations

import collections
import errno
import json
import logging
import math
import os
import socket
import stat
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from skyloc.core.errors import SkylocError
from skyloc.runtime.outputs.mavlink import (GPS_INPUT_ORDER, GpsInputConfig, MavlinkLink, gps_input_fields,  # noqa: F401
                                         gps_time, open_mavlink)

try:
    from skyloc.runtime.outputs.schema import SCHEMA_VERSION
except ModuleNotFoundError as _exc:  # the record schema module is not in this tree yet
    if _exc.name != "skyloc.runtime.outputs.schema":
        raise
    SCHEMA_VERSION = "skyloc.fix/1"

log = logging.getLogger(__name__)


def _clean(x: Any) -> Any:
    """JSON-safe copy: non-finite floats -> None, numpy scalars / arrays -> Python, tuples -> lists."""
    if isinstance(x, bool) or x is None or isinstance(x, (str, int)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "tolist"):  # numpy scalar or array
        return _clean(x.tolist())
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    return str(x)


def json_line(record: dict[str, Any]) -> str:
    """One record as a JSON line (with '\\n'), `schema` first unless the record has its own."""
    rec = {"schema": SCHEMA_VERSION, **_clean(record)}
    return json.dumps(rec, separators=(",", ":"), allow_nan=False) + "\n"


class Output(ABC):
    """A destination for records. I/O failures are counted, not raised (see module doc)."""

    def __init__(self) -> None:
        self.written = 0
        self.errors = 0
        self.lost = 0  # records not (fully) delivered
        self.error_kinds: collections.Counter[str] = collections.Counter()

    @abstractmethod
    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None:  # idempotent
        pass

    def _failed(self, exc: BaseException, what: str) -> None:
        kind = errno.errorcode.get(getattr(exc, "errno", None) or 0, type(exc).__name__)
        self.errors += 1
        self.error_kinds[kind] += 1
        if self.errors <= 5 or self.errors % 100 == 0:
            log.warning("%s: %s failed: %s (%d errors)", type(self).__name__, what, exc, self.errors)

    def __enter__(self) -> "Output":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JsonLinesOutput(Output):
    """One JSON object per line to a file, or stdout for None / "-".

    Each line goes to the OS in one write; if the disk fills mid-line the file is cut back to
    the last complete line, so a reader never sees a partial record. `fsync_s`: fsync at most
    this often (0: after every line; None: only at close). An existing non-empty file is
    refused unless `overwrite` (nothing is truncated before that check); pipes and devices are
    written as they are.
    """

    def __init__(self, path: str | os.PathLike | None = None, overwrite: bool = False,
                 fsync_s: float | None = 1.0) -> None:
        super().__init__()
        if fsync_s is not None and (not math.isfinite(fsync_s) or fsync_s < 0):
            raise SkylocError(f"fsync interval {fsync_s!r} must be a finite number of seconds >= 0, or None")
        self.fsync_s = fsync_s
        self._closed = False
        self._fd: int | None = None
        self._size: int | None = None  # regular files: bytes of complete lines
        self._last_sync = time.monotonic()
        self.path = None if path in (None, "-") else Path(path)  # type: ignore[arg-type]
        if self.path is not None:
            self._fd, self._size = self._open(self.path, overwrite)

    @staticmethod
    def _open(p: Path, overwrite: bool) -> tuple[int, int | None]:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise SkylocError(f"cannot write fixes to {p}: {exc}") from None
        flags = os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        if st is None:
            flags |= os.O_CREAT | os.O_EXCL
        elif stat.S_ISREG(st.st_mode):
            if st.st_size > 0 and not overwrite:
                raise SkylocError(f"{p} already exists ({st.st_size} bytes) and would be overwritten: choose "
                                  "another --out, or pass --overwrite to replace it")
            flags |= os.O_TRUNC
        try:
            if st is None:
                p.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(p, flags, 0o644)
        except FileExistsError:
            raise SkylocError(f"{p} appeared while opening it (another writer?); choose another --out") from None
        except OSError as exc:
            raise SkylocError(f"cannot write fixes to {p}: {exc}") from None
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        return fd, (0 if regular else None)

    def write(self, record: dict[str, Any]) -> None:
        if self._closed:
            return
        try:
            line = json_line(record)
        except (TypeError, ValueError) as exc:  # cannot happen after _clean; counted if it does
            self.lost += 1
            self._failed(exc, "encoding a record")
            return
        if self._fd is None:
            self._write_stdout(line)
        else:
            self._write_fd(line.encode("utf-8"))

    def _write_stdout(self, line: str) -> None:
        try:
            sys.stdout.write(line)
            sys.stdout.flush()
            self.written += 1
        except (OSError, ValueError) as exc:  # BrokenPipeError: the reader went away
            self.lost += 1
            self._failed(exc, "writing to stdout")

    def _write_fd(self, data: bytes) -> None:
        assert self._fd is not None
        done = 0
        try:
            while done < len(data):  # a short write is continued; one record never shares a write
                done += os.write(self._fd, data[done:])
        except OSError as exc:
            self.lost += 1
            self._failed(exc, f"writing {self.path}")
            if done and self._size is not None:  # cut back to the last complete line
                try:
                    os.ftruncate(self._fd, self._size)
                except OSError as exc2:
                    self._failed(exc2, f"cutting a partial line from {self.path}")
            return
        self.written += 1
        if self._size is not None:
            self._size += len(data)
        if self.fsync_s is not None and time.monotonic() - self._last_sync >= self.fsync_s:
            self._sync()

    def _sync(self) -> None:
        self._last_sync = time.monotonic()
        if self._fd is not None and self._size is not None:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self._failed(exc, f"fsync of {self.path}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._fd is None:
            try:
                sys.stdout.flush()
            except (OSError, ValueError) as exc:
                self._failed(exc, "flushing stdout")
            return
        self._sync()
        try:
            os.close(self._fd)
        except OSError as exc:
            self._failed(exc, f"closing {self.path}")


def parse_host_port(spec: str, flag: str = "--udp") -> tuple[str, int]:
    host, sep, port = spec.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise SkylocError(f"{flag} {spec!r} is not HOST:PORT with a port 1..65535 (e.g. 127.0.0.1:14560)")
    return host, int(port)


class UdpOutput(Output):
    """Each record as one JSON datagram; send failures (nobody listening, no route) are counted."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        try:
            self._addr = (socket.gethostbyname(host), int(port))
        except OSError as exc:
            raise SkylocError(f"--udp host {host!r} does not resolve: {exc}") from None
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        # connected: the kernel reports "port unreachable" (nobody listening) as ECONNREFUSED on
        # a later send, so a refused endpoint is counted, not silently lost
        self._sock.connect(self._addr)

    def write(self, record: dict[str, Any]) -> None:
        try:
            self._sock.send(json_line(record).encode())
            self.written += 1
        except OSError as exc:
            self.lost += 1
            self._failed(exc, f"sending to {self._addr[0]}:{self._addr[1]}")

    def close(self) -> None:
        self._sock.close()


class MavlinkOutput(Output):
    """GPS_INPUT for the fixes we vouch for (see mavlink_link.gps_input_fields), heartbeats from
    the link thread, and everything the autopilot sends handed to listeners (`add_listener`).

    `rejected_fix_type` (kept for the CLI): None = records that are not verified, accepted and
    finite send nothing (the default); 0 = they send GPS_INPUT fix_type 0 without a position.
    `poll(pose)` copies the latest ATTITUDE / ALTITUDE / GLOBAL_POSITION_INT into an object
    with roll_deg, pitch_deg, yaw_deg and altitude_m attributes (the loop's pose inputs).
    """

    def __init__(self, url: str, fix_type: int = 3, satellites: int = 10, gps_id: int = 0,
                 horiz_accuracy_m: float | None = None, rejected_fix_type: int | None = None,
                 source_system: int = 1, source_component: int = 191, heartbeat_s: float = 1.0,
                 config: GpsInputConfig | None = None) -> None:
        super().__init__()
        if rejected_fix_type not in (None, 0, 1):
            raise SkylocError(f"--rejected-fix-type {rejected_fix_type} must be 0 or 1 (no fix): a fix we "
                              "cannot vouch for is never sent as a position")
        self.config = config or GpsInputConfig(
            fix_type=fix_type, satellites=satellites, gps_id=gps_id, default_accuracy_m=horiz_accuracy_m,
            unverified="skip" if rejected_fix_type is None else "no-fix")
        self.link = MavlinkLink(url, source_system, source_component, heartbeat_s)
        self.url = url
        self.sent = 0
        self.sent_3d = 0
        self._telemetry: collections.deque = collections.deque(maxlen=500)
        self.link.add_listener(self._keep_telemetry)
        self._alt_terrain: tuple[float, float] | None = None
        self._closed = False

    @property
    def conn(self):
        return self.link.conn

    def add_listener(self, fn) -> None:
        """fn(msg) for every finite message the autopilot sends (called on the link thread)."""
        self.link.add_listener(fn)

    def _keep_telemetry(self, msg: Any) -> None:
        if msg.get_type() in ("ATTITUDE", "GLOBAL_POSITION_INT", "ALTITUDE"):
            self._telemetry.append((msg, time.monotonic()))

    def write(self, record: dict[str, Any]) -> None:
        if self._closed:
            return
        f = gps_input_fields(record, self.config)
        if f is None:
            return
        if self.link.send("gps_input", *(f[k] for k in GPS_INPUT_ORDER)):
            self.sent += 1
            self.sent_3d += f["fix_type"] >= 3
            self.written += 1
        else:  # the link logged and counted it (link.stats.send_errors, heartbeats included)
            self.lost += 1
            self.errors += 1
            self.error_kinds["send"] += 1

    def poll(self, pose: Any) -> None:
        """Apply the telemetry received since the last poll to `pose` (in arrival order)."""
        while self._telemetry:
            msg, at = self._telemetry.popleft()
            kind = msg.get_type()
            if kind == "ATTITUDE":
                pose.roll_deg = math.degrees(msg.roll)
                pose.pitch_deg = math.degrees(msg.pitch)
                pose.yaw_deg = math.degrees(msg.yaw) % 360.0
            elif kind == "ALTITUDE":
                bc = msg.bottom_clearance
                if bc is not None and bc > 0:  # rangefinder: height over what is really below
                    self._alt_terrain = (float(bc), at)
                elif msg.altitude_terrain > -1000:  # < -1000 means unknown
                    self._alt_terrain = (float(msg.altitude_terrain), at)
                alt = self._terrain_alt(at)
                pose.altitude_m = float(msg.altitude_relative) if alt is None else alt
            elif kind == "GLOBAL_POSITION_INT":
                alt = self._terrain_alt(at)
                pose.altitude_m = msg.relative_alt / 1000.0 if alt is None else alt

    def _terrain_alt(self, now: float, max_age_s: float = 2.0) -> float | None:
        if self._alt_terrain is None or now - self._alt_terrain[1] > max_age_s:
            return None
        return self._alt_terrain[0]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.link.close()
        if self.link.stats.refused:  # datagrams the endpoint refused: lost to the autopilot
            self.errors += self.link.stats.refused
            self.error_kinds["ECONNREFUSED"] += self.link.stats.refused
