"""skyloc.runtime.pose.frame_pose against hand-derived geometry (flat ground, see the module doc)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from skyloc.core.geo import EARTH_RADIUS_M
from skyloc.core.errors import SkylocError
from skyloc.runtime.pose.frame_pose import (Attitude, FramePose, PoseInputs, aircraft_position, body_to_ned, camera_axis_ned,
                                 camera_to_ned, ground_offset_m)

LAT, LON = 45.07, 7.68


def _hand_offset(lat: float, lon: float, east: float, north: float) -> tuple[float, float]:
    """Small offsets on a sphere, written out independently of runtime.geo."""
    dlat = math.degrees(north / EARTH_RADIUS_M)
    dlon = math.degrees(east / (EARTH_RADIUS_M * math.cos(math.radians(lat))))
    return lat + dlat, lon + dlon


@pytest.mark.parametrize("yaw", [0.0, 37.0, 90.0, 200.0, 359.0])
def test_nadir_is_the_ground_point(yaw):
    lat, lon = aircraft_position(LAT, LON, 120.0, Attitude(0.0, 0.0, yaw), camera_tilt_deg=0.0)
    assert lat == pytest.approx(LAT, abs=1e-12) and lon == pytest.approx(LON, abs=1e-12)


@pytest.mark.parametrize("yaw,tilt,h", [(0.0, 30.0, 100.0), (90.0, 20.0, 50.0), (135.0, 45.0, 80.0), (270.0, 10.0, 200.0)])
def test_forward_tilt_puts_the_aircraft_behind_along_heading(yaw, tilt, h):
    back = h * math.tan(math.radians(tilt))
    want = _hand_offset(LAT, LON, -back * math.sin(math.radians(yaw)), -back * math.cos(math.radians(yaw)))
    got = aircraft_position(LAT, LON, h, Attitude(0.0, 0.0, yaw), camera_tilt_deg=tilt)
    assert got == pytest.approx(want, abs=1e-9)
    # nose-up pitch with a hard-mounted nadir camera is the same geometry
    got_pitch = aircraft_position(LAT, LON, h, Attitude(0.0, tilt, yaw), camera_tilt_deg=0.0)
    assert got_pitch == pytest.approx(want, abs=1e-9)


def test_nose_down_pitch_puts_the_aircraft_ahead():
    h, a = 60.0, 15.0
    east, north = ground_offset_m(h, Attitude(0.0, -a, 0.0))
    assert east == pytest.approx(0.0, abs=1e-9)
    assert north == pytest.approx(-h * math.tan(math.radians(a)))  # camera looks back: ground point behind


def test_roll_right_wing_down_looks_left():
    h, a = 100.0, 20.0
    east, north = ground_offset_m(h, Attitude(a, 0.0, 0.0))  # heading north: left = west
    assert east == pytest.approx(-h * math.tan(math.radians(a)))
    assert north == pytest.approx(0.0, abs=1e-9)


def test_roll_and_pitch_combined_hand_formula():
    # axis = Ry(p) Rx(r) z = (cos r sin p, -sin r, cos p cos r) -> offset = h * (n, e) / d
    h, r, p = 75.0, 12.0, 8.0
    rr, pp = math.radians(r), math.radians(p)
    east, north = ground_offset_m(h, Attitude(r, p, 0.0))
    assert north == pytest.approx(h * math.tan(pp))
    assert east == pytest.approx(-h * math.tan(rr) / math.cos(pp))


def test_rotation_is_proper():
    R = body_to_ned(Attitude(10.0, -20.0, 250.0))
    assert np.allclose(R @ R.T, np.eye(3), atol=1e-12) and np.linalg.det(R) == pytest.approx(1.0)
    assert np.linalg.norm(camera_axis_ned(Attitude(10.0, -20.0, 250.0), 15.0)) == pytest.approx(1.0)


def test_near_horizon_and_bad_altitude_give_none():
    assert ground_offset_m(100.0, Attitude(0.0, 0.0, 0.0), camera_tilt_deg=80.0) is None
    assert ground_offset_m(100.0, Attitude(0.0, 100.0, 0.0)) is None  # looking up
    assert aircraft_position(LAT, LON, float("nan"), Attitude()) is None


def test_pose_inputs_needs_what_it_needs():
    assert PoseInputs().aircraft(LAT, LON) is None  # no altitude
    assert PoseInputs(altitude_m=50.0).aircraft(LAT, LON) == pytest.approx((LAT, LON))  # level nadir: no heading needed
    assert PoseInputs(altitude_m=50.0, camera_tilt_deg=20.0).aircraft(LAT, LON) is None  # tilted, heading unknown
    got = PoseInputs(altitude_m=50.0, camera_tilt_deg=20.0, yaw_deg=90.0).aircraft(LAT, LON)
    assert got == pytest.approx(_hand_offset(LAT, LON, -50.0 * math.tan(math.radians(20.0)), 0.0), abs=1e-9)


def test_telemetry_log_by_frame_and_by_time(tmp_path):
    from skyloc.runtime.pose.frame_pose import TelemetryLog
    from skyloc.core.errors import SkylocError

    p = tmp_path / "truth.csv"
    p.write_text("frame,time_s,lat,lon,altitude_m,yaw_deg,tilt_deg\n0,0.0,1,2,100,10,0\n1,0.5,1,2,101,20,5\n")
    log = TelemetryLog(p)
    pose = PoseInputs()
    assert log.apply(pose, 1, 99.0)
    assert (pose.altitude_m, pose.yaw_deg, pose.camera_tilt_deg) == (101.0, 20.0, 5.0)
    q = tmp_path / "t.csv"
    q.write_text("time_s,yaw_deg\n0.0,1\n1.0,2\n2.0,3\n")
    pose = PoseInputs()
    assert TelemetryLog(q).apply(pose, 7, 1.4) and pose.yaw_deg == 2.0  # nearest earlier time
    assert not TelemetryLog(q).apply(PoseInputs(), 7, -1.0)
    bad = tmp_path / "bad.csv"
    bad.write_text("frame,lat,lon\n0,1,2\n")
    with pytest.raises(SkylocError, match="none of the columns"):
        TelemetryLog(bad)


# --- FramePose / camera_to_ned -------------------------------------------------------------------

def test_frame_pose_normalises_yaw_and_keeps_unknowns():
    p = FramePose(altitude_m=120, roll_deg=-3, yaw_deg=-90.0, camera_tilt_deg=10)
    assert p.yaw_deg == 270.0 and p.altitude_m == 120.0 and isinstance(p.altitude_m, float)
    assert FramePose(yaw_deg=720.5).yaw_deg == pytest.approx(0.5)
    assert FramePose().yaw_deg is None and FramePose().altitude_m is None
    assert FramePose(altitude_m=50.0).with_(yaw_deg=-1e-18).yaw_deg == 0.0


@pytest.mark.parametrize("kw", [dict(altitude_m=0.0), dict(altitude_m=-5.0), dict(altitude_m=float("nan")),
                                dict(altitude_m=float("inf")), dict(roll_deg=90.0), dict(pitch_deg=-95.0),
                                dict(roll_deg=float("nan")), dict(yaw_deg=float("inf")), dict(yaw_deg=float("nan")),
                                dict(camera_tilt_deg=-1.0), dict(camera_tilt_deg=76.0),
                                dict(camera_tilt_deg=float("nan")), dict(gsd_m=0.0), dict(gsd_m=float("nan")),
                                dict(time_s=float("inf")), dict(altitude_m="high"), dict(roll_deg=True)])
def test_frame_pose_rejects_bad_values(kw):
    with pytest.raises(SkylocError):
        FramePose(**kw)
    with pytest.raises(SkylocError):
        FramePose(altitude_m=100.0).with_(**kw)


def test_camera_to_ned_agrees_with_the_optical_axis_and_is_a_rotation():
    for roll, pitch, yaw, tilt in [(0, 0, 0, 0), (10, -5, 123, 20), (-20, 15, 300, 0), (5, 5, 45, 60)]:
        pose = FramePose(altitude_m=100.0, roll_deg=roll, pitch_deg=pitch, yaw_deg=yaw, camera_tilt_deg=tilt)
        R = camera_to_ned(pose)
        assert np.allclose(R @ R.T, np.eye(3)) and np.linalg.det(R) == pytest.approx(1.0)
        assert np.allclose(R[:, 2], camera_axis_ned(Attitude(roll, pitch, yaw), tilt))
    # level nadir camera heading east: image top (-y) points east, image right (+x) points south
    R = camera_to_ned(FramePose(altitude_m=10.0, yaw_deg=90.0))
    assert np.allclose(R @ [0, -1, 0], [0, 1, 0]) and np.allclose(R @ [1, 0, 0], [-1, 0, 0])
    # unknown heading: computed as if yaw were 0
    assert np.allclose(camera_to_ned(FramePose(altitude_m=10.0)), camera_to_ned(FramePose(altitude_m=10.0, yaw_deg=0)))
