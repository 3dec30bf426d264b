"""skyloc.runtime.outputs: JSON lines, UDP, and MAVLink GPS_INPUT decoded back by pymavlink."""
from __future__ import annotations

import json
import socket
import time
from datetime import datetime, timezone

import pytest

from skyloc.runtime.outputs import JsonLinesOutput, MavlinkOutput, UdpOutput, gps_time, parse_host_port
from skyloc.runtime.pose import PoseInputs
from skyloc.runtime.errors import SkylocError

mavutil = pytest.importorskip("pymavlink.mavutil")

REC = {"frame": 3, "time_s": 0.3, "lat": 45.0701234, "lon": 7.6809876, "accepted": True, "score": 0.8}


def _free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _recv(conn, kind: str, timeout: float = 5.0):
    return conn.recv_match(type=kind, blocking=True, timeout=timeout)


def test_json_lines_file(tmp_path):
    path = tmp_path / "sub" / "fixes.jsonl"
    out = JsonLinesOutput(path)
    out.write(REC)
    out.write({**REC, "frame": 4})
    assert path.read_text().count("\n") == 2  # line-buffered: on disk before close
    out.close()
    out.close()  # idempotent
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    assert lines == [REC, {**REC, "frame": 4}]


def test_udp_output_sends_json():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5.0)
    out = UdpOutput("127.0.0.1", rx.getsockname()[1])
    out.write(REC)
    data, _ = rx.recvfrom(65536)
    assert json.loads(data) == REC
    out.close()
    rx.close()
    assert parse_host_port("10.0.0.2:14560") == ("10.0.0.2", 14560)
    with pytest.raises(SkylocError):
        parse_host_port("nohostport")


def test_gps_time_against_datetime():
    when = datetime(2025, 3, 14, 15, 9, 26, 500000, tzinfo=timezone.utc)
    gps_seconds = (when - datetime(1980, 1, 6, tzinfo=timezone.utc)).total_seconds() + 18
    week, ms = gps_time(when.timestamp())
    assert week == int(gps_seconds // 604800)
    assert ms == round((gps_seconds - week * 604800) * 1000)


def test_gps_input_round_trip_over_udp():
    port = _free_udp_port()
    autopilot = mavutil.mavlink_connection(f"udpin:127.0.0.1:{port}", source_system=1, source_component=1)
    out = MavlinkOutput(f"udpout:127.0.0.1:{port}", fix_type=3, satellites=7, gps_id=1, horiz_accuracy_m=25.0)
    try:
        hb = _recv(autopilot, "HEARTBEAT")
        assert hb is not None and hb.type == mavutil.mavlink.MAV_TYPE_ONBOARD_CONTROLLER
        t_before = time.time()
        out.write(REC)
        msg = _recv(autopilot, "GPS_INPUT")
        assert msg is not None
        assert msg.lat == round(REC["lat"] * 1e7) and msg.lon == round(REC["lon"] * 1e7)
        assert msg.lat / 1e7 == pytest.approx(REC["lat"], abs=1e-7)
        assert msg.fix_type == 3 and msg.satellites_visible == 7 and msg.gps_id == 1
        assert msg.horiz_accuracy == pytest.approx(25.0)
        m = mavutil.mavlink
        assert msg.ignore_flags & m.GPS_INPUT_IGNORE_FLAG_ALT
        assert msg.ignore_flags & m.GPS_INPUT_IGNORE_FLAG_VEL_HORIZ
        assert not msg.ignore_flags & m.GPS_INPUT_IGNORE_FLAG_HORIZONTAL_ACCURACY
        assert abs(msg.time_usec / 1e6 - t_before) < 5.0
        week, _ = gps_time(msg.time_usec / 1e6)
        assert msg.time_week == week

        # rejected fixes are not sent; the aircraft position wins over the ground point
        out.write({**REC, "accepted": False, "lat": 1.0, "lon": 2.0})
        out.write({**REC, "aircraft_lat": 45.1, "aircraft_lon": 7.7})
        msg = _recv(autopilot, "GPS_INPUT")
        assert (msg.lat, msg.lon) == (451000000, 77000000)
        assert out.sent == 2

        # telemetry back on the same link fills the pose inputs
        am = autopilot.mav
        am.attitude_send(1000, 0.1, -0.2, 3.0, 0.0, 0.0, 0.0)
        am.global_position_int_send(1000, 0, 0, 100000, 42500, 0, 0, 0, 9000)
        pose = PoseInputs()
        deadline = time.time() + 5.0
        while (pose.altitude_m is None or pose.yaw_deg is None) and time.time() < deadline:
            out.poll(pose)
            time.sleep(0.01)
        assert pose.altitude_m == pytest.approx(42.5)
        assert pose.roll_deg == pytest.approx(5.729578, rel=1e-5)
        assert pose.pitch_deg == pytest.approx(-11.459156, rel=1e-5)
        assert pose.yaw_deg == pytest.approx(171.887339, rel=1e-5)
        # a rangefinder altitude beats the home-relative one
        am.altitude_send(2000, 0.0, 0.0, 0.0, 40.0, -1001.0, 31.5)
        am.global_position_int_send(2000, 0, 0, 100000, 40000, 0, 0, 0, 9000)
        deadline = time.time() + 5.0
        while pose.altitude_m != pytest.approx(31.5) and time.time() < deadline:
            out.poll(pose)
            time.sleep(0.01)
        out.poll(pose)
        assert pose.altitude_m == pytest.approx(31.5)
    finally:
        out.close()
        autopilot.close()


def test_rejected_fix_type_and_file_url(tmp_path):
    path = tmp_path / "gps.mavlink"
    out = MavlinkOutput(f"file:{path}", fix_type=4, rejected_fix_type=0)
    out.write(REC)
    out.write({**REC, "accepted": False, "lat": -33.8567844, "lon": 151.2152967})
    out.close()
    log = mavutil.mavlink_connection(str(path), notimestamps=True)
    got = []
    while (msg := log.recv_match(type="GPS_INPUT", blocking=False)) is not None:
        got.append((msg.fix_type, msg.lat, msg.lon))
    assert got == [(4, 450701234, 76809876), (0, -338567844, 1512152967)]
