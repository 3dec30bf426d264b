"""skyloc.runtime.localize.rectify against an independent projection.

Frames are rendered by runtime.synth (its own ray casting, with a camera posed from scipy's Euler
rotation, not from runtime.pose), rectified with rectify(), and compared with the map crop
(GeoMap.read_crop) by sub-pixel phase correlation in the four quadrants of the patch, which
catches shift, scale and rotation errors. A deliberately wrong pose must fail the same check.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from skyloc.core import geo
from skyloc.runtime.pose.camera import CameraModel
from skyloc.core.errors import SkylocError
from skyloc.runtime.maps.mosaic import TiledMap
from skyloc.runtime.pose.frame_pose import FramePose
from skyloc.runtime.localize.rectify import (ground_coverage_m, pick_scale_level, rectify, rotate_patch, rotations,
                                    scale_candidates)
from skyloc.synth.camera import Camera
from skyloc.synth.render import render_view

LAT0, LON0 = 60.45, 22.27
MAP_M, MAP_MPP = 320.0, 0.25
W, H, HFOV = 320, 240, 60.0
MPP, SIDE = 0.5, 96  # the "tile GSD" of the check


@pytest.fixture(scope="module")
def gmap() -> TiledMap:
    """Textured map: smoothed noise at three scales (phase correlation needs texture everywhere)."""
    n = int(MAP_M / MAP_MPP)
    rng = np.random.default_rng(7)
    img = np.zeros((n, n, 3), np.float32)
    for sigma, amp in ((1.5, 0.5), (6.0, 1.0), (20.0, 1.5)):
        noise = cv2.GaussianBlur(rng.standard_normal((n, n, 3)).astype(np.float32), (0, 0), sigma)
        img += amp * noise / noise.std()
    img = np.clip(128 + 30 * img, 0, 255).astype(np.uint8)
    return TiledMap.from_array(img, *geo.corners_for_centre(LAT0, LON0, MAP_M, MAP_M))


def synth_camera(pose: FramePose, alt: float, yaw: float) -> Camera:
    """Independent camera: body->NED from scipy (intrinsic Z-Y-X), camera mounted looking along body
    +z tilted forward, image right = right wing; then NED -> ENU for runtime.synth."""
    r_bn = Rotation.from_euler("ZYX", [yaw, pose.pitch_deg, pose.roll_deg], degrees=True).as_matrix()
    t = math.radians(pose.camera_tilt_deg)
    fwd_ned = r_bn @ np.array([math.sin(t), 0.0, math.cos(t)])
    right_ned = r_bn @ np.array([0.0, 1.0, 0.0])
    enu = lambda v: np.array([v[1], v[0], -v[2]])  # noqa: E731
    return Camera.from_axes(0.0, 0.0, alt, enu(right_ned), enu(fwd_ned), HFOV, W, H)


def render(gmap: TiledMap, cam: Camera) -> np.ndarray:
    rgb, valid = render_view(gmap, cam, LAT0, LON0)
    assert valid.all()
    return rgb


def axis_ground_ne(cam: Camera) -> tuple[float, float]:
    e, n, hit = cam.ground_points(np.array(W / 2), np.array(H / 2))
    assert hit
    return float(n), float(e)


def quadrant_shifts(a: np.ndarray, b: np.ndarray) -> list[float]:
    """|shift| in px of each quadrant of a vs b (sub-pixel phase correlation)."""
    ga = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(np.float64)
    gb = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY).astype(np.float64)
    h = a.shape[0] // 2
    win = cv2.createHanningWindow((h, h), cv2.CV_64F)
    out = []
    for r in (0, h):
        for c in (0, h):
            (dx, dy), _ = cv2.phaseCorrelate(ga[r:r + h, c:c + h], gb[r:r + h, c:c + h], win)
            out.append(math.hypot(dx, dy))
    return out


def reference_crop(gmap: TiledMap, n: float, e: float, side: int = SIDE, mpp: float = MPP) -> np.ndarray:
    lat, lon = geo.local_m_to_latlon(e, n, LAT0, LON0)
    rgb, valid = gmap.read_crop(float(lat), float(lon), side * mpp, side)
    assert valid.all()
    return rgb


CASES = [  # altitude, roll, pitch, yaw, tilt
    (80.0, 0.0, 0.0, 0.0, 0.0),
    (80.0, 0.0, 0.0, 37.0, 0.0),
    (95.0, 0.0, 0.0, 200.0, 20.0),
    (80.0, 8.0, -5.0, 123.0, 10.0),
    (85.0, -6.0, 12.0, 300.0, 0.0),
    (110.0, 4.0, 3.0, 251.0, 15.0),
]


@pytest.mark.parametrize("alt,roll,pitch,yaw,tilt", CASES)
def test_rectified_frame_matches_map_crop(gmap, alt, roll, pitch, yaw, tilt):
    pose = FramePose(altitude_m=alt, roll_deg=roll, pitch_deg=pitch, yaw_deg=yaw, camera_tilt_deg=tilt)
    assert ground_coverage_m(CameraModel.from_hfov(HFOV, W, H), pose) >= SIDE * MPP  # case fits the frame
    cam = synth_camera(pose, alt, yaw)
    frame = render(gmap, cam)
    patch = rectify(frame, CameraModel.from_hfov(HFOV, W, H), pose, MPP, SIDE)
    n, e = axis_ground_ne(cam)
    # the patch centre is the optical-axis ground point, reported from the nadir point
    assert patch.ref_offset_m == pytest.approx((n, e), abs=1e-6)
    assert patch.heading_deg == pytest.approx(yaw)
    assert patch.valid.all()
    errs = quadrant_shifts(patch.image, reference_crop(gmap, n, e))
    assert max(errs) <= 1.0, errs

    # the same check fails for a pose 3 degrees off in yaw or 5 % off in altitude
    for wrong in (pose.with_(yaw_deg=yaw + 3.0), pose.with_(altitude_m=alt * 1.05)):
        bad = rectify(frame, CameraModel.from_hfov(HFOV, W, H), wrong, MPP, SIDE)
        assert max(quadrant_shifts(bad.image, reference_crop(gmap, n, e))) > 1.0


def test_lens_distortion_is_undone(gmap):
    """A frame distorted with OpenCV's model (built by inverting it with undistortPoints, 50 iterations)
    rectifies as well as the pinhole one; ignoring the distortion does not."""
    pose = FramePose(altitude_m=85.0, roll_deg=3.0, pitch_deg=-2.0, yaw_deg=65.0, camera_tilt_deg=5.0)
    cam = synth_camera(pose, 85.0, 65.0)
    pinhole = render(gmap, cam)
    model = CameraModel.from_hfov(HFOV, W, H)
    dist = (-0.4, 0.12, 0.001, -0.0005, 0.0)
    uu, vv = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    pts = np.stack([uu.ravel(), vv.ravel()], 1)[:, None, :]
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-10)
    und = cv2.undistortPoints(pts, model.K(), np.array(dist), R=None, P=model.K(), criteria=crit)[:, 0, :]
    mx = und[:, 0].reshape(H, W).astype(np.float32)
    my = und[:, 1].reshape(H, W).astype(np.float32)
    distorted = cv2.remap(pinhole, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    n, e = axis_ground_ne(cam)
    # a finer patch (0.25 m/px, about the frame's own GSD) so the distortion shows in pixels
    ref = reference_crop(gmap, n, e, 2 * SIDE, MPP / 2)
    lens = CameraModel(model.fx, model.fy, model.cx, model.cy, W, H, dist)
    good = rectify(distorted, lens, pose, MPP / 2, 2 * SIDE)
    assert max(quadrant_shifts(good.image, ref)) <= 1.0
    naive = rectify(distorted, model, pose, MPP / 2, 2 * SIDE)
    assert max(quadrant_shifts(naive.image, ref)) > 1.0


def test_frame_of_other_resolution_and_prefilter(gmap):
    """A 2x frame with a camera file for the 1x size rectifies the same (scaled_to + anti-alias)."""
    pose = FramePose(altitude_m=60.0, yaw_deg=10.0)
    cam2 = Camera.from_axes(0.0, 0.0, 60.0, *_level_axes(10.0), HFOV, 2 * W, 2 * H)
    frame = render(gmap, cam2)
    patch = rectify(frame, CameraModel.from_hfov(HFOV, W, H), pose, 1.0, 48)
    # level nadir camera: the axis ground point is the nadir point
    assert patch.ref_offset_m == pytest.approx((0.0, 0.0), abs=1e-9)
    assert max(quadrant_shifts(patch.image, reference_crop(gmap, 0.0, 0.0, 48, 1.0))) <= 1.0


def _level_axes(yaw: float) -> tuple[np.ndarray, np.ndarray]:
    y = math.radians(yaw)
    return np.array([math.cos(y), -math.sin(y), 0.0]), np.array([0.0, 0.0, -1.0])


def test_heading_up_patch_rotated_by_true_yaw_is_north_up(gmap):
    pose = FramePose(altitude_m=80.0, roll_deg=2.0, pitch_deg=4.0, yaw_deg=140.0, camera_tilt_deg=8.0)
    frame = render(gmap, synth_camera(pose, 80.0, 140.0))
    model = CameraModel.from_hfov(HFOV, W, H)
    north_up = rectify(frame, model, pose, MPP, SIDE)
    blind = rectify(frame, model, pose.with_(yaw_deg=None), MPP, SIDE)
    assert blind.heading_deg is None
    turned = rotate_patch(blind, 140.0)
    assert turned.heading_deg == pytest.approx(140.0)
    assert turned.ref_offset_m == pytest.approx(north_up.ref_offset_m, abs=1e-6)
    c = SIDE // 4  # the rotated corners are invalid: compare the centre
    assert turned.valid[c:-c, c:-c].all()
    assert max(quadrant_shifts(turned.image[c:-c, c:-c], north_up.image[c:-c, c:-c])) <= 1.0


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    x = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)[mask].astype(np.float64)
    y = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)[mask].astype(np.float64)
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / math.sqrt((x * x).sum() * (y * y).sum()))


@pytest.mark.parametrize("yaw", [0.0, 100.0, 213.0, 330.0, 22.0])
def test_rotation_search_recovers_heading_within_half_step(gmap, yaw):
    pose = FramePose(altitude_m=80.0, roll_deg=-3.0, pitch_deg=5.0, yaw_deg=yaw, camera_tilt_deg=5.0)
    cam = synth_camera(pose, 80.0, yaw)
    frame = render(gmap, cam)
    blind = rectify(frame, CameraModel.from_hfov(HFOV, W, H), pose.with_(yaw_deg=None), MPP, SIDE)
    cands = rotations(blind, 8)
    assert [p.heading_deg for p in cands] == pytest.approx([k * 45.0 for k in range(8)])
    ref = reference_crop(gmap, *axis_ground_ne(cam))
    scores = [ncc(p.image, ref, p.valid) for p in cands]
    best = cands[int(np.argmax(scores))].heading_deg
    diff = abs((best - yaw + 180.0) % 360.0 - 180.0)
    assert diff <= 22.5, (yaw, best, scores)


def test_ground_coverage_nadir_is_the_frame_height_and_rotation_free_is_smaller():
    cam = CameraModel.from_hfov(HFOV, W, H)
    # pixel centres 0..W-1 span (W - 1) / fx of the focal plane
    expect = 100.0 * (H - 1) / cam.fy
    assert ground_coverage_m(cam, FramePose(100.0, yaw_deg=0.0)) == pytest.approx(expect, rel=1e-9)
    # heading 90 turns the frame: the north-up square is bounded by the same short side
    assert ground_coverage_m(cam, FramePose(100.0, yaw_deg=90.0)) == pytest.approx(expect, rel=1e-9)
    at45 = ground_coverage_m(cam, FramePose(100.0, yaw_deg=45.0))
    circle = ground_coverage_m(cam, FramePose(100.0))  # heading unknown: inscribed circle
    assert circle == pytest.approx(expect / math.sqrt(2), rel=1e-9)
    assert circle <= at45 + 1e-9 < expect
    assert ground_coverage_m(cam, FramePose(200.0, yaw_deg=0.0)) == pytest.approx(2 * expect, rel=1e-9)


def test_ground_coverage_square_is_really_covered():
    """The reported square's border maps inside the frame; 3 % larger does not (tilted, rolled)."""
    from skyloc.runtime.localize.rectify import ground_to_frame, patch_ground_coords

    cam = CameraModel.from_hfov(HFOV, W, H)
    pose = FramePose(90.0, roll_deg=7.0, pitch_deg=-4.0, yaw_deg=33.0, camera_tilt_deg=18.0)
    cov = ground_coverage_m(cam, pose)
    centre = rectify(np.zeros((H, W, 3), np.uint8), cam, pose, 1.0, 4).ref_offset_m

    def inside(side: float) -> bool:
        n, e = patch_ground_coords(201, side / 200, centre)
        x, y, front = ground_to_frame(cam, pose, n, e)
        return bool((front & (x >= -1e-6) & (x <= W - 1 + 1e-6) & (y >= -1e-6) & (y <= H - 1 + 1e-6)).all())

    assert inside(cov * 0.999) and not inside(cov * 1.03)


def test_pick_scale_level():
    assert pick_scale_level(100.0, [50.0, 100.0, 200.0]) == 1
    assert pick_scale_level(99.0, [50.0, 100.0, 200.0]) == 0
    assert pick_scale_level(40.0, [50.0, 100.0]) is None
    assert pick_scale_level(500.0, [200.0, 50.0, 100.0]) == 0
    assert pick_scale_level(float("nan"), [50.0]) is None


def test_scale_candidates_match_the_true_altitude_level(gmap):
    """Unknown altitude: the candidate for the level the frame really covers equals the rectified
    patch at the true altitude."""
    pose = FramePose(altitude_m=80.0, yaw_deg=30.0, camera_tilt_deg=6.0)
    frame = render(gmap, synth_camera(pose, 80.0, 30.0))
    cam = CameraModel.from_hfov(HFOV, W, H)
    cov = ground_coverage_m(cam, pose)
    cands = scale_candidates(frame, cam, pose.with_(altitude_m=None), [cov / 2, cov, cov * 2], SIDE)
    assert [c.altitude_m for c in cands] == pytest.approx([40.0, 80.0, 160.0])
    true = rectify(frame, cam, pose, cov / SIDE, SIDE)
    mid = cands[1].patch
    assert mid.mpp == pytest.approx(cov / SIDE)
    assert mid.ref_offset_m == pytest.approx(true.ref_offset_m, rel=1e-9)
    assert np.abs(mid.image.astype(int) - true.image.astype(int)).max() <= 1


def test_gsd_gives_the_altitude():
    cam = CameraModel.from_hfov(HFOV, W, H)
    from skyloc.runtime.localize.rectify import altitude_for

    assert altitude_for(cam, FramePose(gsd_m=0.25)) == pytest.approx(0.25 * cam.fx)
    with pytest.raises(SkylocError, match="neither altitude nor gsd"):
        altitude_for(cam, FramePose())


def test_rejects_axis_beyond_limit_and_bad_frames():
    cam = CameraModel.from_hfov(HFOV, W, H)
    with pytest.raises(SkylocError, match="from nadir"):
        rectify(np.zeros((H, W, 3), np.uint8), cam, FramePose(100.0, pitch_deg=30.0, camera_tilt_deg=60.0), 1.0, 8)
    with pytest.raises(SkylocError, match="uint8"):
        rectify(np.zeros((H, W), np.uint8), cam, FramePose(100.0), 1.0, 8)
    with pytest.raises(SkylocError, match="aspect"):
        rectify(np.zeros((H, H, 3), np.uint8), cam, FramePose(100.0), 1.0, 8)


def test_homography_fast_path_equals_point_wise_path(gmap):
    """No distortion -> one warpPerspective; a negligible distortion forces the point-wise remap path."""
    pose = FramePose(altitude_m=90.0, roll_deg=5.0, pitch_deg=-3.0, yaw_deg=290.0, camera_tilt_deg=25.0)
    frame = render(gmap, synth_camera(pose, 90.0, 290.0))
    cam = CameraModel.from_hfov(HFOV, W, H)
    tiny = CameraModel(cam.fx, cam.fy, cam.cx, cam.cy, W, H, (1e-12, 0.0, 0.0, 0.0))
    a = rectify(frame, cam, pose, 0.6, 200)  # larger than the footprint: the valid masks matter too
    b = rectify(frame, tiny, pose, 0.6, 200)
    assert 0.2 < a.valid.mean() < 0.95
    assert (a.valid != b.valid).mean() < 0.005
    both = a.valid & b.valid
    assert np.abs(a.image[both].astype(int) - b.image[both].astype(int)).max() <= 2


def test_patch_reaching_past_the_horizon_is_invalid_there():
    """Far side of a strongly tilted view: ground points behind the camera must not fold back in."""
    cam = CameraModel.from_hfov(HFOV, W, H)
    pose = FramePose(altitude_m=50.0, camera_tilt_deg=70.0, yaw_deg=0.0)
    frame = np.full((H, W, 3), 200, np.uint8)
    p = rectify(frame, cam, pose, 2.0, 400)  # 800 m: well past the horizon behind and ahead
    rows = np.nonzero(p.valid.any(axis=1))[0]
    # the view (up to the horizon) starts at the near edge of the frame, 70 - vfov/2 from nadir; nothing
    # nearer or behind the aircraft (where the folded projection would land) is valid
    near = 50.0 * math.tan(math.radians(70.0) - math.atan((H - 1) / 2 / cam.fy))
    n_bottom = p.ref_offset_m[0] + ((400 - 1) / 2 - rows.max()) * 2.0
    assert n_bottom == pytest.approx(near, abs=2.5)
    assert rows.min() == 0  # the far side reaches the patch edge (the frame sees the horizon)
    assert p.valid.sum() > 1000 and (p.image[~p.valid] == 0).all()
