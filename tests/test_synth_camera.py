"""skyloc.synth.camera / render: spiral geometry, projection, ground sampling distance."""
from __future__ import annotations

import math

import numpy as np
import pytest

from skyloc.core import geo
from skyloc.runtime.maps.mosaic import TiledMap
from skyloc.synth.camera import Camera, SpiralConfig, look_at, spiral_cameras, spiral_extent_m
from skyloc.synth.render import render_view

LAT0, LON0 = 46.95, 7.30


def dot_map(dots_m: list[tuple[float, float]], size_m: float = 240.0, mpp: float = 0.5, r_m: float = 1.5) -> TiledMap:
    """Dark map with bright discs at (east, north) metres from (LAT0, LON0)."""
    n = int(size_m / mpp)
    yy, xx = np.mgrid[0:n, 0:n]
    e = (xx + 0.5) * mpp - size_m / 2
    nn = size_m / 2 - (yy + 0.5) * mpp
    img = np.full((n, n, 3), 30, np.uint8)
    for de, dn in dots_m:
        img[np.hypot(e - de, nn - dn) <= r_m] = 250
    return TiledMap.from_array(img, *geo.corners_for_centre(LAT0, LON0, size_m, size_m))


def bright_centroid(rgb: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """(u, v) of the brightness-weighted centroid of the bright pixels, pixel centres at i + 0.5."""
    w = np.clip(rgb[..., 0].astype(float) - 60, 0, None)
    if mask is not None:
        w = w * mask
    v, u = np.indices(w.shape)
    return float((w * (u + 0.5)).sum() / w.sum()), float((w * (v + 0.5)).sum() / w.sum())


@pytest.mark.parametrize("cfg,size", [(SpiralConfig(), 64), (SpiralConfig(scale=0.3, turns=2.0), 65),
                                      (SpiralConfig(pitch_start_deg=45, pitch_end_deg=80, fov_deg=70), 128),
                                      (SpiralConfig(radius_start_m=150, radius_end_m=40, scale=0.5), 48)])
def test_target_projects_to_image_centre_for_every_view(cfg, size):
    for bearing in (0.0, 123.0, 271.5):
        for cam in spiral_cameras(cfg, 9, size, start_bearing_deg=bearing, target_e=12.0, target_n=-7.0):
            u, v, front = cam.project(12.0, -7.0)
            assert front and abs(u - size / 2) < 1e-6 and abs(v - size / 2) < 1e-6


def test_rendered_target_lands_on_image_centre():
    m = dot_map([(0.0, 0.0)])
    cfg = SpiralConfig(scale=0.3)
    cams = spiral_cameras(cfg, 6, 64, start_bearing_deg=40.0)
    assert spiral_extent_m(cfg, 6) < 120  # every view stays on the 240 m map
    for cam in cams:
        rgb, valid = render_view(m, cam, LAT0, LON0)
        assert valid.all()
        u, v = bright_centroid(rgb)
        assert abs(u - 32) < 1.0 and abs(v - 32) < 1.0, (cam, u, v)


def test_spiral_descends_and_circles_the_target():
    cfg = SpiralConfig(altitude_start_m=256, altitude_end_m=121.5, pitch_start_deg=50, pitch_end_deg=70, turns=1.5)
    n = 7
    cams = spiral_cameras(cfg, n, 64, start_bearing_deg=30.0)
    alts = np.array([c.alt_m for c in cams])
    dist = np.array([math.hypot(c.east_m, c.north_m) for c in cams])
    np.testing.assert_allclose(alts, np.linspace(256, 121.5, n))
    np.testing.assert_allclose(dist, alts / np.tan(np.radians(np.linspace(50, 70, n))))
    assert np.all(np.diff(dist) < 0)  # first = farthest and highest
    for i, c in enumerate(cams):
        bearing = math.degrees(math.atan2(c.east_m, c.north_m)) % 360
        assert (bearing - (30 + 540 * i / (n - 1))) % 360 == pytest.approx(0, abs=1e-6) or \
            (bearing - (30 + 540 * i / (n - 1))) % 360 == pytest.approx(360, abs=1e-6)
        assert (c.yaw_deg - bearing) % 360 == pytest.approx(180, abs=1e-6)  # looking back at the target
        assert c.pitch_deg == pytest.approx(math.degrees(math.atan2(c.alt_m, dist[i])))
    # Explicit radii replace the pitches; the camera still aims at the target.
    cams = spiral_cameras(SpiralConfig(radius_start_m=200, radius_end_m=50, scale=0.5), 4, 32)
    dist = [math.hypot(c.east_m, c.north_m) for c in cams]
    assert dist == pytest.approx([100.0, 75.0, 50.0, 25.0])
    assert cams[0].pitch_deg == pytest.approx(math.degrees(math.atan2(128.0, 100.0)))
    half = spiral_cameras(SpiralConfig(scale=0.5), 5, 32)
    full = spiral_cameras(SpiralConfig(), 5, 32)
    assert [h.alt_m * 2 for h in half] == pytest.approx([f.alt_m for f in full])


def test_look_at_rotation_against_independent_vectors():
    cam = look_at(-40.0, 25.0, 90.0, 10.0, -5.0, 55.0, 80, 60)
    fwd = np.array([10.0 + 40.0, -5.0 - 25.0, -90.0])
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    R = cam.rotation()
    np.testing.assert_allclose(R[2], fwd, atol=1e-12)
    np.testing.assert_allclose(R[0], right, atol=1e-12)  # no roll: the right axis is horizontal
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    # Ray casting and projection are inverses.
    rng = np.random.default_rng(0)
    u, v = rng.uniform(0, 80, 50), rng.uniform(0, 60, 50)
    e, n, hit = cam.ground_points(u, v)
    assert hit.all()
    u2, v2, front = cam.project(e, n)
    assert front.all()
    np.testing.assert_allclose(u2, u, atol=1e-8)
    np.testing.assert_allclose(v2, v, atol=1e-8)


def test_image_up_is_the_heading():
    for yaw, (de, dn) in ((0.0, (0.0, 10.0)), (90.0, (10.0, 0.0)), (225.0, (-7.0, -7.0))):
        cam = Camera(0.0, 0.0, 50.0, yaw, 90.0, 60.0, 64, 64)
        u, v, _ = cam.project(de, dn)
        assert u == pytest.approx(32.0, abs=1e-9) and v < 32.0
    cam = Camera(0.0, 0.0, 50.0, 0.0, 90.0, 60.0, 64, 64)
    u, v, _ = cam.project(10.0, 0.0)  # east is to the right when facing north
    assert u > 32.0 and v == pytest.approx(32.0, abs=1e-9)


def test_ground_sampling_distance_matches_altitude_and_fov():
    h, fov, w = 50.0, 60.0, 64
    gsd = 2 * h * math.tan(math.radians(fov / 2)) / w  # by hand: ground width / pixels
    cam = Camera(0.0, 0.0, h, 0.0, 90.0, fov, w, w)
    e, n, _ = cam.ground_points(np.array([31.5, 32.5, 32.0]), np.array([32.0, 32.0, 33.0]))
    assert math.hypot(e[1] - e[0], n[1] - n[0]) == pytest.approx(gsd, rel=1e-9)
    assert math.hypot(e[2] - (e[0] + e[1]) / 2, n[2] - n[0]) == pytest.approx(gsd, rel=1e-9)
    # In a rendered image two discs 30 m apart are 30 / gsd pixels apart.
    m = dot_map([(-15.0, 0.0), (15.0, 0.0)])
    rgb, valid = render_view(m, cam, LAT0, LON0)
    assert valid.all()
    left = np.zeros(rgb.shape[:2])
    left[:, :32] = 1
    ul, vl = bright_centroid(rgb, left)
    ur, vr = bright_centroid(rgb, 1 - left)
    assert ur - ul == pytest.approx(30.0 / gsd, abs=0.5)
    assert vl == pytest.approx(32.0, abs=0.5) and vr == pytest.approx(32.0, abs=0.5)
    # Oblique: at the image centre, across-track spacing is slant / f, along-track slant / (f sin pitch).
    p = 60.0
    cam = look_at(0.0, -h / math.tan(math.radians(p)), h, 0.0, 0.0, fov, w)
    f = (w / 2) / math.tan(math.radians(fov / 2))
    slant = h / math.sin(math.radians(p))
    e, n, _ = cam.ground_points(np.array([31.5, 32.5, 32.0, 32.0]), np.array([32.0, 32.0, 31.5, 32.5]))
    assert e[1] - e[0] == pytest.approx(slant / f, rel=1e-3)
    assert n[2] - n[3] == pytest.approx(slant / (f * math.sin(math.radians(p))), rel=1e-3)
