"""synth on real, holed maps: nadir datasets fit altitude to the valid map, flights turn to stay on it,
cross-domain flights (appearance model, --render-map) change the look but not the geometry."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import re

from skyloc.core import geo
from skyloc.core.errors import SkylocError
from skyloc.runtime.maps.open import open_map
from skyloc.runtime.pose.frame_pose import FramePose
from skyloc.synth.appearance import draw_appearance
from skyloc.synth.camera import Camera, attitude_camera
from skyloc.synth.dataset import SynthDatasetConfig, make_dataset
from skyloc.synth.flight import FlightConfig, make_flight, worst_footprint_m
from skyloc.synth.flight_path import _Region, plan_path
from skyloc.synth.nadir import NadirViewConfig
from skyloc.synth.photometric import PhotometricConfig
from skyloc.synth.world import make_world


TURKU = Path(__file__).parents[1] / ".." / "shared" / "data" / "turku-satellite"
NO_LOOK = PhotometricConfig(strength=0.0, jpeg_quality=(95, 95))


def need_turku() -> None:
    if not (TURKU / "map.csv").is_file():
        pytest.skip(f"{TURKU} not found: the shared Turku tiles are not on this machine")


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def corners_valid(m, cam: Camera, lat: float, lon: float, k: int = 7) -> bool:
    g = np.linspace(0, 1, k)
    e, n, hit = cam.ground_points(*np.meshgrid(g * cam.width, g * cam.height))
    la, lo = geo.local_m_to_latlon(e, n, lat, lon)
    return bool(hit.all() and m.is_valid(np.asarray(la), np.asarray(lo)).all())


# --- datasets ---------------------------------------------------------------------------------------

def test_turku_nadir_defaults_place_what_fits(tmp_path):
    """The README's map with --views nadir at the nadir defaults: no error; the count is said;
    every view stays on the valid map at an altitude fitted below the range's top."""
    need_turku()
    cfg = SynthDatasetConfig(views="nadir", drone_per_location=2, image_px=48)
    out = make_dataset(TURKU, tmp_path / "d", cfg)
    meta = json.loads((out / "synth.json").read_text())
    placed = meta["train_locations"] + meta["test_locations"]
    assert 5 <= placed < 40 and meta["test_locations"] >= 1 and meta["train_locations"] >= 1
    assert any(f"placed {placed} of 40" in n for n in meta["notes"])
    # sized from the nadir settings (mid altitude 165 m, fov 60), not the spiral
    assert meta["sat_size_m"] == pytest.approx(2 * 165 * math.tan(math.radians(30)), rel=1e-6)
    tops = meta["nadir_top_altitude_m"]
    assert len(tops) == placed and all(80.0 <= t <= 250.0 for t in tops) and min(tops) < 250.0
    m = open_map(TURKU)
    poses = rows_of(out / "poses.csv")
    assert len(poses) == 2 * placed
    for p in poses:
        loc = int(p["location_id"]) - 1
        assert 80.0 - 1e-6 <= float(p["altitude_m"]) <= tops[loc] + 1e-3
    for p in poses:  # the whole view, with its roll / pitch / tilt, lands on present tiles
        pose = FramePose(altitude_m=float(p["altitude_m"]), roll_deg=float(p["roll_deg"]),
                         pitch_deg=float(p["pitch_deg"]), yaw_deg=float(p["yaw_deg"]),
                         camera_tilt_deg=float(p["tilt_deg"]))
        cam = attitude_camera(0.0, 0.0, pose, 60.0, 48, 48)
        assert corners_valid(m, cam, float(p["cam_lat"]), float(p["cam_lon"]), 9), p["file"]


def test_advice_that_works(tmp_path):
    """When nothing fits, the error names settings; with exactly those settings it works."""
    world = make_world(tmp_path / "w", seed=1, size_m=160.0, mpp=1.0)
    base = dict(views="nadir", locations=4, distractors=0, drone_per_location=2, image_px=32, max_attempts=30)
    with pytest.raises(SkylocError, match="placed only 0 of 4") as err:
        make_dataset(world, tmp_path / "a", SynthDatasetConfig(**base))
    tips = dict(re.findall(r"(--[a-z-]+) ([0-9.,]+)", str(err.value)))
    assert {"--nadir-altitude-range", "--sat-size-m", "--min-separation-m"} <= set(tips), str(err.value)
    lo, hi = (float(x) for x in tips["--nadir-altitude-range"].split(","))
    cfg = SynthDatasetConfig(**base, sat_size_m=float(tips["--sat-size-m"]),
                             min_separation_m=float(tips["--min-separation-m"]),
                             nadir=NadirViewConfig(altitude_range_m=(lo, hi)))
    out = make_dataset(world, tmp_path / "b", cfg)
    meta = json.loads((out / "synth.json").read_text())
    assert meta["train_locations"] + meta["test_locations"] >= 2


# --- flights that turn, and lower themselves only with a message ------------------------------------

def test_long_flight_on_a_small_map_turns_inside_it(tmp_path):
    """When the waypoint planner finds nothing (max_tries=0 forces it here; on real maps it is a
    long flight over a holed map), the flight steers: constant speed, bounded turn rate, every
    frame's footprint on the valid map."""
    world = make_world(tmp_path / "w", seed=2, size_m=200.0, mpp=1.0)
    cfg = FlightConfig(seconds=120.0, fps=0.5, altitude_m=40.0, speed_mps=10.0, width=48, height=36, seed=4,
                       max_tries=0, photometric=NO_LOOK)
    region = _Region(open_map(world), worst_footprint_m(cfg) + cfg.margin_m)
    with pytest.raises(SkylocError, match="could not fit"):
        plan_path(region, np.random.default_rng(0), cfg, worst_footprint_m(cfg))
    video = make_flight(world, tmp_path / "f", cfg)
    meta = json.loads(video.with_name("flight.json").read_text())
    assert meta["path_planner"] == "steered" and meta["notes"] == []
    rows = rows_of(video.with_name("truth.csv"))
    assert len(rows) == 60 and {float(r["altitude_m"]) for r in rows} == {40.0}
    e = np.array([float(r["east_m"]) for r in rows])
    n = np.array([float(r["north_m"]) for r in rows])
    np.testing.assert_allclose(np.hypot(np.diff(e), np.diff(n)), 20.0, rtol=0.05)
    yaw = np.array([float(r["yaw_deg"]) for r in rows])
    turn = (np.diff(yaw) + 180) % 360 - 180
    assert np.all(np.abs(turn) <= 40.0 + 1e-6) and np.abs(np.sum(turn)) > 180.0  # 20 deg/s at most; it turned
    m = open_map(world)
    for r in rows:
        lat, lon = float(r["lat"]), float(r["lon"])
        cam = Camera(0.0, 0.0, 40.0, float(r["yaw_deg"]), 90.0, 60.0, 48, 36)
        assert corners_valid(m, cam, lat, lon), r["frame"]


def test_turku_high_flight_is_lowered_with_a_message(tmp_path, caplog):
    need_turku()
    cfg = FlightConfig(seconds=30.0, fps=0.5, altitude_range_m=(110.0, 190.0), width=48, height=36,
                       photometric=NO_LOOK)
    video = make_flight(TURKU, tmp_path / "f", cfg)
    meta = json.loads(video.with_name("flight.json").read_text())
    assert len(meta["notes"]) == 1 and "flying at" in meta["notes"][0]
    assert any("flying at" in r.getMessage() for r in caplog.records)
    lo, hi = meta["altitude_range_m"]
    assert hi < 190.0 and lo < 110.0 and lo / hi == pytest.approx(110.0 / 190.0)
    m = open_map(TURKU)
    for r in rows_of(video.with_name("truth.csv")):
        assert lo - 1e-3 <= float(r["altitude_m"]) <= hi + 1e-3
        cam = Camera(0.0, 0.0, float(r["altitude_m"]), float(r["yaw_deg"]), 90.0, 60.0, 48, 36)
        assert corners_valid(m, cam, float(r["lat"]), float(r["lon"])), r["frame"]


# --- cross-domain flights ---------------------------------------------------------------------------

W, H, ALT = 160, 120, 60.0


@pytest.fixture(scope="module")
def looks(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("looks")
    world = make_world(root / "w", seed=5, size_m=420.0, mpp=0.5)
    out = {}
    for kind in ("none", "season", "full"):
        cfg = FlightConfig(seconds=2.0, fps=2.0, altitude_m=ALT, speed_mps=8.0, width=W, height=H, seed=9,
                           photometric=NO_LOOK, appearance=kind, write_frames=True)
        out[kind] = make_flight(world, root / kind, cfg).parent
    return out


def grey(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float32)


def test_appearance_changes_the_look_not_the_path(looks):
    truth = {k: (v / "truth.csv").read_bytes() for k, v in looks.items()}
    assert truth["none"] == truth["season"] == truth["full"]  # same seed, same flight
    for kind in ("season", "full"):
        meta = json.loads((looks[kind] / "flight.json").read_text())
        assert meta["appearance"]["kind"] == kind
        assert meta["appearance"] == {**json.loads(json.dumps(
            draw_appearance(kind, np.random.default_rng(np.random.SeedSequence(9).spawn(5)[4])).__dict__)),
            "kind": kind}
        diffs = []
        for f in sorted((looks["none"] / "frames").glob("*.jpg")):
            a = cv2.imread(str(f)).astype(np.float32)
            b = cv2.imread(str(looks[kind] / "frames" / f.name)).astype(np.float32)
            diffs.append(np.abs(a - b).mean())
        assert min(diffs) > 6.0, (kind, diffs)  # measurably another look (grey levels, mean abs)


def test_appearance_keeps_the_geometry(looks):
    """Frames of another season sit where the plain ones do (phase correlation ~0 px); with
    "full", they are shifted by exactly the recorded misregistration of the source."""
    gsd = 2 * ALT * math.tan(math.radians(30.0)) / W
    rows = rows_of(looks["none"] / "truth.csv")
    win = cv2.createHanningWindow((W, H), cv2.CV_32F)
    for kind in ("season", "full"):
        mis = json.loads((looks[kind] / "flight.json").read_text())["appearance"]["misregistration_m"]
        for r in rows:
            name = f"{int(r['frame']):06d}.jpg"
            a = cv2.GaussianBlur(grey(looks["none"] / "frames" / name), (0, 0), 1.5)
            b = cv2.GaussianBlur(grey(looks[kind] / "frames" / name), (0, 0), 1.5)
            (dx, dy), _ = cv2.phaseCorrelate(a, b, win)
            yaw = math.radians(float(r["yaw_deg"]))
            # the source is sampled at p + m, so the ground appears moved by -m; image right / up
            # are (cos, -sin) / (sin, cos) of the yaw in east / north
            de, dn = -mis[0], -mis[1]
            want_x = (de * math.cos(yaw) - dn * math.sin(yaw)) / gsd
            want_y = -(de * math.sin(yaw) + dn * math.cos(yaw)) / gsd
            assert abs(dx - want_x) < 0.6 and abs(dy - want_y) < 0.6, (kind, name, dx, dy, want_x, want_y)
        if kind == "full":
            assert 0.3 <= math.hypot(*mis) <= 1.5


def test_render_map_frames_come_from_the_other_image(tmp_path):
    world = make_world(tmp_path / "w", seed=6, size_m=300.0, mpp=1.0)
    other = tmp_path / "other"
    other.mkdir()
    img = cv2.imread(str(world.with_name("map.png")))
    cv2.imwrite(str(other / "map.png"), 255 - img)  # the same area, another image
    (other / "map.csv").write_text(world.read_text())
    cfg = FlightConfig(seconds=1.0, fps=2.0, altitude_m=40.0, speed_mps=8.0, width=64, height=48, seed=1,
                       photometric=NO_LOOK, render_map=str(other / "map.csv"), write_frames=True)
    video = make_flight(world, tmp_path / "f", cfg)
    meta = json.loads(video.with_name("flight.json").read_text())
    assert meta["render_map"] == str((other / "map.csv").resolve())
    assert (video.parent / "map" / "map.png").read_bytes() == world.with_name("map.png").read_bytes()
    src, reg = open_map(other / "map.csv"), open_map(world)
    for r in rows_of(video.with_name("truth.csv")):
        lat, lon = float(r["lat"]), float(r["lon"])
        cam = Camera(0.0, 0.0, 40.0, float(r["yaw_deg"]), 90.0, 60.0, 64, 48)
        from skyloc.synth.render import render_view

        want, _ = render_view(src, cam, lat, lon)
        wrong, _ = render_view(reg, cam, lat, lon)
        got = cv2.cvtColor(cv2.imread(str(video.parent / "frames" / f"{int(r['frame']):06d}.jpg")), cv2.COLOR_BGR2RGB)
        assert np.abs(got.astype(float) - want).mean() < 4.0
        assert np.abs(got.astype(float) - wrong).mean() > 40.0
    with pytest.raises(SkylocError, match="does not overlap"):
        far = tmp_path / "far"
        far.mkdir()
        cv2.imwrite(str(far / "map.png"), img)
        lines = world.read_text().splitlines()
        name, *vals = [p.strip() for p in lines[1].split(",")]
        vals = [float(v) + (1.0 if i % 2 == 0 else 0.0) for i, v in enumerate(vals)]
        (far / "map.csv").write_text(lines[0] + "\n" + ",".join([name] + [f"{v:.8f}" for v in vals]) + "\n")
        make_flight(world, tmp_path / "g", FlightConfig(**{**cfg.__dict__, "render_map": str(far / "map.csv")}))
