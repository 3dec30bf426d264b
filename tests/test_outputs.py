"""skyloc.runtime.outputs.writers / mavlink_link: JSON lines that never lose silently (full disk, broken
pipe, existing files), UDP, and MAVLink 2 GPS_INPUT decoded back by pymavlink (UDP, serial pty, file)."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from skyloc.core.errors import SkylocError
from skyloc.runtime.outputs.mavlink import GpsInputConfig, MavlinkLink, check_id, gps_input_fields
from skyloc.runtime.outputs.schema import HeadingSource
from skyloc.runtime.outputs.writers import (SCHEMA_VERSION, JsonLinesOutput, MavlinkOutput, UdpOutput, gps_time, json_line,
                                    parse_host_port)
from skyloc.runtime.pose.frame_pose import PoseInputs

mavutil = pytest.importorskip("pymavlink.mavutil")

REC = {"frame": 3, "time_s": 0.3, "lat": 45.0701234, "lon": 7.6809876, "accepted": True, "verified": True,
       "score": 0.8, "accuracy_m": 12.5}
T_CAPTURE = datetime(2025, 3, 14, 15, 9, 26, 500000, tzinfo=timezone.utc)


def _strict_loads(line: str):
    def refuse(c):
        raise ValueError(f"non-standard JSON constant {c}")
    return json.loads(line, parse_constant=refuse)


def _free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _recv(conn, kind: str, timeout: float = 5.0):
    return conn.recv_match(type=kind, blocking=True, timeout=timeout)


def _gps_reference(when: datetime) -> tuple[int, int]:
    """GPS week / ms by calendar arithmetic: GPS = UTC + 18 s, epoch 1980-01-06."""
    gps = when + timedelta(seconds=18) - datetime(1980, 1, 6, tzinfo=timezone.utc)
    ms = round(gps.total_seconds() * 1000)
    return ms // 604_800_000, ms % 604_800_000


# --- JSON lines ------------------------------------------------------------------------------

def test_json_lines_file_is_valid_json_with_schema(tmp_path):
    path = tmp_path / "sub" / "fixes.jsonl"
    out = JsonLinesOutput(path, fsync_s=0)
    out.write(REC)
    out.write({**REC, "frame": 4, "lat": float("nan"), "speed": float("inf"), "v": np.float32(1.5),
               "n": np.int64(7), "arr": np.array([1.0, np.nan]), "nested": {"x": -math.inf}})
    assert path.read_text().count("\n") == 2  # on disk before close
    out.close()
    out.close()  # idempotent
    lines = [_strict_loads(l) for l in path.read_text().splitlines()]
    assert lines[0] == {"schema": SCHEMA_VERSION, **REC}
    assert lines[1]["lat"] is None and lines[1]["speed"] is None and lines[1]["nested"] == {"x": None}
    assert lines[1]["v"] == 1.5 and lines[1]["n"] == 7 and lines[1]["arr"] == [1.0, None]
    assert all(l["schema"] == SCHEMA_VERSION for l in lines)
    assert out.written == 2 and out.errors == 0 and out.lost == 0
    assert json_line({"schema": "other/2"}).startswith('{"schema":"other/2"}')  # a record's own schema wins


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    path = tmp_path / "fixes.jsonl"
    path.write_text('{"old": 1}\n')
    with pytest.raises(SkylocError, match=r"fixes\.jsonl.*--overwrite"):
        JsonLinesOutput(path)
    assert path.read_text() == '{"old": 1}\n'  # untouched
    out = JsonLinesOutput(path, overwrite=True)
    out.write(REC)
    out.close()
    assert [_strict_loads(l)["frame"] for l in path.read_text().splitlines()] == [3]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    JsonLinesOutput(empty).close()  # nothing to lose


def _mount_tiny_tmpfs(where: Path) -> bool:
    where.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
                           capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def test_disk_full_is_counted_and_leaves_only_whole_lines(tmp_path):
    mnt = tmp_path / "tiny"
    if not _mount_tiny_tmpfs(mnt):
        pytest.skip("mounting a 64 KiB tmpfs is not permitted here (needs root / CAP_SYS_ADMIN); "
                    "test_dev_full_is_counted covers ENOSPC")
    try:
        path = mnt / "fixes.jsonl"
        out = JsonLinesOutput(path, fsync_s=0)
        big = {**REC, "pad": "x" * 700}
        for i in range(200):
            out.write({**big, "frame": i})
        out.close()
        assert out.errors > 0 and out.error_kinds["ENOSPC"] == out.errors
        assert out.written + out.lost == 200 and out.lost == out.errors
        text = path.read_text()
        assert text.endswith("\n")  # no partial last line
        frames = [_strict_loads(l)["frame"] for l in text.splitlines()]
        assert frames == list(range(out.written))  # every line that counts as written is there, whole
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=10)


def test_dev_full_is_counted():
    if not Path("/dev/full").exists():
        pytest.skip("/dev/full not present on this system")
    out = JsonLinesOutput("/dev/full")  # a device: written as it is, never truncated
    for _ in range(3):
        out.write(REC)
    out.close()
    assert out.errors == 3 and out.error_kinds["ENOSPC"] == 3 and out.lost == 3 and out.written == 0


def test_broken_pipe_is_counted_not_raised(tmp_path):
    r, w = os.pipe()
    os.close(r)  # the reader went away
    try:
        out = JsonLinesOutput(f"/proc/self/fd/{w}" if Path("/proc/self/fd").is_dir() else f"/dev/fd/{w}")
        out.write(REC)
        out.write(REC)
        out.close()
    finally:
        os.close(w)
    assert out.errors == 2 and out.error_kinds["EPIPE"] == 2 and out.lost == 2


def test_stdout_broken_pipe_in_a_real_process():
    code = ("from skyloc.runtime.outputs.writers import JsonLinesOutput\n"
            "import sys, time\n"
            "time.sleep(0.5)\n"
            "o = JsonLinesOutput('-')\n"
            "for i in range(5): o.write({'frame': i})\n"
            "o.close()\n"
            "sys.stderr.write(f'errors={o.errors} lost={o.lost} kinds={dict(o.error_kinds)}\\n')\n"
            "sys.stdout = None\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # closed before the child writes
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0, err
    assert "errors=5 lost=5 kinds={'EPIPE': 5}" in err, err


# --- UDP -------------------------------------------------------------------------------------

def test_udp_output_sends_valid_json_and_counts_failures():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5.0)
    out = UdpOutput("127.0.0.1", rx.getsockname()[1])
    out.write({**REC, "accepted": False, "score": float("nan")})  # every record goes (no accepted_only)
    data, _ = rx.recvfrom(65536)
    got = _strict_loads(data.decode())
    assert got["schema"] == SCHEMA_VERSION and got["score"] is None and got["accepted"] is False
    out.write({**REC, "pad": "x" * 70000})  # larger than a datagram: counted, not raised
    assert out.errors == 1 and out.error_kinds["EMSGSIZE"] == 1 and out.written == 1
    out.close()
    rx.close()
    with pytest.raises(TypeError):
        UdpOutput("127.0.0.1", 9, accepted_only=True)  # type: ignore[call-arg]
    assert parse_host_port("10.0.0.2:14560") == ("10.0.0.2", 14560)
    for bad in ("nohostport", "host:0", "host:70000"):
        with pytest.raises(SkylocError):
            parse_host_port(bad)


# --- MAVLink ---------------------------------------------------------------------------------

def test_gps_time_against_calendar():
    for when in (T_CAPTURE, datetime(2017, 1, 1, tzinfo=timezone.utc), datetime(2026, 12, 1, 23, 59, 59, 999600,
                                                                                  tzinfo=timezone.utc)):
        assert gps_time(when.timestamp()) == _gps_reference(when)
    # Saturday 23:59:42 UTC is Sunday 00:00:00 GPS: a new week starts
    sat = datetime(2025, 3, 15, 23, 59, 42, tzinfo=timezone.utc)
    assert gps_time(sat.timestamp())[1] == 0 and gps_time(sat.timestamp())[0] == _gps_reference(sat)[0]


def test_mavlink_ids_are_checked():
    assert check_id(1, "--mavlink-sysid") == 1 and check_id(255, "--mavlink-sysid") == 255
    for bad in (0, 256, 999, -1, 1.5, True, "1"):
        with pytest.raises(SkylocError, match=r"--mavlink-sysid .* 1\.\.255"):
            check_id(bad, "--mavlink-sysid")
    with pytest.raises(SkylocError, match="--mavlink-sysid 999"):
        MavlinkOutput("udpout:127.0.0.1:9", source_system=999)


def test_gps_input_rule_only_vouched_fixes_are_3d():
    cfg = GpsInputConfig()
    assert cfg.satellites >= 6  # ArduPilot and PX4 default minimums (README flight setup)
    assert gps_input_fields(REC, cfg, 1.7e9)["fix_type"] == 3
    for bad in ({"verified": False}, {"accepted": False}, {"verified": None}, {"lat": float("nan")},
                {"lon": float("inf")}, {"lat": 91.0}, {"lat": None}, {"skipped": "blank", "lat": None}):
        rec = {**REC, **bad}
        assert gps_input_fields(rec, cfg, 1.7e9) is None, bad
        nofix = gps_input_fields(rec, GpsInputConfig(unverified="no-fix"), 1.7e9)
        assert nofix["fix_type"] == 0 and nofix["lat"] == 0 and nofix["lon"] == 0, bad
    rec = {k: v for k, v in REC.items() if k != "verified"}  # no verification: not vouched for
    assert gps_input_fields(rec, cfg, 1.7e9) is None
    for bad in ({"fix_type": 5}, {"unverified": "send"}, {"satellites": 300}, {"hdop_m": float("nan")},
                {"default_accuracy_m": 0.0}):
        with pytest.raises(SkylocError):
            GpsInputConfig(**bad)


def test_gps_input_round_trip_over_udp():
    port = _free_udp_port()
    autopilot = mavutil.mavlink_connection(f"udpin:127.0.0.1:{port}", source_system=1, source_component=1)
    out = MavlinkOutput(f"udpout:127.0.0.1:{port}", gps_id=1, heartbeat_s=0.2)
    try:
        # heartbeats come from the link thread with no frame written at all
        hbs = [_recv(autopilot, "HEARTBEAT") for _ in range(3)]
        assert all(h is not None and h.type == mavutil.mavlink.MAV_TYPE_ONBOARD_CONTROLLER for h in hbs)
        assert hbs[-1].get_srcSystem() == 1 and hbs[-1].get_srcComponent() == 191
        m = mavutil.mavlink
        rec = {**REC, "capture_unix_s": T_CAPTURE.timestamp(), "heading_deg": 359.996,
               "heading_source": HeadingSource.REGISTRATION,
               "vn_mps": 3.5, "ve_mps": -1.25, "aircraft_lat": 45.1, "aircraft_lon": 7.7}
        out.write({**rec, "verified": False})  # not vouched for: nothing goes out
        out.write({**rec, "accepted": False})
        out.write(rec)
        msg = _recv(autopilot, "GPS_INPUT")
        assert msg is not None and msg.get_header().mlen == 65  # MAVLink 2 frame with the yaw extension
        assert (msg.lat, msg.lon) == (451000000, 77000000)  # the aircraft's position wins over the ground point
        assert msg.fix_type == 3 and msg.satellites_visible == 10 and msg.gps_id == 1
        assert msg.time_usec == round(T_CAPTURE.timestamp() * 1e6)
        assert (msg.time_week, msg.time_week_ms) == _gps_reference(T_CAPTURE)
        assert msg.yaw == 36000  # north (0 would mean "no yaw")
        assert msg.horiz_accuracy == pytest.approx(12.5) and msg.hdop == pytest.approx(2.5)
        assert (msg.vn, msg.ve) == (pytest.approx(3.5), pytest.approx(-1.25))
        f = msg.ignore_flags
        assert not f & m.GPS_INPUT_IGNORE_FLAG_VEL_HORIZ and f & m.GPS_INPUT_IGNORE_FLAG_VEL_VERT
        assert not f & m.GPS_INPUT_IGNORE_FLAG_HORIZONTAL_ACCURACY and not f & m.GPS_INPUT_IGNORE_FLAG_HDOP
        assert f & m.GPS_INPUT_IGNORE_FLAG_ALT and f & m.GPS_INPUT_IGNORE_FLAG_VERTICAL_ACCURACY
        assert out.sent == 1 and out.sent_3d == 1

        # heading from telemetry (the autopilot's own compass) is not echoed back; no velocity, no accuracy
        t0 = time.time()
        out.write({**REC, "heading_deg": 90.0, "heading_source": "pose", "accuracy_m": None})
        msg = _recv(autopilot, "GPS_INPUT")
        assert msg.yaw == 0 and msg.ignore_flags & m.GPS_INPUT_IGNORE_FLAG_VEL_HORIZ
        assert msg.ignore_flags & m.GPS_INPUT_IGNORE_FLAG_HORIZONTAL_ACCURACY
        assert abs(msg.time_usec / 1e6 - t0) < 5.0  # no capture time: the send time
        out.write({**REC, "heading_deg": 90.004, "heading_source": HeadingSource.REGISTRATION})
        assert _recv(autopilot, "GPS_INPUT").yaw == 9000
        # the rotation search's 45-degree guess is not a measurement either
        out.write({**REC, "heading_deg": 45.0, "heading_source": HeadingSource.ROTATION_SEARCH})
        assert _recv(autopilot, "GPS_INPUT").yaw == 0

        # telemetry back on the same link: listeners and the pose inputs; NaN never reaches them
        seen = []
        out.add_listener(lambda msg: seen.append(msg.get_type()))
        am = autopilot.mav
        am.attitude_send(1000, float("nan"), 0.0, 0.0, 0.0, 0.0, 0.0)
        am.attitude_send(1000, 0.1, -0.2, 3.0, 0.0, 0.0, 0.0)
        am.global_position_int_send(1000, 0, 0, 100000, 42500, 0, 0, 0, 9000)
        pose = PoseInputs()
        deadline = time.time() + 5.0
        while (pose.altitude_m is None or pose.yaw_deg is None) and time.time() < deadline:
            out.poll(pose)
            time.sleep(0.01)
        assert pose.altitude_m == pytest.approx(42.5)
        assert pose.roll_deg == pytest.approx(5.729578, rel=1e-5)
        assert pose.yaw_deg == pytest.approx(171.887339, rel=1e-5)
        assert out.link.stats.nonfinite_dropped == 1 and out.link.nonfinite_by_type["ATTITUDE"] == 1
        assert seen.count("ATTITUDE") == 1 and "GLOBAL_POSITION_INT" in seen
        # a rangefinder altitude beats the home-relative one
        am.altitude_send(2000, 0.0, 0.0, 0.0, 40.0, -1001.0, 31.5)
        am.global_position_int_send(2000, 0, 0, 100000, 40000, 0, 0, 0, 9000)
        deadline = time.time() + 5.0
        while pose.altitude_m != pytest.approx(31.5) and time.time() < deadline:
            out.poll(pose)
            time.sleep(0.01)
        assert pose.altitude_m == pytest.approx(31.5)
        assert out.errors == 0
    finally:
        out.close()
        autopilot.close()


def test_listener_gets_nan_as_none_where_mavlink_means_unknown_and_survives_bad_listeners():
    port = _free_udp_port()
    autopilot = mavutil.mavlink_connection(f"udpin:127.0.0.1:{port}", source_system=1, source_component=1)
    link = MavlinkLink(f"udpout:127.0.0.1:{port}", heartbeat_s=0.1)
    got = []

    def broken(msg):
        raise RuntimeError("listener bug")

    link.add_listener(broken)
    link.add_listener(lambda msg: got.append(msg) if msg.get_type() == "GIMBAL_DEVICE_ATTITUDE_STATUS" else None)
    try:
        assert _recv(autopilot, "HEARTBEAT") is not None  # udpin learns where to answer
        nan = float("nan")
        autopilot.mav.gimbal_device_attitude_status_send(0, 0, 1000, 0, [1.0, 0.0, 0.0, 0.0], nan, nan, nan, 0, nan, nan, 0)
        autopilot.mav.gimbal_device_attitude_status_send(0, 0, 1000, 0, [nan, 0.0, 0.0, 0.0], 0.0, 0.0, 0.0, 0)
        deadline = time.time() + 5.0
        while (not got or link.stats.nonfinite_dropped < 1) and time.time() < deadline:
            time.sleep(0.02)
        assert len(got) == 1 and list(got[0].q) == [1.0, 0.0, 0.0, 0.0]
        assert got[0].angular_velocity_x is None and got[0].delta_yaw is None
        assert link.stats.nonfinite_dropped == 1  # the NaN quaternion never reached anyone
        assert link.stats.listener_errors == 1  # the broken listener was called once (NaN message dropped before), counted
        assert link._thread.is_alive()
    finally:
        link.close()
        autopilot.close()


def test_gps_input_over_a_serial_port_pty():
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    name = os.ttyname(slave)
    out = MavlinkOutput(f"{name}:921600", heartbeat_s=0.2)
    try:
        out.write({**REC, "capture_unix_s": T_CAPTURE.timestamp()})
        parser = mavutil.mavlink.MAVLink(None)
        msgs = []
        os.set_blocking(master, False)
        deadline = time.time() + 5.0
        while time.time() < deadline and not any(m.get_type() == "GPS_INPUT" for m in msgs):
            try:
                data = os.read(master, 4096)
            except BlockingIOError:
                time.sleep(0.02)
                continue
            msgs.extend(parser.parse_buffer(data) or [])
        gps = [m for m in msgs if m.get_type() == "GPS_INPUT"]
        assert gps and gps[0].lat == round(REC["lat"] * 1e7) and gps[0].fix_type == 3
        assert (gps[0].time_week, gps[0].time_week_ms) == _gps_reference(T_CAPTURE)
    finally:
        out.close()
        os.close(master)
        os.close(slave)
    with pytest.raises(SkylocError, match="ttyNOPE"):
        MavlinkOutput("/dev/ttyNOPE:921600")


def test_no_fix_policy_and_file_url(tmp_path):
    path = tmp_path / "gps.mavlink"
    out = MavlinkOutput(f"file:{path}", rejected_fix_type=0)
    out.write(REC)
    out.write({**REC, "accepted": False, "lat": -33.8567844, "lon": 151.2152967})
    out.write({**REC, "skipped": "blank", "lat": None, "lon": None})
    out.close()
    raw = path.read_bytes()
    assert raw[0] == 0xFD  # MAVLink 2 magic
    log = mavutil.mavlink_connection(str(path), notimestamps=True)
    got = []
    while (msg := log.recv_match(type="GPS_INPUT", blocking=False)) is not None:
        got.append((msg.fix_type, msg.lat, msg.lon))
    assert got == [(3, 450701234, 76809876), (0, 0, 0), (0, 0, 0)]  # an unvouched position is never sent
    with pytest.raises(SkylocError, match="rejected-fix-type"):
        MavlinkOutput(f"file:{tmp_path / 'x.mavlink'}", rejected_fix_type=3)


def test_refused_udp_endpoints_are_counted_not_silent():
    """Nobody listening at the port (the kernel answers ICMP port unreachable): UDP JSON, NMEA and
    MAVLink (pymavlink's udpout swallows the error itself) all count it as output errors."""
    from skyloc.runtime.outputs.nmea import NmeaOutput

    port = _free_udp_port()  # bound, then closed: nothing listens there now
    rec = {**REC, "heading_deg": 12.0, "heading_source": HeadingSource.REGISTRATION}
    outs = [UdpOutput("127.0.0.1", port), NmeaOutput(f"udp:127.0.0.1:{port}"),
            MavlinkOutput(f"udpout:127.0.0.1:{port}", heartbeat_s=0.05)]
    try:
        for _ in range(20):
            for o in outs:
                o.write(rec)
            time.sleep(0.02)
    finally:
        for o in outs:
            o.close()
    for o in outs:
        assert o.errors >= 1 and o.error_kinds["ECONNREFUSED"] >= 1, (type(o).__name__, o.errors, o.error_kinds)
    # the control: a listener on the port -> no error
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    try:
        ok = UdpOutput("127.0.0.1", rx.getsockname()[1])
        for _ in range(5):
            ok.write(rec)
            time.sleep(0.01)
        ok.close()
        assert ok.errors == 0 and ok.written == 5
    finally:
        rx.close()
