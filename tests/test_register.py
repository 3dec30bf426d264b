"""Map registration: pure pieces against naive references, recovery of a known offset / heading /
scale on real map crops with photometric changes, integrity (featureless and wrong places are
never verified) and the real cross-season aerovloc pair."""
from __future__ import annotations

import functools
import math

import cv2
import numpy as np
import pytest

from skyloc.core import geo
from skyloc.core.errors import SkylocError
from skyloc.runtime.localize.rectify import GroundPatch
from skyloc.runtime.register.base import gradient_magnitude, parabola_vertex, second_peak, subpixel_peak
from real_data import AERO, TURKU, open_real_map
from skyloc.benchmarks.flight_photo import aerovloc_patch as photo_patch
from skyloc.runtime.register.registry import make_registrar

_open = open_real_map


def _photometric(img: np.ndarray, seed: int, blur: float = 1.0, noise: float = 0.03) -> np.ndarray:
    """Gamma, contrast, brightness, blur and noise: a different day, sensor and exposure."""
    rng = np.random.default_rng(seed)
    x = img.astype(np.float32) / 255
    x = x ** 1.3 * 0.75 + 0.08
    x = cv2.GaussianBlur(x, (0, 0), blur) + rng.normal(0, noise, x.shape)
    return np.clip(x * 255, 0, 255).astype(np.uint8)


# --- pure pieces --------------------------------------------------------------------------------


def test_gradient_magnitude_matches_naive_sobel():
    rng = np.random.default_rng(0)
    g = rng.uniform(0, 255, (20, 24)).astype(np.float32)
    got = gradient_magnitude(g, sigma_px=0.0)
    ref = np.zeros_like(g)
    k = np.array([1.0, 2.0, 1.0])
    for y in range(1, 19):
        for x in range(1, 23):
            win = g[y - 1:y + 2, x - 1:x + 2].astype(np.float64)
            gx = float(k @ (win[:, 2] - win[:, 0]))
            gy = float(k @ (win[2, :] - win[0, :]))
            ref[y, x] = math.hypot(gx, gy)
    np.testing.assert_allclose(got[1:-1, 1:-1], ref[1:-1, 1:-1], rtol=1e-4, atol=1e-3)


def test_subpixel_peak_recovers_quadratic_vertex():
    yy, xx = np.mgrid[0:9, 0:11].astype(np.float64)
    x0, y0 = 5.3, 3.8
    res = 1.0 - 0.02 * (xx - x0) ** 2 - 0.05 * (yy - y0) ** 2
    y, x = np.unravel_index(np.argmax(res), res.shape)
    dx, dy, cx, cy = subpixel_peak(res, int(x), int(y))
    assert x + dx == pytest.approx(x0, abs=1e-9) and y + dy == pytest.approx(y0, abs=1e-9)
    assert cx == pytest.approx(-0.04) and cy == pytest.approx(-0.10)
    assert subpixel_peak(res, 0, int(y))[0] == 0.0  # border: no neighbour, no shift
    v = 1.0 - (np.arange(7) - 2.7) ** 2
    assert 2 + parabola_vertex(v, 2) == pytest.approx(2.5)  # true 2.7: clipped to half a step
    assert 3 + parabola_vertex(v, 3) == pytest.approx(2.7)


def test_second_peak_matches_brute_force_local_maxima():
    rng = np.random.default_rng(1)
    res = cv2.GaussianBlur(rng.normal(0, 1, (40, 50)).astype(np.float32), (0, 0), 2.0)
    y, x = np.unravel_index(np.argmax(res), res.shape)
    r = 6.0
    best = -1.0
    for j in range(40):
        for i in range(50):
            if (i - x) ** 2 + (j - y) ** 2 <= r * r:
                continue
            nb = res[max(0, j - 2):j + 3, max(0, i - 2):i + 3]
            if res[j, i] >= nb.max():
                best = max(best, float(res[j, i]))
    assert second_peak(res, int(x), int(y), r) == pytest.approx(best)


# --- registration on real map crops -------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _centre(gmap) -> tuple[float, float]:
    """Centre of a 340 m square of the map that is all data (the Turku mosaic has holes)."""
    g = gmap.grid(340.0, 20.0)
    assert len(g), "no 340 m square of data in the map"
    return float(g[len(g) // 2][0]), float(g[len(g) // 2][1])


def _case(gmap, east: float, north: float, up_deg: float, scale: float, seed: int, side_m=120.0, px=160,
          heading_up: bool = True, crop_m: float = 240.0, map_mpp: float = 1.0, blur=1.0, noise=0.03):
    """A patch of the map seen with its up axis at up_deg, `scale` x larger on the ground than it
    claims, centred (east, north) metres from the centre of a north-up map crop."""
    lat0, lon0 = _centre(gmap)
    plat, plon = geo.offset_latlon(lat0, lon0, east, north)
    img, valid = gmap.read_crop(plat, plon, side_m * scale, px, yaw_deg=up_deg)
    assert valid.all()
    patch = GroundPatch(_photometric(img, seed, blur, noise), valid, side_m / px, None if heading_up else 0.0, (0.0, 0.0))
    mrgb, mvalid = gmap.read_crop(lat0, lon0, crop_m, round(crop_m / map_mpp))
    return patch, mrgb, crop_m / mrgb.shape[1], mvalid


# narrow 1: every rotation x scale of the +-6 deg range; 2.5: the two-pass search (rotations every
# 2.5 deg at the middle scale, then the fine grid around the best)
@pytest.mark.parametrize("narrow", [1.0, 2.5])
@pytest.mark.parametrize("east,north,up,scale", [(23.4, -17.8, 37.0, 1.04), (-31.0, 12.5, 250.0, 0.97)])
def test_ncc_recovers_offset_heading_scale_on_real_map(east, north, up, scale, narrow):
    gmap = _open(TURKU)
    patch, mrgb, mpp, mvalid = _case(gmap, east, north, up, scale, seed=3)
    reg = make_registrar("ncc", narrow_step_factor=narrow).register(patch, mrgb, mpp, up + 4.0, 6.0, 0.06,
                                                                    map_valid=mvalid)
    assert reg.verified, reg
    assert math.hypot(reg.east_m - east, reg.north_m - north) < 1.5, reg
    assert abs((reg.heading_deg - up + 180) % 360 - 180) < 1.0, reg
    assert abs(reg.scale - scale) < 0.015, reg
    assert 0.5 < reg.accuracy_m < 5.0


def test_ncc_unknown_heading_searches_the_circle():
    gmap = _open(TURKU)
    patch, mrgb, mpp, mvalid = _case(gmap, 10.0, 20.0, 133.0, 1.0, seed=4)
    reg = make_registrar("ncc").register(patch, mrgb, mpp, None, 180.0, 0.0, map_valid=mvalid)
    assert reg.verified, reg
    assert math.hypot(reg.east_m - 10.0, reg.north_m - 20.0) < 1.5, reg
    assert abs((reg.heading_deg - 133.0 + 180) % 360 - 180) < 1.0, reg


def test_north_up_patch_reports_residual_on_top_of_its_heading():
    gmap = _open(TURKU)
    # north-up patch (heading_deg 0) whose true up axis is 2 deg off: heading = 0 + residual
    patch, mrgb, mpp, mvalid = _case(gmap, -8.0, 5.0, 2.0, 1.0, seed=5, heading_up=False)
    reg = make_registrar("ncc").register(patch, mrgb, mpp, 170.0, 4.0, 0.03, map_valid=mvalid)
    assert reg.verified and abs(reg.heading_deg - 2.0) < 0.7, reg
    assert math.hypot(reg.east_m + 8.0, reg.north_m - 5.0) < 1.5, reg


def test_sift_recovers_offset_heading_scale_on_real_map():
    # Milder changes than the NCC tests: with blur 1 px and 3 % noise SIFT / ORB keep only ~10
    # ratio-test matches on this patch and (rightly) refuse to verify; NCC is the robust default.
    gmap = _open(TURKU)
    patch, mrgb, mpp, mvalid = _case(gmap, -14.0, 9.0, 71.0, 1.05, seed=6, px=240, map_mpp=0.5,
                                     blur=0.5, noise=0.01)
    reg = make_registrar("sift").register(patch, mrgb, mpp, None, 180.0, 0.1, map_valid=mvalid)
    assert reg.verified, reg
    assert math.hypot(reg.east_m + 14.0, reg.north_m - 9.0) < 1.5, reg
    assert abs((reg.heading_deg - 71.0 + 180) % 360 - 180) < 1.0, reg
    assert abs(reg.scale - 1.05) < 0.02, reg


# --- integrity --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ncc", "sift", "orb"])
@pytest.mark.parametrize("kind", ["black", "flat-noise"])
def test_featureless_patch_is_never_verified(name, kind):
    gmap = _open(TURKU)
    _, mrgb, mpp, mvalid = _case(gmap, 0.0, 0.0, 0.0, 1.0, seed=7)
    rng = np.random.default_rng(0)
    img = np.zeros((160, 160, 3), np.uint8) if kind == "black" else \
        np.clip(128 + rng.normal(0, 2, (160, 160, 3)), 0, 255).astype(np.uint8)
    patch = GroundPatch(img, np.ones((160, 160), bool), 0.75, 0.0, (0.0, 0.0))
    reg = make_registrar(name).register(patch, mrgb, mpp, None, 5.0, 0.05, map_valid=mvalid)
    assert not reg.verified, reg
    assert reg.reason


@pytest.mark.parametrize("where", [TURKU, AERO / "map"])
def test_wrong_place_is_not_verified(where):
    """Patches of other places of the same map (150-450 m away, fields and roofs alike) must not
    verify against the map crop: the integrity half of the thresholds."""
    gmap = _open(where)
    lat0, lon0 = _centre(gmap)
    mrgb, mvalid = gmap.read_crop(lat0, lon0, 240.0, 240)
    g = gmap.grid(130.0, 30.0)
    d = np.asarray(geo.haversine_m(g[:, 0], g[:, 1], lat0, lon0))
    far = g[(d > 150) & (d < 450)]
    assert len(far) >= 8
    reg = make_registrar("ncc")
    for k, (plat, plon) in enumerate(far[np.linspace(0, len(far) - 1, 6).astype(int)]):
        img, valid = gmap.read_crop(plat, plon, 120.0, 160)
        patch = GroundPatch(_photometric(img, k), valid, 0.75, 0.0, (0.0, 0.0))
        r = reg.register(patch, mrgb, 1.0, None, 4.0, 0.04, map_valid=mvalid)
        assert not r.verified, (k, r)


def test_bad_inputs_are_refused():
    img = np.zeros((32, 32, 3), np.uint8)
    patch = GroundPatch(img, np.ones((32, 32), bool), float("nan"), 0.0, (0.0, 0.0))
    with pytest.raises(SkylocError, match="patch mpp"):
        make_registrar("ncc").register(patch, np.zeros((64, 64, 3), np.uint8), 1.0)
    patch = GroundPatch(img, np.ones((32, 32), bool), 1.0, 0.0, (0.0, 0.0))
    with pytest.raises(SkylocError, match="heading tolerance"):
        make_registrar("ncc").register(patch, np.zeros((64, 64, 3), np.uint8), 1.0, None, float("nan"))
    with pytest.raises(SkylocError, match="unknown option"):
        make_registrar("ncc", work_mp=1.0)
    with pytest.raises(SkylocError, match="unknown registrar"):
        make_registrar("magic")


def test_lightglue_plugin_names_the_missing_onnx_file(tmp_path):
    missing = tmp_path / "aliked-n16.onnx"
    with pytest.raises(SkylocError, match="aliked-n16.onnx"):
        make_registrar("lightglue", extractor_onnx=str(missing), matcher_onnx=str(tmp_path / "lg.onnx"))
    with pytest.raises(SkylocError, match="matcher_onnx"):
        (tmp_path / "x.onnx").write_bytes(b"")
        make_registrar("aliked", extractor_onnx=str(tmp_path / "x.onnx"))


# --- the real cross-season pair ---------------------------------------------------------------


def aerovloc_patch(mpp: float = 0.5) -> tuple[GroundPatch, float, float]:
    """The real photo as a north-up ground patch (it is north-up at 0.065 m/px) and its truth."""
    if not (AERO / "query" / "aerovloc_q0.jpg").is_file() or not (AERO / "map" / "map.csv").is_file():
        pytest.skip(f"{AERO} not present")
    return photo_patch(AERO, mpp)


def test_aerovloc_real_pair_within_10_m():
    patch, lat, lon = aerovloc_patch()
    gmap = _open(AERO / "map")
    # the start prior: a 300 m radius around a point 120 m off the truth (the truth stays inside)
    clat, clon = geo.offset_latlon(lat, lon, -90.0, 80.0)
    mrgb, mvalid = gmap.read_crop(clat, clon, 600.0, 600)
    reg = make_registrar("ncc").register(patch, mrgb, 1.0, None, 3.0, 0.03, map_valid=mvalid)
    glat, glon = geo.offset_latlon(clat, clon, reg.east_m, reg.north_m)
    err = geo.haversine_m(glat, glon, lat, lon)
    assert reg.verified, reg
    assert err < 10.0, (err, reg)
