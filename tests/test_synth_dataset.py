"""skyloc.synth.dataset: University-1652 layout, locations.csv geometry, determinism, the loader."""
from __future__ import annotations

import csv
import hashlib
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from skyloc.core import geo
from skyloc.cli import main as skyloc_main
from skyloc.core.errors import SkylocError
from skyloc.runtime.maps.open import open_map
from skyloc.synth.camera import Camera, SpiralConfig
from skyloc.synth.dataset import LOCATION_COLUMNS, SynthDatasetConfig, make_dataset
from skyloc.synth.render import render_view
from skyloc.synth.world import make_world

TURKU = Path(__file__).parents[1] / ".." / "shared" / "data" / "turku-satellite"
K, PX = 4, 64


def small_cfg(**kw) -> SynthDatasetConfig:
    base = dict(locations=6, drone_per_location=K, image_px=PX, spiral=SpiralConfig(scale=0.2), distractors=2,
                seed=3, world_size_m=420.0, world_mpp=1.0)
    base.update(kw)
    return SynthDatasetConfig(**base)


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    return make_dataset(None, tmp_path_factory.mktemp("ds") / "d", small_cfg())


def read_rows(root: Path) -> list[dict[str, str]]:
    with open(root / "locations.csv", newline="") as f:
        return list(csv.DictReader(f))


def tree(root: Path, split: str, view: str) -> dict[str, list[str]]:
    """{location id: sorted file names} by plain os.walk."""
    out: dict[str, list[str]] = {}
    base = root / split / view
    for dirpath, _, files in os.walk(base):
        if Path(dirpath) != base:
            out[Path(dirpath).name] = sorted(files)
    return out


def test_university1652_layout(ds):
    assert sorted(os.listdir(ds / "train")) == ["drone", "satellite"]
    assert sorted(os.listdir(ds / "test")) == ["gallery_drone", "gallery_satellite", "query_drone", "query_satellite"]
    sat, drone = tree(ds, "train", "satellite"), tree(ds, "train", "drone")
    qd, gd = tree(ds, "test", "query_drone"), tree(ds, "test", "gallery_drone")
    qs, gs = tree(ds, "test", "query_satellite"), tree(ds, "test", "gallery_satellite")
    assert set(sat) == set(drone) and len(sat) == 3  # 6 locations, half for testing
    assert set(qd) == set(gd) == set(qs) and len(qs) == 3
    assert not set(sat) & set(qs)  # split by location
    distractors = set(gs) - set(qs)
    assert set(qs) < set(gs) and len(distractors) == 2 and not distractors & set(sat)
    ids = sorted(set(sat) | set(gs))
    assert ids == [f"{i:04d}" for i in range(1, 9)]
    for loc in sat:
        assert sat[loc] == [f"{loc}.jpg"]
        assert drone[loc] == [f"image-{i:02d}.jpeg" for i in range(1, K + 1)]
    for loc in qs:
        assert qs[loc] == gs[loc] == [f"{loc}.jpg"] and qd[loc] == gd[loc] == drone[next(iter(drone))]
        for name in qd[loc]:
            assert (ds / "test/query_drone" / loc / name).read_bytes() == (ds / "test/gallery_drone" / loc / name).read_bytes()
    for path in (ds / "train/drone").rglob("*.jpeg"):
        img = cv2.imread(str(path))
        assert img.shape == (PX, PX, 3)
    # The map it was made from travels with it: the procedural world, readable as a map.
    assert (ds / "map/map.png").is_file() and (ds / "map/map.csv").is_file()
    assert open_map(ds / "map").metres_per_pixel == pytest.approx(1.0, rel=1e-3)


def test_locations_csv_cameras_aim_at_the_target_in_spiral_order(ds):
    rows = read_rows(ds)
    assert list(rows[0].keys()) == LOCATION_COLUMNS
    by_loc: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_loc.setdefault(r["location_id"], []).append(r)
        assert (ds / r["file"]).is_file()
    assert len(by_loc) == 8
    for loc, rs in by_loc.items():
        sat = [r for r in rs if r["view"] == "satellite"]
        drones = sorted((r for r in rs if r["view"] == "drone"), key=lambda r: int(r["index"]))
        assert len(sat) == 1
        if sat[0]["split"] == "distractor":
            assert not drones
            continue
        assert [Path(r["file"]).name for r in drones] == [f"image-{i:02d}.jpeg" for i in range(1, K + 1)]
        alts = [float(r["cam_alt_m"]) for r in drones]
        dists = [float(r["distance_m"]) for r in drones]
        assert alts == sorted(alts, reverse=True) and dists == sorted(dists, reverse=True)
        for r in drones:
            lat, lon = float(r["lat"]), float(r["lon"])
            e, n = geo.latlon_to_local_m(float(r["cam_lat"]), float(r["cam_lon"]), lat, lon)
            assert math.hypot(e, n) == pytest.approx(float(r["distance_m"]), abs=0.01)
            cam = Camera(e, n, float(r["cam_alt_m"]), float(r["cam_yaw_deg"]), float(r["cam_pitch_deg"]),
                         float(r["fov_deg"]), PX, PX)
            u, v, front = cam.project(0.0, 0.0)
            assert front and abs(u - PX / 2) < 1.0 and abs(v - PX / 2) < 1.0


def test_views_are_changed_renders_not_copies(ds):
    rows = [r for r in read_rows(ds) if r["view"] == "drone"][:3]
    m = open_map(ds / "map")
    for r in rows:
        lat, lon = float(r["lat"]), float(r["lon"])
        e, n = geo.latlon_to_local_m(float(r["cam_lat"]), float(r["cam_lon"]), lat, lon)
        cam = Camera(e, n, float(r["cam_alt_m"]), float(r["cam_yaw_deg"]), float(r["cam_pitch_deg"]),
                     float(r["fov_deg"]), PX, PX)
        clean, valid = render_view(m, cam, lat, lon)
        assert valid.all()
        saved = cv2.cvtColor(cv2.imread(str(ds / r["file"])), cv2.COLOR_BGR2RGB).astype(float)
        diff = np.abs(saved - clean).mean()
        corr = np.corrcoef(saved.mean(2).ravel(), clean.astype(float).mean(2).ravel())[0, 1]
        assert diff > 1.0 and corr > 0.9, (diff, corr)


def test_same_seed_gives_identical_bytes(ds, tmp_path):
    twin = make_dataset(None, tmp_path / "twin", small_cfg())

    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}
    assert digest(ds) == digest(twin)
    other = make_dataset(ds / "map", tmp_path / "other", small_cfg(seed=4))
    assert (other / "locations.csv").read_bytes() != (ds / "locations.csv").read_bytes()
    assert (other / "map/map.png").read_bytes() == (ds / "map/map.png").read_bytes()  # copied, not regenerated


def test_loader_reads_the_dataset(ds):
    torch = pytest.importorskip("torch")
    try:
        from skyloc.training.data import PairedTrainSet, U1652Folder
    except ModuleNotFoundError as exc:  # training/data.py is another area's module
        pytest.skip(f"training.data not available: {exc}")
    from skyloc.training.config import TrainConfig

    counts = {}
    for split, views in (("train", ("satellite", "drone")),
                         ("test", ("query_drone", "gallery_satellite", "query_satellite", "gallery_drone"))):
        for view in views:
            folder = U1652Folder(ds / split, view)
            counts[view] = (len(folder.classes), len(folder))
            x, label = folder[len(folder) - 1]
            assert isinstance(x, torch.Tensor) and tuple(x.shape) == (3, PX, PX)
            assert folder.classes[label] == folder.samples[-1][1]
    assert counts == {"satellite": (3, 3), "drone": (3, 3 * K), "query_drone": (3, 3 * K),
                      "gallery_satellite": (5, 5), "query_satellite": (3, 3), "gallery_drone": (3, 3 * K)}
    paired = PairedTrainSet(ds, 32, TrainConfig())
    sat, drone, label = paired[0]
    assert tuple(sat.shape) == (3, 32, 32) and tuple(drone.shape) == (3, 32, 32) and paired.num_classes == 3


def test_dataset_from_a_projected_geotiff_keeps_it(ds, tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import Affine

    img = cv2.cvtColor(cv2.imread(str(ds / "map/map.png")), cv2.COLOR_BGR2RGB)
    lat_min, lon_min, lat_max, lon_max = open_map(ds / "map").bounds_latlon()
    # The world re-stamped in Web Mercator at its own north-west corner (metres are stretched by
    # 1 / cos(lat) there, so a Mercator pixel of 1 / cos(lat) m is about 1 ground metre).
    x0 = math.radians(lon_min) * 6378137.0
    y0 = math.log(math.tan(math.pi / 4 + math.radians(lat_max) / 2)) * 6378137.0
    px = 1.0 / math.cos(math.radians((lat_min + lat_max) / 2))
    with rasterio.open(tmp_path / "w.tif", "w", driver="GTiff", width=img.shape[1], height=img.shape[0], count=3,
                       dtype="uint8", crs="EPSG:3857", transform=Affine(px, 0, x0, 0, -px, y0)) as f:
        f.write(np.moveaxis(img, 2, 0))
    out = make_dataset(tmp_path / "w.tif", tmp_path / "d", small_cfg(locations=3, distractors=0))
    assert sorted(os.listdir(out / "map")) == ["w.tif"]
    assert open_map(out / "map/w.tif").metres_per_pixel == pytest.approx(1.0, rel=0.01)
    assert len([r for r in read_rows(out) if r["view"] == "drone"]) == 3 * K


def test_map_too_small_is_a_clear_error(tmp_path):
    world = make_world(tmp_path / "w", seed=0, size_m=150.0, mpp=1.0)
    with pytest.raises(SkylocError, match="placed only"):
        make_dataset(world, tmp_path / "d", small_cfg(spiral=SpiralConfig(scale=0.5), max_attempts=5))


def test_cli_dataset_and_overwrite(tmp_path):
    args = ["synth", "dataset", "--out", str(tmp_path / "d"), "--locations", "3", "--drone-per-location", "2",
            "--image-px", "32", "--spiral-scale", "0.15", "--world-size-m", "300", "--distractors", "1"]
    assert skyloc_main(args) == 0
    assert len(read_rows(tmp_path / "d")) == 3 * 3 + 1
    assert skyloc_main(args) == 2  # refuses to write over a dataset
    assert skyloc_main(args + ["--overwrite", "--seed", "1"]) == 0
    assert skyloc_main(["synth", "dataset", "--map", str(tmp_path / "none.csv"), "--out", str(tmp_path / "e")]) == 2
    assert not (tmp_path / "e").exists()  # a bad map fails before anything is written
    assert skyloc_main(["synth", "world", "--out", str(tmp_path / "w"), "--size-m", "200"]) == 0
    assert open_map(tmp_path / "w" / "map.csv").describe()["tiles"] == ["map.png"]


def test_turku_locations_never_come_from_a_hole(tmp_path):
    if not (TURKU / "map.csv").is_file():
        pytest.skip(f"{TURKU} not found: the shared Turku tiles are not on this machine")
    rows = []
    for line in (TURKU / "map.csv").read_text().splitlines()[1:]:
        parts = [p.strip().strip('"') for p in line.split(",")]
        if len(parts) == 5 and (TURKU / parts[0]).is_file():
            rows.append(tuple(map(float, parts[1:5])))

    def in_present_tile(lat, lon):
        ok = np.zeros(np.shape(lat), bool)
        for a, b, c, d in rows:
            ok |= (lat <= a) & (lat >= c) & (lon >= b) & (lon <= d)
        return ok

    cfg = small_cfg(locations=5, drone_per_location=3, image_px=32, spiral=SpiralConfig(scale=0.12), distractors=3)
    out = make_dataset(TURKU, tmp_path / "turku", cfg)
    assert sorted(os.listdir(out / "map")) == sorted(["map.csv"] + [f"sat_map_{i:02d}.png" for i in
                                                                    (0, 1, 2, 3, 4, 5, 6, 8, 11, 12, 13, 14)])
    g = np.linspace(0, 32, 9)
    uu, vv = np.meshgrid(g, g)
    for r in read_rows(out):
        lat, lon = float(r["lat"]), float(r["lon"])
        s = float(r["ground_size_m"] or 0)
        if r["view"] == "satellite":
            e, n = np.meshgrid(np.linspace(-s / 2, s / 2, 9), np.linspace(-s / 2, s / 2, 9))
        else:
            ce, cn = geo.latlon_to_local_m(float(r["cam_lat"]), float(r["cam_lon"]), lat, lon)
            cam = Camera(ce, cn, float(r["cam_alt_m"]), float(r["cam_yaw_deg"]), float(r["cam_pitch_deg"]),
                         float(r["fov_deg"]), 32, 32)
            e, n, hit = cam.ground_points(uu, vv)
            assert hit.all()
        la, lo = geo.local_m_to_latlon(e, n, lat, lon)
        assert in_present_tile(la, lo).all(), r["file"]


# --- onboard-like nadir views with a pose per image -----------------------------------------------------

def nadir_cfg(**kw) -> SynthDatasetConfig:
    from skyloc.synth.nadir import NadirViewConfig
    from skyloc.synth.photometric import PhotometricConfig

    base = dict(views="nadir", image_px=96, world_mpp=0.5, world_size_m=420.0, locations=4, distractors=0,
                drone_photometric=PhotometricConfig(strength=0.0),
                nadir=NadirViewConfig(altitude_range_m=(40.0, 60.0), tilt_max_deg=15.0, attitude_deg=4.0))
    base.update(kw)
    return small_cfg(**base)


@pytest.fixture(scope="module")
def nadir_ds(tmp_path_factory) -> Path:
    return make_dataset(None, tmp_path_factory.mktemp("nd") / "d", nadir_cfg())


def read_poses(root: Path) -> list[dict[str, str]]:
    with open(root / "poses.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_nadir_views_rectify_onto_the_map_with_their_pose(nadir_ds):
    """Each drone image + its poses.csv row -> runtime.rectify -> the map crop at the location (the
    optical-axis ground point) within a pixel; the poses span the configured ranges."""
    from skyloc.runtime.pose.camera import CameraModel
    from skyloc.runtime.pose.frame_pose import FramePose
    from skyloc.runtime.localize.rectify import rectify

    m = open_map(nadir_ds / "map")
    loc = {r["location_id"]: r for r in read_rows(nadir_ds) if r["view"] == "satellite"}
    poses = read_poses(nadir_ds)
    assert len(poses) == 4 * K and {p["kind"] for p in poses} == {"nadir"}
    alt = np.array([float(p["altitude_m"]) for p in poses])
    tilt = np.array([float(p["tilt_deg"]) for p in poses])
    yaw = np.array([float(p["yaw_deg"]) for p in poses])
    assert alt.min() >= 40 and alt.max() <= 60 and tilt.min() >= 0 and tilt.max() <= 15 and np.ptp(yaw) > 90
    mpp, side = 0.5, 48
    for p in poses:
        assert float(p["ground_lat"]) == pytest.approx(float(loc[p["location_id"]]["lat"]), abs=1e-7)
        assert float(p["ground_lon"]) == pytest.approx(float(loc[p["location_id"]]["lon"]), abs=1e-7)
        cam = CameraModel(*(float(p[k]) for k in ("fx", "fy", "cx", "cy")), int(p["width"]), int(p["height"]))
        pose = FramePose(altitude_m=float(p["altitude_m"]), roll_deg=float(p["roll_deg"]),
                         pitch_deg=float(p["pitch_deg"]), yaw_deg=float(p["yaw_deg"]),
                         camera_tilt_deg=float(p["tilt_deg"]))
        img = cv2.cvtColor(cv2.imread(str(nadir_ds / p["file"])), cv2.COLOR_BGR2RGB)
        patch = rectify(img, cam, pose, mpp, side)
        crop, valid = m.read_crop(float(p["ground_lat"]), float(p["ground_lon"]), side * mpp, side)
        assert valid.all() and patch.valid.all()
        a = cv2.cvtColor(patch.image, cv2.COLOR_RGB2GRAY).astype(np.float64)
        b = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float64)
        (dx, dy), resp = cv2.phaseCorrelate(a, b, cv2.createHanningWindow((side, side), cv2.CV_64F))
        assert math.hypot(dx, dy) <= 1.0 and resp > 0.1, (p["file"], dx, dy, resp)


def test_mixed_views_spiral_first_then_nadir(tmp_path, nadir_ds):
    root = make_dataset(nadir_ds / "map", tmp_path / "mixed", nadir_cfg(views="mixed", locations=2))
    poses = read_poses(root)
    by_loc: dict[str, list[str]] = {}
    for p in poses:
        by_loc.setdefault(p["location_id"], []).append(p["kind"])
    assert all(k == ["spiral"] * (K - K // 2) + ["nadir"] * (K // 2) for k in by_loc.values())
    # spiral views get a pose too: level airframe, tilt = 90 - depression
    rows = {r["file"]: r for r in read_rows(root) if r["view"] == "drone"}
    for p in poses:
        if p["kind"] == "spiral":
            assert float(p["tilt_deg"]) == pytest.approx(90 - float(rows[p["file"]]["cam_pitch_deg"]), abs=1e-3)
            assert float(p["roll_deg"]) == 0.0


def test_nadir_same_seed_same_bytes(nadir_ds, tmp_path):
    twin = make_dataset(None, tmp_path / "twin", nadir_cfg())
    for name in ("poses.csv", "locations.csv", read_poses(twin)[0]["file"], read_poses(twin)[-1]["file"]):
        assert (twin / name).read_bytes() == (nadir_ds / name).read_bytes(), name


def test_bad_views_setting(tmp_path):
    with pytest.raises(SkylocError, match="--views"):
        make_dataset(None, tmp_path / "x", small_cfg(views="orbit"))
    assert not (tmp_path / "x").exists()
