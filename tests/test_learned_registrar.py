"""The learned (XFeat) registrar on real imagery: known rotation / scale / offset recovered after an
appearance change, the real aerovloc photo against its other-season map, wrong places refused,
and the stored-features entry point (`register_keypoints`) agreeing with `register`."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from skyloc.core import geo
from skyloc.core.errors import SkylocError
from skyloc.runtime.localize.rectify import GroundPatch
from skyloc.runtime.register.extractor import Keypoints
from skyloc.runtime.register.learned import _angles, _turned
from skyloc.runtime.register.matching import mutual_nn, ransac_similarity
from real_data import AERO, TURKU, open_real_map
from skyloc.benchmarks.flight_photo import aerovloc_patch
from skyloc.runtime.register.registry import make_registrar

_open = open_real_map


@pytest.fixture(scope="module")
def reg(xfeat_onnx: Path):
    return make_registrar("xfeat", onnx=str(xfeat_onnx))


def appearance(img: np.ndarray, seed: int) -> np.ndarray:
    """Another day and sensor: channel gains, gamma, haze, blur, noise, JPEG."""
    rng = np.random.default_rng(seed)
    x = img.astype(np.float32) / 255
    x = np.clip(x * rng.uniform(0.8, 1.2, 3), 0, 1) ** rng.uniform(0.7, 1.4)
    x = 0.85 * x + 0.12  # haze lifts the blacks, lowers contrast
    x = cv2.GaussianBlur(x, (0, 0), 1.0) + rng.normal(0, 0.02, x.shape)
    u8 = np.clip(x * 255, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, 60])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


def _centre(gmap, side: float = 340.0) -> tuple[float, float]:
    g = gmap.grid(side, 20.0)
    assert len(g), f"no {side} m square of data in the map"
    return float(g[len(g) // 2][0]), float(g[len(g) // 2][1])


def _case(gmap, east: float, north: float, up_deg: float, scale: float, seed: int, heading_up: bool,
          side_m: float = 150.0, crop_m: float = 300.0, mpp: float = 0.5):
    """A patch seen with its up axis at up_deg, `scale` x larger on the ground than it claims,
    centred (east, north) m from the centre of a north-up map crop."""
    lat0, lon0 = _centre(gmap)
    plat, plon = geo.offset_latlon(lat0, lon0, east, north)
    px = round(side_m / mpp)
    img, valid = gmap.read_crop(plat, plon, side_m * scale, px, yaw_deg=up_deg)
    patch = GroundPatch(appearance(img, seed), valid, side_m / px, None if heading_up else 0.0, (0.0, 0.0))
    mrgb, mvalid = gmap.read_crop(lat0, lon0, crop_m, round(crop_m / mpp))
    return patch, mrgb, crop_m / mrgb.shape[1], mvalid


# --- pure pieces against naive references ------------------------------------------------------------


def test_mutual_nn_matches_brute_force():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 16)).astype(np.float32)
    b = np.concatenate([a[:200] + rng.normal(0, 0.3, (200, 16)), rng.normal(size=(5000, 16))]).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    i1, i2, cos = mutual_nn(a, b, 0.3)
    S = a.astype(np.float64) @ b.T.astype(np.float64)
    ref = [(i, int(S[i].argmax())) for i in range(len(a))
           if int(S[:, S[i].argmax()].argmax()) == i and S[i].max() > 0.3]
    assert list(zip(i1.tolist(), i2.tolist())) == ref and len(ref) > 150
    np.testing.assert_allclose(cos, [S[i, j] for i, j in ref], atol=1e-5)


def test_mutual_nn_equals_two_sided_argmax_with_duplicates_across_blocks():
    """The one-product mutual check equals the two-sided argmax definition, also when the map
    holds exact duplicates (overlapping store blocks) spread over several similarity blocks."""
    rng = np.random.default_rng(5)
    b0 = rng.normal(size=(3000, 8)).astype(np.float32)
    b = np.concatenate([b0, b0[::-1], b0[:500]])  # 6500 rows: duplicates in other blocks
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    a = b0[rng.choice(3000, 400, replace=False)] + rng.normal(0, 0.2, (400, 8)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    i1, i2, cos = mutual_nn(a, b, 0.2)
    S = a @ b.T  # float32 like mutual_nn: exact duplicates tie exactly
    ref = [(i, int(S[i].argmax())) for i in range(len(a))
           if int(S[:, S[i].argmax()].argmax()) == i and S[i].max() > 0.2]
    assert list(zip(i1.tolist(), i2.tolist())) == ref and len(ref) > 100
    assert all(j < 3000 for _, j in ref)  # the lowest of the duplicates
    np.testing.assert_allclose(cos, [S[i, j] for i, j in ref], atol=1e-5)


def test_ransac_similarity_recovers_model_and_respects_constraints():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 400, 200) + 1j * rng.uniform(0, 300, 200)
    q, t = 1.03 * np.exp(1j * math.radians(12.0)), 50 - 20j
    dst = q * src + t + rng.normal(0, 0.5, 200) + 1j * rng.normal(0, 0.5, 200)
    dst[120:] = rng.uniform(0, 500, 80) + 1j * rng.uniform(0, 500, 80)  # 40 % outliers
    fit = ransac_similarity(src, dst, 3.0, (0.95, 1.1), 0.0, 20.0)
    assert fit is not None and abs(fit.q - q) < 0.005 and abs(fit.t - t) < 1.5
    assert fit.inliers[:120].mean() > 0.97 and fit.inliers[120:].mean() < 0.1
    assert ransac_similarity(src, dst, 3.0, (0.95, 1.1), 90.0, 20.0) is None or \
        ransac_similarity(src, dst, 3.0, (0.95, 1.1), 90.0, 20.0).n < 10  # the true fit is outside the range


def test_turned_maps_points_like_its_image():
    img = np.zeros((60, 90, 3), np.uint8)
    img[10:13, 70:73] = 255  # a dot centred at pixel-centre coords (71.5, 11.5)
    valid = np.ones((60, 90), bool)
    r, off, canvas, _ = _turned(img, valid, 37.0)
    z = r * complex(71.5, 11.5) + off
    ys, xs = np.nonzero(canvas[..., 0] > 100)
    assert abs(xs.mean() + 0.5 - z.real) < 0.6 and abs(ys.mean() + 0.5 - z.imag) < 0.6
    assert _angles(0.0, 180.0, 30.0)[0] == [30.0 * k for k in range(12)]
    assert _angles(90.0, 3.0, 30.0) == ([90.0], 6.0)


# --- real imagery ---------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["turku", "aerovloc"])
@pytest.mark.parametrize("east,north,up,scale,heading_up", [
    (23.4, -17.8, 37.0, 1.04, True),    # heading unknown: the whole circle
    (-31.0, 12.5, 250.0, 0.97, True),
    (12.0, 28.0, 3.0, 1.02, False),     # north-up patch, heading known to +-5 deg
])
def test_recovers_known_offset_heading_scale_after_appearance_change(reg, where, east, north, up, scale, heading_up):
    gmap = _open({"turku": TURKU, "aerovloc": AERO / "map"}[where])
    patch, mrgb, mpp, mvalid = _case(gmap, east, north, up, scale, seed=4, heading_up=heading_up)
    prior = None if heading_up else 0.0
    r = reg.register(patch, mrgb, mpp, prior, 180.0 if heading_up else 5.0, 0.06, map_valid=mvalid)
    assert r.verified, r
    assert math.hypot(r.east_m - east, r.north_m - north) < 1.5, r
    assert abs((r.heading_deg - up + 180) % 360 - 180) < 1.0, r
    assert abs(r.scale - scale) < 0.015, r
    assert 0.9 <= r.accuracy_m < 3.0 and r.inliers >= 15


def _aerovloc_photo(mpp: float = 0.25):
    if not (AERO / "query" / "aerovloc_q0.jpg").is_file():
        pytest.skip(f"real imagery {AERO / 'query'} is not present (../shared/data)")
    return aerovloc_patch(AERO, mpp)  # the benchmark's loader: the photo north-up at ~mpp, and its truth


@pytest.mark.parametrize("heading", ["known", "unknown"])
def test_real_aerovloc_photo_registers_within_3_m(reg, heading):
    """The autumn aerial photo against its summer satellite map, 150 m off the crop centre."""
    gmap = _open(AERO / "map")
    patch, lat, lon = _aerovloc_photo()
    clat, clon = geo.offset_latlon(lat, lon, -110.0, 60.0)
    mrgb, mvalid = gmap.read_crop(clat, clon, 600.0, round(600.0 / 0.338))
    p, prior, tol = (patch, None, 3.0) if heading == "known" else (replace(patch, heading_deg=None), None, 180.0)
    r = reg.register(p, mrgb, 600.0 / mrgb.shape[1], prior, tol, 0.03, map_valid=mvalid)
    glat, glon = geo.offset_latlon(clat, clon, r.east_m, r.north_m)
    err = float(geo.haversine_m(glat, glon, lat, lon))
    assert r.verified, r
    assert err < 3.0, (err, r)
    assert abs((r.heading_deg + 180) % 360 - 180) < 3.0, r  # truth: north-up photo, heading 0


def test_wrong_places_are_never_verified(reg):
    """Real patches against real crops 300-450 m away (several places, heading unknown and known)."""
    tried = 0
    # crops >= half on data, none of them holding any of the patch's ground (radius 106 m)
    for where, places in (("turku", [(-250.0, 200.0), (250.0, 200.0), (200.0, 300.0)]),
                          ("aerovloc", [(330.0, 0.0), (450.0, 0.0)])):
        gmap = _open({"turku": TURKU, "aerovloc": AERO / "map"}[where])
        lat0, lon0 = _centre(gmap)
        for k, (de, dn) in enumerate(places):
            img, valid = gmap.read_crop(lat0, lon0, 150.0, 300, yaw_deg=40.0 * k)
            patch = GroundPatch(appearance(img, k), valid, 0.5, None, (0.0, 0.0))
            clat, clon = geo.offset_latlon(lat0, lon0, de, dn)
            mrgb, mvalid = gmap.read_crop(clat, clon, 300.0, 600)
            if mvalid.mean() < 0.5:
                continue
            for p, prior, tol in ((patch, None, 180.0), (replace(patch, heading_deg=0.0), 40.0 * k, 5.0)):
                r = reg.register(p, mrgb, 0.5, prior, tol, 0.05, map_valid=mvalid)
                assert not r.verified, (where, de, dn, r)
                assert r.accuracy_m == float("inf")
                tried += 1
    assert tried == 10  # every place is on data: none skipped


def test_register_keypoints_agrees_with_register(reg):
    """Stored map features of a larger area, re-expressed in a virtual crop's pixel coords, give
    the same registration as the crop itself (the contract H6's map-feature store relies on)."""
    gmap = _open(TURKU)
    patch, mrgb, mpp, mvalid = _case(gmap, 20.0, -15.0, 0.0, 1.0, seed=2, heading_up=False)
    direct = reg.register(patch, mrgb, mpp, 0.0, 5.0, 0.05, map_valid=mvalid)
    lat0, lon0 = _centre(gmap)
    big, bvalid = gmap.read_crop(lat0, lon0, 500.0, 1000)  # same m/px, larger: crop sits at +70 px
    kp = reg.extractor.extract(big, bvalid, max_kpts=32768)
    shift = (1000 - mrgb.shape[1]) / 2
    inside = ((kp.xy >= shift) & (kp.xy < 1000 - shift)).all(axis=1)
    stored = Keypoints(kp.xy[inside] - np.float32(shift), kp.desc[inside], kp.score[inside])
    via = reg.register_keypoints(patch, stored, 0.5, mrgb.shape[:2], 0.0, 5.0, 0.05)
    assert direct.verified and via.verified, (direct, via)
    assert math.hypot(via.east_m - 20.0, via.north_m + 15.0) < 1.5, via
    assert math.hypot(via.east_m - direct.east_m, via.north_m - direct.north_m) < 1.0
    with pytest.raises(SkylocError, match="shapes"):
        reg.register_keypoints(patch, Keypoints(kp.xy, kp.desc[:, :10], kp.score), 0.5, (600, 600))


def test_registrar_needs_its_model(tmp_path: Path):
    with pytest.raises(SkylocError, match="export matcher"):
        make_registrar("learned")
    with pytest.raises(SkylocError, match="does not exist"):
        make_registrar("xfeat", onnx=str(tmp_path / "nope.onnx"))
