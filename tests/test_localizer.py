"""The per-frame pipeline (runtime/localize/localizer.py) on a CI-sized flight: heading unknown, altitude
wandering 100-140 m, camera tilted up to 10 deg; retrieval with a tiny (torch-free) ONNX model
narrows the search, registration against the map imagery does the metre-level work. Errors are
recomputed here from the flight's truth.csv with a haversine written out in this file."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime_core_helpers import make_flight_case, make_map, make_tiny_model
from skyloc.cli import main as skyloc

R = 6378137.0


def _haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * R * math.asin(math.sqrt(a))


def _strict_lines(path: Path) -> list[dict]:
    def no_nan(token: str) -> None:
        raise AssertionError(f"record carries {token}: not valid JSON")

    return [json.loads(line, parse_constant=no_nan) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def flight(tmp_path_factory) -> dict:
    case = make_flight_case(tmp_path_factory.mktemp("flight"), seconds=10.0, fps=2.0, seed=3)
    with open(case["truth"], newline="") as f:
        case["rows"] = {int(r["frame"]): r for r in csv.DictReader(f)}
    return case


def _run(case: dict, out: Path, *extra: str) -> int:
    first = case["rows"][0]
    return skyloc(["run", "--model", str(case["model"]), "--tiles", str(case["tiles"]),
                   "--source", str(case["video"]), "--camera", str(case["camera"]),
                   "--telemetry", str(case["truth"]),  # altitude and attitude; its yaw is dropped below
                   "--no-heading", "--start", f"{first['lat']},{first['lon']},150",
                   # the tiny test model puts every view near the blank embeddings (cosine ~0.95-0.98)
                   "--blank-cos", "0.99", "--out", str(out), *extra])


def test_heading_unknown_flight_localizes_to_the_goal(flight, tmp_path):
    out, stats_path, nmea = tmp_path / "fixes.jsonl", tmp_path / "stats.json", tmp_path / "fixes.nmea"
    rc = _run(flight, out, "--imagery", str(flight["map"]), "--stats-json", str(stats_path),
              "--truth", str(flight["truth"]), "--nmea", f"file:{nmea}")
    assert rc == 0
    recs = _strict_lines(out)
    rows = flight["rows"]
    assert [r["frame"] for r in recs] == sorted(rows) and all(r["schema"] for r in recs)
    fixes = [r for r in recs if "skipped" not in r]
    assert len(fixes) == len(recs)
    err = {r["frame"]: _haversine(float(rows[r["frame"]]["lat"]), float(rows[r["frame"]]["lon"]),
                                  r["raw_lat"], r["raw_lon"]) for r in fixes}
    verified = [r for r in fixes if r["verified"]]
    assert len(verified) / len(recs) >= 0.8, [r.get("registration") for r in fixes]
    assert float(np.median([err[r["frame"]] for r in verified])) <= 5.0
    # the first verified fix only starts a tentative track (not sent); the next frame is registered
    # at that track's prediction first, which confirms it; the confirmed track's prediction then
    # vouches alone
    first = next(i for i, r in enumerate(fixes) if r["verified"])
    assert fixes[first]["reason"] == "init" and not fixes[first]["accepted"]
    # ...found by scanning the whole 150 m start prior (no fix yet), whatever retrieval ranked
    assert fixes[first]["registration"]["candidate"] == "prior-scan"
    assert all(r["registration"]["candidate"] != "prior-scan" for r in fixes[first + 1:])
    nxt = fixes[first + 1]
    assert nxt["verified"] and nxt["accepted"] and nxt["registration"]["candidate"] == "tentative"
    assert nxt["registration"]["tried"] > 1  # a tentative prediction never vouches alone
    assert any(r["registration"]["candidate"] == "track" and r["registration"]["tried"] == 1
               for r in fixes[first + 2:])
    # integrity: nothing accepted is far off, and only verified, accepted fixes go out as 3D
    for r in fixes:
        if r["accepted"]:
            t = rows[r["frame"]]
            assert _haversine(float(t["lat"]), float(t["lon"]), r["lat"], r["lon"]) <= 50.0
        assert r["send_3d"] == (r["verified"] and r["accepted"])
        if not r["verified"]:
            assert not r["accepted"] and r["reason"] == "unverified"
    # the heading nobody told the run, recovered by rotation search + registration
    for r in verified:
        d = abs((r["heading_deg"] - float(rows[r["frame"]]["yaw_deg"]) + 180.0) % 360.0 - 180.0)
        assert d <= 3.0 and r["heading_source"] == "registration"
    # accuracy_m is honest: >= 90 % of verified fixes within 2 x accuracy_m
    assert np.mean([err[r["frame"]] <= 2 * r["raw_accuracy_m"] for r in verified]) >= 0.9
    # the frames' ground covers one 50 m tile at every altitude, and the record says so
    assert all(r["scale_level"] == 1.0 and r["coverage_m"] >= 50.0 for r in fixes)
    stats = json.loads(stats_path.read_text())
    assert stats["verified"] == len(verified) and stats["sent_3d"] == sum(r["send_3d"] for r in fixes)
    assert stats["truth"]["verified"] == len(verified)
    # NMEA: one GGA + RMC per fix; a position only for what went out as a 3D fix, and it is the fix
    from test_nmea import parse

    sentences = [parse(line + "\r\n") for line in nmea.read_bytes().decode("ascii").split("\r\n") if line]
    gga = [x for x in sentences if x["kind"] == "GGA"]
    assert len(gga) == len(fixes) and sum(x["kind"] == "RMC" for x in sentences) == len(fixes)
    for r, g in zip(fixes, gga):
        assert (g["quality"] == 1) == r["send_3d"]
        if r["send_3d"]:
            assert g["lat"] == pytest.approx(r["lat"], abs=1e-5) and g["lon"] == pytest.approx(r["lon"], abs=1e-5)
        else:
            assert g["lat"] is None and g["lon"] is None
    # the resolved config beside the fixes reproduces the run's options
    cfg = json.loads((tmp_path / "fixes.jsonl.config.json").read_text())
    assert cfg["options"]["use_heading"] is False and cfg["options"]["start"][2] == 150.0


def test_retrieval_only_is_unverified_and_never_sent(flight, tmp_path):
    """No map imagery (the tile set records none, no --imagery): the run still localizes by
    retrieval, says so on every fix, and sends nothing to the autopilot as a position."""
    from pymavlink import mavutil

    out, mav, stats_path = tmp_path / "fixes.jsonl", tmp_path / "gps.mavlink", tmp_path / "stats.json"
    rc = _run(flight, out, "--mavlink", f"file:{mav}", "--stats-json", str(stats_path), "--max-frames", "8")
    assert rc == 0
    recs = _strict_lines(out)
    fixes = [r for r in recs if "skipped" not in r]
    assert len(recs) == 8 and len(fixes) >= 6
    assert all(r["verified"] is False and r["send_3d"] is False and "registration" not in r for r in fixes)
    assert all(r["heading_source"] == "rotation-search" for r in fixes)
    stats = json.loads(stats_path.read_text())
    assert stats["registration"] == "off" and stats["verified"] == 0 and stats["sent_3d"] == 0
    log = mavutil.mavlink_connection(str(mav), notimestamps=True)
    while (m := log.recv_match(type="GPS_INPUT", blocking=False)) is not None:
        assert m.fix_type < 2  # never a position fix


@pytest.fixture(scope="module")
def multiscale(tmp_path_factory) -> dict:
    from skyloc.runtime.backends import open_backend
    from skyloc.runtime.localize.localizer import Localizer, LocalizerOptions
    from skyloc.runtime.maps.tileset import TileSet
    from skyloc.runtime.maps.tileset_build import build_tileset

    d = tmp_path_factory.mktemp("ms")
    png = make_map(d / "map", width_px=360, height_px=360)
    model = make_tiny_model(d / "tiny.onnx", size=32, dim=16)
    tiles = build_tileset(model, png, d / "tiles.npz", tile_m=50, stride_m=40, scales=(1.0, 2.0), progress=False)
    be = open_backend(model, "onnxruntime")
    return {"backend": be, "tiles": TileSet.load(tiles), "Localizer": Localizer, "Options": LocalizerOptions}


@pytest.mark.parametrize("altitude,heading,level", [
    (100.0, 0.0, 1.0),     # covers ~86 m: the 50 m tiles
    (200.0, 0.0, 2.0),     # covers ~172 m: the 100 m tiles
    (150.0, 0.0, 2.0),     # ~129 m, heading known: 100 m tiles fit
    (150.0, None, 1.0),    # heading unknown: rotations need the inscribed circle, ~91 m: 50 m tiles
    (20.0, 0.0, None),     # ~17 m: no level fits -> skipped, counted
])
def test_rectify_picks_the_largest_scale_level_the_frame_covers(multiscale, altitude, heading, level):
    from skyloc.runtime.pose.camera import CameraModel
    from skyloc.runtime.localize.localizer import Fix
    from skyloc.runtime.pose.frame_pose import FramePose

    cam = CameraModel.from_hfov(60.0, 320, 240)
    loc = multiscale["Localizer"](multiscale["backend"], multiscale["tiles"], multiscale["Options"](), camera=cam)
    fix = Fix(0, 0.0)
    rgb = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    cands = loc.rectify(rgb, FramePose(altitude_m=altitude, yaw_deg=heading), fix)
    # hand geometry of a nadir pinhole: the frame sees 2 * alt * (H/2) / f metres across its short side
    # (pixel centres 0..H-1); unknown heading: the square inside the inscribed circle, short / sqrt 2
    short = 2 * altitude * ((cam.height - 1) / 2) / cam.fy
    assert fix.coverage_m == pytest.approx(short if heading is not None else short / math.sqrt(2), rel=1e-3)
    if level is None:
        assert cands == [] and fix.skipped == "no-coverage"
        return
    assert [lv for lv, _ in cands] == [level] and fix.scale_level == level and fix.scale_source == "coverage"
    patch = cands[0][1]
    # the patch's central register_px square is exactly one tile of that level on the ground
    assert patch.mpp * loc.opt.register_px == pytest.approx(50.0 * level)


def test_unknown_altitude_searches_every_scale_level(multiscale):
    from skyloc.runtime.pose.camera import CameraModel
    from skyloc.runtime.localize.localizer import Fix
    from skyloc.runtime.pose.frame_pose import FramePose

    loc = multiscale["Localizer"](multiscale["backend"], multiscale["tiles"], multiscale["Options"](),
                                  camera=CameraModel.from_hfov(60.0, 320, 240))
    fix = Fix(0, 0.0)
    rgb = np.random.default_rng(1).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    cands = loc.rectify(rgb, FramePose(altitude_m=None, yaw_deg=0.0), fix)
    assert [lv for lv, _ in cands] == [1.0, 2.0] and fix.scale_source == "search"
    # same pixels, each level's metric scale
    assert np.array_equal(cands[0][1].image, cands[1][1].image)
    assert cands[1][1].mpp == pytest.approx(2 * cands[0][1].mpp)


def test_a_black_frame_is_skipped_before_the_model(multiscale):
    from skyloc.runtime.localize.localizer import Fix  # noqa: F401
    from skyloc.runtime.pose.frame_pose import FramePose
    from skyloc.runtime.sources.base import Frame

    # (the tiny model sees any grey-ish texture near the blank embeddings: a stricter cosine here)
    loc = multiscale["Localizer"](multiscale["backend"], multiscale["tiles"], multiscale["Options"](blank_cos=0.999))
    fix = loc.step(Frame(0, 0.0, np.zeros((240, 320, 3), np.uint8), "black"), FramePose(altitude_m=100.0))
    assert fix.skipped == "low-contrast" and fix.lat is None and not fix.send_3d
    assert "infer" not in fix.latency_ms  # the model never saw it
    noisy = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8), (0, 0), 3)
    ok = loc.step(Frame(1, 1.0, noisy, "texture"), FramePose(gsd_m=0.5, yaw_deg=0.0))
    assert ok.skipped is None and ok.tile is not None and not ok.verified  # no imagery: retrieval only
