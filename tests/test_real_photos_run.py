"""Real photos through the product's own code path (issue 22 item 7).

- The real aerovloc photo (autumn aerial frame, north-up, 0.065 m/px) localized by `skyloc run`
  against its summer satellite map with the learned registrar on the tile set's stored map
  features: heading known and unknown, start prior of 300 m and none; verified within 3 m of the
  source's own ground truth.
- The Turin DJI photos: EXIF/XMP pose + camera -> rectification -> the extractor, through the run's
  pose source (`runtime.run.inputs.Poses`) and rectifier; the displacement between overlapping
  rectified photos that their features give agrees with the EXIF GPS (an independent reference).

Both read ../shared/data and skip with the reason when it is absent.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from skyloc.core import geo

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
AEROVLOC, TURIN = DATA / "aerovloc", DATA / "turin-drone"


# ---- Turin: EXIF pose + rectification + extractor ------------------------------------------------


def _mutual_nn(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = a @ b.T
    ab, ba = s.argmax(axis=1), s.argmax(axis=0)
    i = np.flatnonzero(ba[ab] == np.arange(len(a)))
    return i, ab[i]


@pytest.mark.parametrize("pair", [("DJI_0010.JPG", "DJI_0020.JPG"),
                                  ("DJI_0310.JPG", "DJI_0320.JPG")])
def test_turin_photos_exif_pose_rectify_extract(xfeat_onnx, tmp_path, pair):
    if not TURIN.exists():
        pytest.skip(f"real drone photos {TURIN} not present")
    from skyloc.runtime.localize.rectify import rectify
    from skyloc.runtime.register.extractor import open_extractor
    from skyloc.runtime.run.inputs import open_pose_source
    from skyloc.runtime.run.loop import RunOptions
    from skyloc.runtime.sources.open import open_source

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in pair:  # links, not copies: the data stays where it is
        os.symlink(TURIN / name, folder / name)
    with open(TURIN / "gps_from_exif.csv", newline="") as f:
        gps = {r["file"]: r for r in csv.DictReader(f)}
    opt = RunOptions()
    src = open_source(str(folder))
    poses = open_pose_source(opt, src)
    ext = open_extractor(xfeat_onnx)
    mpp, side = 0.05, 560  # 28 m of the ~37 m x 30 m the photos see from 44.5 m
    out = []
    for frame in src:
        pose = poses.pose_for(frame.time_s, frame.meta)
        cam = poses.camera_for(frame)
        assert cam is not None and pose.altitude_m == pytest.approx(44.5, abs=0.2) and pose.yaw_deg is not None
        rgb = cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGB)
        patch = rectify(rgb, cam, pose, mpp, side, pose.yaw_deg)  # north-up, as the run does
        assert patch.valid.mean() > 0.95  # nadir: the whole square is seen
        kp = ext.extract(patch.image, patch.valid, max_kpts=1500)
        assert len(kp) > 300 and np.isfinite(kp.desc).all()
        row = gps[Path(frame.meta["path"]).name]
        out.append((kp, float(row["lat"]), float(row["lon"]), patch.ref_offset_m))
    src.close()
    assert len(out) == 2
    (ka, lat_a, lon_a, ref_a), (kb, lat_b, lon_b, ref_b) = out
    i, j = _mutual_nn(ka.desc, kb.desc)
    M, inl = cv2.estimateAffinePartial2D(kb.xy[j], ka.xy[i], method=cv2.RANSAC, ransacReprojThreshold=3.0)
    assert M is not None and int(inl.sum()) > 50
    scale = math.hypot(M[0, 0], M[1, 0])
    angle = math.degrees(math.atan2(M[1, 0], M[0, 0]))
    # both north-up at the same altitude: the features agree on no turn and no scale change
    assert abs(angle) < 2.0 and abs(scale - 1.0) < 0.02, (angle, scale)
    # patch b's centre in patch a's pixels -> metres east / north of a's centre
    cb = M @ np.array([side / 2, side / 2, 1.0])
    de, dn = (cb[0] - side / 2) * mpp, (side / 2 - cb[1]) * mpp
    # the nadir point (the GPS position) is the patch centre minus its ref offset (north, east)
    de += ref_a[1] - ref_b[1]
    dn += ref_a[0] - ref_b[0]
    ge, gn = geo.latlon_to_local_m(lat_b, lon_b, lat_a, lon_a)
    assert math.hypot(float(ge), float(gn)) > 1.0  # the photos were taken some metres apart
    assert math.hypot(de - float(ge), dn - float(gn)) < 1.5, ((de, dn), (float(ge), float(gn)))


# ---- aerovloc: the real photo through `skyloc run` -------------------------------------------------


@pytest.fixture(scope="module")
def aerovloc_case(xfeat_onnx, tmp_path_factory) -> dict:
    """`skyloc tiles --matcher` over the real map (tiny embedder: retrieval carries no place
    information here, so registration on the stored map features has to find the photo), and an
    image folder holding a link to the photo."""
    if not (AEROVLOC / "map").exists():
        pytest.skip(f"real photo + map {AEROVLOC} not present")
    from skyloc.cli import main as skyloc

    from runtime_core_helpers import make_tiny_model

    work = tmp_path_factory.mktemp("aerovloc")
    model = make_tiny_model(work / "tiny.onnx", size=64, dim=32, model_id="tiny-aerovloc")
    tiles = work / "tiles.npz"
    assert skyloc(["tiles", "--model", str(model), "--map", str(AEROVLOC / "map"), "--out", str(tiles),
                   "--tile-m", "150", "--scales", "0.8,1.0", "--stride-m", "50", "--matcher", str(xfeat_onnx),
                   "--no-progress"]) == 0
    photos = work / "photo"
    photos.mkdir()
    os.symlink(AEROVLOC / "query" / "aerovloc_q0.jpg", photos / "aerovloc_q0.jpg")
    with open(AEROVLOC / "query" / "truth.csv", newline="") as f:
        row = next(csv.DictReader(f))
    return {"model": model, "tiles": tiles, "photos": photos, "lat": float(row["lat"]), "lon": float(row["lon"]),
            "work": work}


@pytest.mark.parametrize("heading", ["known", "unknown"])
@pytest.mark.parametrize("prior", [300.0, None])
def test_aerovloc_photo_through_skyloc_run_is_verified_within_3_m(aerovloc_case, heading, prior, tmp_path):
    from skyloc.cli import main as skyloc

    c = aerovloc_case
    out = tmp_path / "fixes.jsonl"
    argv = ["run", "--model", str(c["model"]), "--tiles", str(c["tiles"]), "--source", str(c["photos"]),
            "--gsd", "0.065", "--out", str(out), "--blank-cos", "0.999"]  # the tiny model sits near blank
    argv += ["--yaw", "0"] if heading == "known" else []  # the photo is north-up
    if prior is not None:  # an operator's estimate 212 m north-east of the truth
        clat, clon = geo.offset_latlon(c["lat"], c["lon"], 150.0, 150.0)
        argv += ["--start", f"{float(clat):.7f},{float(clon):.7f},{prior:g}"]
    assert skyloc(argv) == 0
    recs = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    assert len(recs) == 1
    r = recs[0]
    reg = r["registration"]
    assert reg["method"] == "xfeat", reg  # the learned registrar by default on a tile set with map features
    # no prior: the whole (0.36 km^2) map's stored features; a prior: its scan or a retrieved place in it
    assert reg["candidate"] in (("prior-scan", "retrieval") if prior else ("whole-map",)), reg
    assert r["verified"], reg
    err = float(geo.haversine_m(r["ground_lat"], r["ground_lon"], c["lat"], c["lon"]))
    assert err <= 3.0, (err, reg)
    assert abs((r["heading_deg"] + 180.0) % 360.0 - 180.0) < 5.0  # north-up photo: heading ~0
    assert r["raw_accuracy_m"] < 5.0


@pytest.mark.parametrize("heading", ["known", "unknown"])
def test_the_photo_over_another_real_map_is_never_verified(xfeat_onnx, aerovloc_case, heading, tmp_path_factory):
    """Wrong place, end to end: the aerovloc photo run against the Turku map's tile set and stored
    features (every place of that map is wrong): `skyloc run` must not verify it nor send it."""
    turku = DATA / "turku-satellite"
    if not turku.exists():
        pytest.skip(f"real map {turku} not present")
    from skyloc.cli import main as skyloc

    c = aerovloc_case
    tiles = c["work"] / "turku-tiles.npz"
    if not tiles.exists():
        assert skyloc(["tiles", "--model", str(c["model"]), "--map", str(turku), "--out", str(tiles), "--tile-m", "150",
                       "--scales", "0.8,1.0", "--stride-m", "50", "--matcher", str(xfeat_onnx), "--no-progress"]) == 0
    out = tmp_path_factory.mktemp("wrong") / "fixes.jsonl"
    argv = ["run", "--model", str(c["model"]), "--tiles", str(tiles), "--source", str(c["photos"]),
            "--gsd", "0.065", "--out", str(out), "--blank-cos", "0.999"] + (["--yaw", "0"] if heading == "known" else [])
    assert skyloc(argv) == 0
    r = json.loads(out.read_text().splitlines()[0])
    assert r["registration"]["method"] == "xfeat" and r["registration"]["candidate"] == "whole-map"
    assert not r["verified"] and not r["send_3d"], r["registration"]
