"""skyloc.synth.flight: video + truth.csv; truth reprojects onto the frames; smooth, valid, seeded."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from skyloc.cli import main as skyloc_main
from skyloc.core import geo
from skyloc.core.errors import SkylocError
from skyloc.runtime.maps.open import open_map
from skyloc.synth.camera import Camera
from skyloc.synth.flight import TRUTH_COLUMNS, FlightConfig, make_flight
from skyloc.synth.flight_path import catmull_rom


TURKU = Path(__file__).parents[1] / ".." / "shared" / "data" / "turku-satellite"
W, H, ALT, FOV, FPS, SPEED = 96, 72, 40.0, 60.0, 5.0, 10.0


def small_cfg(**kw) -> FlightConfig:
    base = dict(seconds=4.0, fps=FPS, altitude_m=ALT, speed_mps=SPEED, fov_deg=FOV, width=W, height=H, seed=7,
                world_size_m=450.0, world_mpp=1.0)
    base.update(kw)
    return FlightConfig(**base)


@pytest.fixture(scope="module")
def flight(tmp_path_factory) -> Path:
    return make_flight(None, tmp_path_factory.mktemp("fl") / "f", small_cfg())


def truth(video: Path) -> list[dict[str, str]]:
    with open(video.with_name("truth.csv"), newline="") as f:
        return list(csv.DictReader(f))


def frames(video: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    cap.release()
    return out


def camera_from_row(r: dict[str, str], lat0: float, lon0: float, w: int = W, h: int = H, fov: float = FOV) -> Camera:
    e, n = geo.latlon_to_local_m(float(r["lat"]), float(r["lon"]), lat0, lon0)
    return Camera(e, n, float(r["altitude_m"]), float(r["yaw_deg"]), 90.0 - float(r["tilt_deg"]), fov, w, h)


def test_video_and_truth_agree(flight):
    rows = truth(flight)
    assert list(rows[0].keys()) == TRUTH_COLUMNS
    assert len(rows) == int(4.0 * FPS)
    imgs = frames(flight)
    assert len(imgs) == len(rows) and imgs[0].shape == (H, W, 3)
    assert [int(r["frame"]) for r in rows] == list(range(len(rows)))
    assert [float(r["time_s"]) for r in rows] == pytest.approx([i / FPS for i in range(len(rows))])
    meta = json.loads(flight.with_name("flight.json").read_text())
    assert meta["frames"] == len(rows) and meta["video"] == flight.name
    assert (flight.parent / "map/map.png").is_file()  # the procedural world travels with the flight


def test_truth_reprojects_onto_frame_centres(flight):
    rows = truth(flight)
    for r in rows:
        # Nadir: the ground point at the image centre is straight below the drone.
        assert float(r["center_lat"]) == pytest.approx(float(r["lat"]), abs=1e-8)
        assert float(r["center_lon"]) == pytest.approx(float(r["lon"]), abs=1e-8)
        cam = camera_from_row(r, float(r["lat"]), float(r["lon"]))
        ce, cn = geo.latlon_to_local_m(float(r["center_lat"]), float(r["center_lon"]), float(r["lat"]), float(r["lon"]))
        u, v, front = cam.project(ce, cn)
        assert front and abs(u - W / 2) < 1.0 and abs(v - H / 2) < 1.0
    # The frames show the map at the truth position, facing the truth yaw: a yawed north-up crop
    # of the map there matches the frame's centre square better than crops 12 m away.
    m = open_map(flight.parent / "map")
    imgs = frames(flight)
    gsd = 2 * ALT * math.tan(math.radians(FOV / 2)) / W
    for i in (0, len(rows) // 2, len(rows) - 1):
        r = rows[i]
        sq = imgs[i][:, (W - H) // 2:(W + H) // 2].astype(np.float32).mean(2)

        def ncc(de: float, dn: float) -> float:
            lat, lon = geo.offset_latlon(float(r["center_lat"]), float(r["center_lon"]), de, dn)
            crop, valid = m.read_crop(lat, lon, H * gsd, H, yaw_deg=float(r["yaw_deg"]))
            c = crop.astype(np.float32).mean(2)
            a, b = sq - sq.mean(), c - c.mean()
            return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
        at = ncc(0.0, 0.0)
        assert at > 0.8, at
        assert all(at > ncc(de, dn) + 0.05 for de, dn in ((12, 0), (-12, 0), (0, 12), (0, -12)))


def test_path_is_smooth_and_yaw_follows_heading(flight):
    rows = truth(flight)
    e = np.array([float(r["east_m"]) for r in rows])
    n = np.array([float(r["north_m"]) for r in rows])
    step = np.hypot(np.diff(e), np.diff(n))
    np.testing.assert_allclose(step, SPEED / FPS, rtol=0.03)
    yaw = np.array([float(r["yaw_deg"]) for r in rows])
    heading = np.degrees(np.arctan2(np.diff(e), np.diff(n))) % 360
    mid = (yaw[:-1] + ((yaw[1:] - yaw[:-1] + 180) % 360 - 180) / 2) % 360
    assert np.all(np.abs((mid - heading + 180) % 360 - 180) < 3.0)
    assert np.all(np.abs((np.diff(yaw) + 180) % 360 - 180) < 20.0)  # no jumps between frames
    assert {float(r["altitude_m"]) for r in rows} == {ALT}


def test_tilted_camera_centre_is_ahead(tmp_path, flight):
    video = make_flight(flight.parent / "map", tmp_path / "tilt", small_cfg(tilt_deg=20.0, seconds=2.0))
    for r in truth(video):
        lat, lon = float(r["lat"]), float(r["lon"])
        ce, cn = geo.latlon_to_local_m(float(r["center_lat"]), float(r["center_lon"]), lat, lon)
        yaw = math.radians(float(r["yaw_deg"]))
        ahead = ALT * math.tan(math.radians(20.0))
        assert ce == pytest.approx(ahead * math.sin(yaw), abs=0.01)
        assert cn == pytest.approx(ahead * math.cos(yaw), abs=0.01)
        u, v, front = camera_from_row(r, lat, lon).project(ce, cn)
        assert front and abs(u - W / 2) < 1.0 and abs(v - H / 2) < 1.0


def test_same_seed_same_bytes(flight, tmp_path):
    twin = make_flight(None, tmp_path / "twin", small_cfg())
    for name in ("flight.mp4", "truth.csv", "flight.json"):
        assert (twin.parent / name).read_bytes() == (flight.parent / name).read_bytes(), name
    other = make_flight(flight.parent / "map", tmp_path / "other", small_cfg(seed=8))
    assert other.with_name("truth.csv").read_bytes() != flight.with_name("truth.csv").read_bytes()


def test_catmull_rom_passes_through_waypoints():
    pts = np.array([[0, 0], [10, 0], [20, 5], [30, 0], [40, 10], [50, 10]], float)
    curve = catmull_rom(pts, 20)
    for p in pts[1:-1]:
        assert np.min(np.hypot(*(curve - p).T)) < 1e-9
    assert np.all(np.hypot(*np.diff(curve, axis=0).T) < 2.0)  # dense, no jumps


def test_turku_flight_footprints_stay_off_the_holes(tmp_path):
    if not (TURKU / "map.csv").is_file():
        pytest.skip(f"{TURKU} not found: the shared Turku tiles are not on this machine")
    rows = []
    for line in (TURKU / "map.csv").read_text().splitlines()[1:]:
        parts = [p.strip().strip('"') for p in line.split(",")]
        if len(parts) == 5 and (TURKU / parts[0]).is_file():
            rows.append(tuple(map(float, parts[1:5])))
    cfg = small_cfg(altitude_m=25.0, seconds=3.0, fps=4.0, speed_mps=8.0, width=48, height=36, write_frames=True)
    video = make_flight(TURKU, tmp_path / "turku", cfg)
    assert len(list((tmp_path / "turku/frames").glob("*.jpg"))) == 12
    g = np.linspace(0, 1, 7)
    for r in truth(video):
        lat, lon = float(r["lat"]), float(r["lon"])
        cam = camera_from_row(r, lat, lon, 48, 36)
        e, n, hit = cam.ground_points(*np.meshgrid(g * 48, g * 36))
        la, lo = geo.local_m_to_latlon(e, n, lat, lon)
        ok = np.zeros(la.shape, bool)
        for a, b, c, d in rows:
            ok |= (la <= a) & (la >= c) & (lo >= b) & (lo <= d)
        assert hit.all() and ok.all(), r["frame"]


def test_flight_errors_and_cli(tmp_path):
    with pytest.raises(SkylocError, match="horizon"):
        make_flight(None, tmp_path / "x", small_cfg(tilt_deg=70.0))
    with pytest.raises(SkylocError, match="footprint|could not fit"):
        make_flight(None, tmp_path / "y", small_cfg(altitude_m=400.0, world_size_m=100.0))
    args = ["synth", "flight", "--out", str(tmp_path / "c"), "--seconds", "1", "--fps", "4", "--altitude", "30",
            "--width", "48", "--height", "32", "--world-size-m", "300"]
    assert skyloc_main(args) == 0
    assert len(truth(tmp_path / "c" / "flight.mp4")) == 4
    assert skyloc_main(args) == 2


# --- wandering altitude / tilt / attitude / heading ---------------------------------------------------

WANDER = dict(seconds=3.0, width=160, height=120, altitude_range_m=(60.0, 80.0), tilt_deg=2.0, tilt_max_deg=15.0,
              attitude_deg=4.0, yaw_mode="random-walk", yaw_rate_max_dps=20.0, world_size_m=500.0, world_mpp=0.5,
              write_frames=True)


@pytest.fixture(scope="module")
def wander(tmp_path_factory) -> Path:
    from skyloc.synth.photometric import PhotometricConfig

    cfg = small_cfg(**WANDER, photometric=PhotometricConfig(strength=0.0, jpeg_quality=(95, 95)))
    return make_flight(None, tmp_path_factory.mktemp("wander") / "f", cfg)


def test_wandering_truth_stays_in_its_ranges(wander):
    rows = truth(wander)
    alt = np.array([float(r["altitude_m"]) for r in rows])
    tilt = np.array([float(r["tilt_deg"]) for r in rows])
    roll = np.array([float(r["roll_deg"]) for r in rows])
    pitch = np.array([float(r["pitch_deg"]) for r in rows])
    yaw = np.array([float(r["yaw_deg"]) for r in rows])
    assert alt.min() >= 60.0 - 1e-3 and alt.max() <= 80.0 + 1e-3 and np.ptp(alt) > 0.1
    assert tilt.min() >= 2.0 - 1e-3 and tilt.max() <= 15.0 + 1e-3 and np.ptp(tilt) > 0.05
    assert np.abs(roll).max() <= 4.0 + 1e-3 and np.abs(pitch).max() <= 4.0 + 1e-3 and np.ptp(roll) > 0.01
    rate = np.abs((np.diff(yaw) + 180) % 360 - 180) * FPS
    assert rate.max() <= 20.0 + 1e-3
    # the heading is not the track direction (random-walk): the frames' yaw drifts from it
    e = np.array([float(r["east_m"]) for r in rows])
    n = np.array([float(r["north_m"]) for r in rows])
    track = np.degrees(np.arctan2(np.diff(e), np.diff(n))) % 360
    assert np.abs((yaw[:-1] - track + 180) % 360 - 180).max() > 5.0
    meta = json.loads(wander.with_name("flight.json").read_text())
    assert meta["yaw_mode"] == "random-walk" and meta["altitude_range_m"] == [60.0, 80.0]


def test_wandering_frames_rectify_onto_the_map_at_the_truth(wander):
    """Frames + truth pose + flight.json camera -> rectify -> the map crop at the truth's optical-axis
    ground point, to within a pixel (whole-patch phase correlation); the aircraft position follows
    from ref_offset_m."""
    from skyloc.runtime.localize.rectify import ground_coverage_m, rectify
    from skyloc.runtime.pose.camera import load_camera
    from skyloc.runtime.pose.frame_pose import FramePose

    cam = load_camera(wander.with_name("flight.json"))
    m = open_map(wander.parent / "map")
    rows = truth(wander)
    mpp, side = 0.5, 64
    for i in (0, len(rows) // 2, len(rows) - 1):
        r = rows[i]
        pose = FramePose(altitude_m=float(r["altitude_m"]), roll_deg=float(r["roll_deg"]),
                         pitch_deg=float(r["pitch_deg"]), yaw_deg=float(r["yaw_deg"]),
                         camera_tilt_deg=float(r["tilt_deg"]))
        assert ground_coverage_m(cam, pose) >= side * mpp
        frame = cv2.cvtColor(cv2.imread(str(wander.parent / "frames" / f"{i:06d}.jpg")), cv2.COLOR_BGR2RGB)
        patch = rectify(frame, cam, pose, mpp, side)
        crop, valid = m.read_crop(float(r["center_lat"]), float(r["center_lon"]), side * mpp, side)
        assert valid.all() and patch.valid.all()
        a = cv2.cvtColor(patch.image, cv2.COLOR_RGB2GRAY).astype(np.float64)
        b = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float64)
        (dx, dy), resp = cv2.phaseCorrelate(a, b, cv2.createHanningWindow((side, side), cv2.CV_64F))
        assert math.hypot(dx, dy) <= 1.0 and resp > 0.1, (i, dx, dy, resp)
        # aircraft = axis ground point - ref_offset (north-up patch)
        n_off, e_off = patch.ref_offset_m
        lat, lon = geo.offset_latlon(float(r["center_lat"]), float(r["center_lon"]), -e_off, -n_off)
        assert geo.haversine_m(lat, lon, float(r["lat"]), float(r["lon"])) < 0.05


def test_fixed_yaw_mode(tmp_path, flight):
    video = make_flight(flight.parent / "map", tmp_path / "fixed", small_cfg(seconds=2.0, yaw_mode="fixed"))
    yaw = np.array([float(r["yaw_deg"]) for r in truth(video)])
    assert np.all(yaw == yaw[0])
    e = np.array([float(r["east_m"]) for r in truth(video)])
    assert np.ptp(e) > 1.0  # it still flies


def test_wandering_same_seed_same_bytes(wander, tmp_path):
    from skyloc.synth.photometric import PhotometricConfig

    cfg = small_cfg(**WANDER, photometric=PhotometricConfig(strength=0.0, jpeg_quality=(95, 95)))
    twin = make_flight(None, tmp_path / "twin", cfg)
    for name in ("flight.mp4", "truth.csv", "flight.json", "frames/000007.jpg"):
        assert (twin.parent / name).read_bytes() == (wander.parent / name).read_bytes(), name


@pytest.mark.parametrize("kw,msg", [(dict(altitude_range_m=(80.0, 60.0)), "MIN must not exceed"),
                                    (dict(tilt_max_deg=80.0), "tilt"), (dict(yaw_mode="spin"), "yaw-mode"),
                                    (dict(attitude_deg=float("nan")), "finite")])
def test_flight_rejects_bad_settings(tmp_path, kw, msg):
    with pytest.raises(SkylocError, match=msg):
        make_flight(None, tmp_path / "bad", small_cfg(**kw))
