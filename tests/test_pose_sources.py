"""skyloc.runtime.pose.sources: flags, telemetry CSV joined on time, DJI XMP, MAVLink, the chain."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from pymavlink.dialects.v20 import common as mavlink2
from scipy.spatial.transform import Rotation

from skyloc.core.errors import SkylocError
from skyloc.runtime.pose.sources import (ChainPose, ExifPose, FlagPose, MavlinkPoseListener, TelemetryCsvPose,
                                         read_dji_xmp)

TURIN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "turin-drone"


def test_flags_and_their_ranges():
    p = FlagPose(altitude_m=120, yaw_deg=-30, camera_tilt_deg=10).pose_for(3.0, {})
    assert (p.altitude_m, p.yaw_deg, p.camera_tilt_deg, p.time_s, p.source) == (120.0, 330.0, 10.0, 3.0, "flags")
    for bad in (dict(altitude_m=-1), dict(altitude_m=float("nan")), dict(roll_deg=95), dict(camera_tilt_deg=80),
                dict(gsd_m=0), dict(yaw_deg=float("inf"))):
        with pytest.raises(SkylocError):
            FlagPose(**bad)


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_telemetry_joins_on_time_and_interpolates(tmp_path):
    p = write_csv(tmp_path / "tel.csv", ["time_s", "altitude_m", "roll_deg", "yaw_deg", "tilt_deg"], [
        [0.0, 100, 0, 350, 5],
        [0.5, 110, 4, 10, 5],
        [1.0, 120, "", 30, 5],   # roll missing here: its series skips this time
        [6.0, 170, 2, 90, 5],    # 5 s gap: nothing between 1.5 and 5.5
    ])
    tel = TelemetryCsvPose(p, max_gap_s=1.0)
    v = tel.values_for(0.25, {})
    assert v["altitude_m"] == pytest.approx(105.0) and v["roll_deg"] == pytest.approx(2.0)
    assert v["yaw_deg"] == pytest.approx(0.0, abs=1e-9) or v["yaw_deg"] == pytest.approx(360.0)  # across north
    assert tel.values_for(0.75, {})["yaw_deg"] == pytest.approx(20.0)
    assert "roll_deg" not in tel.values_for(1.1, {})  # roll samples at 0.5 and 6.0: 5.5 s apart, 0.6 s away
    assert tel.values_for(1.4, {})["altitude_m"] == 120.0  # within half a gap of the last sample
    assert tel.values_for(3.5, {}) == {}
    assert tel.values_for(-0.4, {})["altitude_m"] == 100.0 and tel.values_for(-0.6, {}) == {}
    pose = tel.pose_for(0.5, {})
    assert (pose.altitude_m, pose.roll_deg, pose.yaw_deg, pose.camera_tilt_deg) == (110.0, 4.0, 10.0, 5.0)
    # a time offset moves the join
    assert TelemetryCsvPose(p, time_offset_s=0.5).values_for(0.0, {})["altitude_m"] == pytest.approx(110.0)


def test_telemetry_skips_bad_rows_with_file_and_line(tmp_path):
    p = write_csv(tmp_path / "bad.csv", ["time_s", "altitude_m", "roll_deg"], [
        [0.0, 100, 0], [1.0, "nan", 0], [2.0, 100, 95], [3.0, "abc", 1], ["inf", 100, 0], [2.5, 100, 0],
        [4.0, 140, 0], [4.0, 150, 0],
    ])
    tel = TelemetryCsvPose(p, max_gap_s=10.0)
    assert tel.skipped == 5
    assert tel.problems[0].startswith("bad.csv:3:") and "nan" in tel.problems[0]
    assert any("bad.csv:4:" in s and "roll_deg" in s for s in tel.problems)
    assert any("does not increase" in s for s in tel.problems)
    # only the good rows (t = 0, 2.5, 4) are used
    assert tel.values_for(2.0, {})["altitude_m"] == pytest.approx(100.0)
    assert tel.values_for(3.25, {})["altitude_m"] == pytest.approx(120.0)


def test_telemetry_file_errors(tmp_path):
    with pytest.raises(SkylocError, match="cannot be read"):
        TelemetryCsvPose(tmp_path / "none.csv")
    with pytest.raises(SkylocError, match="time_s"):
        TelemetryCsvPose(write_csv(tmp_path / "a.csv", ["frame", "altitude_m"], [[0, 1]]))
    with pytest.raises(SkylocError, match="no usable rows"):
        TelemetryCsvPose(write_csv(tmp_path / "b.csv", ["time_s", "altitude_m"], [[0, -3]]))


def test_xmp_element_form_and_no_packet():
    data = (b"\xff\xd8junk<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:Description>"
            b"<drone-dji:RelativeAltitude>+61.2</drone-dji:RelativeAltitude>"
            b'<drone-dji:GimbalPitchDegree>-60.0</drone-dji:GimbalPitchDegree></rdf:Description>'
            b' drone-dji:GimbalYawDegree="-12.5"</x:xmpmeta>')
    assert read_dji_xmp(data) == {"RelativeAltitude": "+61.2", "GimbalPitchDegree": "-60.0",
                                  "GimbalYawDegree": "-12.5"}
    assert read_dji_xmp(b"\xff\xd8 no xmp here") == {}


def test_exif_pose_on_a_synthetic_jpeg(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_bytes(b"\xff\xd8<x:xmpmeta>drone-dji:RelativeAltitude=\"+80.5\" drone-dji:GimbalPitchDegree=\"-70\" "
                  b"drone-dji:FlightYawDegree=\"-100\"</x:xmpmeta>")
    pose = ExifPose().pose_for(0.0, {"path": str(p)})
    assert (pose.altitude_m, pose.camera_tilt_deg, pose.yaw_deg) == (80.5, pytest.approx(20.0), 260.0)
    p.write_bytes(b"\xff\xd8<x:xmpmeta>drone-dji:GimbalPitchDegree=\"-5\" drone-dji:RelativeAltitude=\"-2\""
                  b"</x:xmpmeta>")
    src = ExifPose()
    assert src.values_for(0.0, {"path": str(p)}) == {}
    assert len(src.problems) == 2
    assert ExifPose().values_for(0.0, {}) == {}


def test_exif_pose_matches_the_turin_photos():
    if not (TURIN / "gps_from_exif.csv").is_file():
        pytest.skip(f"{TURIN} not present")
    src = ExifPose()
    rows = list(csv.DictReader(open(TURIN / "gps_from_exif.csv", newline="")))
    assert rows
    for r in rows:
        meta = {"path": str(TURIN / r["file"])}
        pose = src.pose_for(0.0, meta)
        assert pose.altitude_m == pytest.approx(float(r["rel_alt_m"]), abs=1e-6)
        assert pose.yaw_deg == pytest.approx(float(r["gimbal_yaw"]) % 360.0, abs=1e-6)
        gp = float(r["gimbal_pitch"])
        assert pose.camera_tilt_deg == pytest.approx(0.0 if gp <= -90 else 90 + gp, abs=1e-6)
        assert pose.roll_deg == 0.0 and pose.pitch_deg == 0.0
    K = np.loadtxt(TURIN / "K.txt")
    cam = src.camera_for({"path": str(TURIN / rows[0]["file"])}, int(rows[0]["width"]), int(rows[0]["height"]))
    assert cam is not None and len(cam.dist) == 5
    assert (cam.fy, cam.cx, cam.cy) == pytest.approx((K[1, 1], K[0, 2], K[1, 2]), abs=1e-3)


# --- MAVLink: real pymavlink messages, packed and decoded back ------------------------------------

class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def roundtrip(msg):
    """Encode with pymavlink and decode the bytes again, as a link would deliver it."""
    mav = mavlink2.MAVLink(None, srcSystem=1, srcComponent=1)
    buf = msg.pack(mav)
    out = mavlink2.MAVLink(None).parse_buffer(buf)
    assert out and len(out) == 1
    return out[0]


def attitude(roll, pitch, yaw, t_ms=1000):
    return roundtrip(mavlink2.MAVLink_attitude_message(t_ms, roll, pitch, yaw, 0.0, 0.0, 0.0))


def test_mavlink_attitude_altitude_and_age():
    clock = Clock()
    lis = MavlinkPoseListener(max_age_s=1.0, clock=clock)
    lis.feed(attitude(math.radians(5), math.radians(-3), math.radians(-90)))
    lis.feed(roundtrip(mavlink2.MAVLink_global_position_int_message(2000, 0, 0, 0, 87_500, 0, 0, 0, 65535)))
    v = lis.values_for(0.0, {})
    assert v["roll_deg"] == pytest.approx(5.0, abs=1e-4) and v["pitch_deg"] == pytest.approx(-3.0, abs=1e-4)
    assert v["yaw_deg"] == pytest.approx(270.0, abs=1e-4) and v["altitude_m"] == pytest.approx(87.5)
    assert lis.latest["roll_deg"][1] == pytest.approx(1.0)  # the autopilot's timestamp is kept
    # ALTITUDE: above-terrain beats relative, unknown terrain (< -1000) falls back to relative
    lis.feed(roundtrip(mavlink2.MAVLink_altitude_message(3_000_000, 0, 0, 0, 95.0, 61.0, 0)))
    assert lis.values_for(0.0, {})["altitude_m"] == pytest.approx(61.0)
    lis2 = MavlinkPoseListener(clock=clock)
    lis2.feed(roundtrip(mavlink2.MAVLink_altitude_message(3_000_000, 0, 0, 0, 95.0, -9999.0, 0)))
    assert lis2.values_for(0.0, {})["altitude_m"] == pytest.approx(95.0)
    clock.t += 1.5  # stale
    assert lis.values_for(0.0, {}) == {}
    assert lis.received == {"ATTITUDE": 1, "GLOBAL_POSITION_INT": 1, "ALTITUDE": 1}


def test_mavlink_rejects_nan_and_counts():
    lis = MavlinkPoseListener(clock=Clock())
    lis.feed(attitude(float("nan"), 0.0, 0.0))
    lis.feed(attitude(0.0, float("inf"), 0.0))
    lis.feed(roundtrip(mavlink2.MAVLink_altitude_message(1, 0, 0, 0, float("nan"), float("nan"), 0)))
    q_nan = [float("nan"), 0.0, 0.0, 0.0]
    lis.feed(roundtrip(mavlink2.MAVLink_gimbal_device_attitude_status_message(0, 0, 10, 0, q_nan, 0, 0, 0, 0)))
    assert lis.rejected == {"ATTITUDE": 2, "ALTITUDE": 1, "GIMBAL_DEVICE_ATTITUDE_STATUS": 1}
    assert lis.values_for(0.0, {}) == {}
    lis.feed(roundtrip(mavlink2.MAVLink_heartbeat_message(1, 3, 0, 0, 4, 3)))  # ignored
    assert "HEARTBEAT" not in lis.received


def test_mavlink_gimbal_quaternion_gives_tilt_and_camera_yaw():
    lis = MavlinkPoseListener(clock=Clock())
    lis.feed(attitude(math.radians(7), math.radians(2), math.radians(40)))
    # gimbal pitched 60 deg down and yawed 15 deg right of the nose (vehicle frame); scipy builds q
    x, y, z, w = Rotation.from_euler("ZYX", [15.0, -60.0, 0.0], degrees=True).as_quat()
    lis.feed(roundtrip(mavlink2.MAVLink_gimbal_device_attitude_status_message(
        0, 0, 5000, 0, [w, x, y, z], 0, 0, 0, 0)))
    v = lis.values_for(0.0, {})
    assert v["camera_tilt_deg"] == pytest.approx(30.0, abs=1e-3)
    assert v["roll_deg"] == 0.0 and v["pitch_deg"] == 0.0  # stabilised: airframe attitude does not matter
    assert v["yaw_deg"] == pytest.approx(55.0, abs=1e-3)
    x, y, z, w = Rotation.from_euler("ZYX", [200.0, -90.0 + 1e-9, 0.0], degrees=True).as_quat()
    lis.feed(roundtrip(mavlink2.MAVLink_gimbal_device_attitude_status_message(
        0, 0, 6000, 2048, [w, x, y, z], 0, 0, 0, 0)))  # YAW_IN_EARTH_FRAME
    v = lis.values_for(0.0, {})
    assert v["camera_tilt_deg"] == pytest.approx(0.0, abs=1e-3)


def test_chain_takes_first_source_per_field_and_no_heading(tmp_path):
    tel = TelemetryCsvPose(write_csv(tmp_path / "t.csv", ["time_s", "altitude_m"], [[0, 90], [1, 110]]))
    flags = FlagPose(altitude_m=50.0, yaw_deg=80.0, camera_tilt_deg=12.0)
    pose = ChainPose([tel, flags]).pose_for(0.5, {})
    assert (pose.altitude_m, pose.yaw_deg, pose.camera_tilt_deg) == (100.0, 80.0, 12.0)
    assert pose.source == "altitude_m=telemetry,yaw_deg=flags,camera_tilt_deg=flags"
    blind = ChainPose([tel, flags], no_heading=True).pose_for(0.5, {})
    assert blind.yaw_deg is None and "yaw" not in blind.source
    # outside the telemetry, the flag altitude is the fallback
    assert ChainPose([tel, flags]).pose_for(9.0, {}).altitude_m == 50.0
