"""Flat-ground rectification: a camera frame -> a metric, north-up ground patch.

Ground model: a plane `altitude_m` below the aircraft (local NED, origin at the aircraft's nadir
point). The map from ground (north, east) to frame pixels is then a homography,
H = K R_ned->cam diag(1, 1, altitude) [n, e, 1] (plus OpenCV lens distortion when the camera has
it, applied point-wise), so every patch pixel is looked up in the frame with one remap.

The patch is centred on the ground point under the optical axis (the principal point's ray), not
the nadir point: that point is always in view, whatever the tilt, and is what retrieval and
registration localize. `GroundPatch.ref_offset_m` is (north, east) from the aircraft's nadir
point to the patch centre, in the patch's own frame, so

    aircraft (north, east) = patch-centre position - ref_offset_m   (both in the patch's frame;
    a north-up patch's frame is north/east, a heading-up patch's is rotated by the heading).

Orientation: north-up when a heading is known (`heading_deg` holds it); otherwise "heading-up"
(the patch is computed as if yaw were 0, so its top faces the unknown heading; heading_deg None).
`rotate_patch(p, a)` turns the content clockwise by a degrees: a heading-up patch rotated by the
true yaw is the north-up patch, and `rotations(p, n)` gives the n candidates of a heading search.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from skyloc.runtime.pose.camera import CameraModel
from skyloc.core.errors import SkylocError
from skyloc.runtime.pose.frame_pose import MAX_OFF_NADIR_DEG, FramePose, camera_to_ned

# Downscale the frame first when one patch pixel spans more than this many frame pixels, so the
# bilinear lookup does not alias (a 4000 px photo into a 0.5 m/px patch).
_PREFILTER_ABOVE = 1.5


@dataclass
class GroundPatch:
    image: np.ndarray  # (S, S, 3) uint8
    valid: np.ndarray  # (S, S) bool: the frame saw this ground
    mpp: float
    heading_deg: float | None  # yaw this patch is north-up for; None = heading-up, yaw unknown
    ref_offset_m: tuple[float, float]  # (north, east) nadir point -> patch centre, patch frame

    @property
    def side_m(self) -> float:
        return self.image.shape[0] * self.mpp


def altitude_for(camera: CameraModel, pose: FramePose) -> float:
    """The pose's altitude, or the one its gsd_m implies (gsd at the image centre, across the image)."""
    if pose.altitude_m is not None:
        return pose.altitude_m
    if pose.gsd_m is None:
        raise SkylocError("rectify: the pose has neither altitude nor gsd; give --altitude / --gsd or use "
                          "scale_candidates() to search the tile set's scale levels")
    axis = camera_to_ned(pose)[:, 2]
    # distance to the axis ground point is alt / cos(off-nadir); gsd across = distance / fx
    return pose.gsd_m * camera.fx * float(axis[2])


def _axis_ground(R: np.ndarray, altitude: float) -> tuple[float, float]:
    axis = R[:, 2]
    if axis[2] <= math.cos(math.radians(MAX_OFF_NADIR_DEG)):
        off = math.degrees(math.acos(max(-1.0, min(1.0, float(axis[2])))))
        raise SkylocError(f"rectify: the optical axis is {off:.0f} deg from nadir (limit {MAX_OFF_NADIR_DEG:g}); "
                          "check roll / pitch / tilt")
    t = altitude / axis[2]
    return float(t * axis[0]), float(t * axis[1])


def ground_to_frame(camera: CameraModel, pose: FramePose, north: np.ndarray, east: np.ndarray,
                    yaw_deg: float | None = None, altitude: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame pixel coords (x, y) of ground points (north, east metres from the nadir point) and
    whether each point is in front of the camera. Distortion applied when the camera has it."""
    R = camera_to_ned(pose, yaw_deg)
    h = altitude_for(camera, pose) if altitude is None else altitude
    pts = np.stack([np.asarray(north, np.float64), np.asarray(east, np.float64),
                    np.full(np.shape(north), h)], axis=-1)
    pc = pts @ R  # (R^T p) for row vectors: NED -> camera
    z = pc[..., 2]
    front = z > 1e-6 * h
    zs = np.where(front, z, 1.0)
    xn, yn = pc[..., 0] / zs, pc[..., 1] / zs
    if camera.dist:
        obj = np.stack([xn.ravel(), yn.ravel(), np.ones(xn.size)], axis=1)
        img, _ = cv2.projectPoints(obj, np.zeros(3), np.zeros(3), camera.K(), np.asarray(camera.dist))
        x, y = img[:, 0, 0].reshape(xn.shape), img[:, 0, 1].reshape(xn.shape)
    else:
        x, y = camera.fx * xn + camera.cx, camera.fy * yn + camera.cy
    return x, y, front


def patch_ground_coords(side_px: int, mpp: float, centre_ne: tuple[float, float]
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(north, east) of every patch pixel centre; patch up = north of the frame it is in."""
    c = (side_px - 1) / 2.0
    idx = (np.arange(side_px, dtype=np.float64) - c) * mpp
    east, south = np.meshgrid(idx, idx)
    return centre_ne[0] - south, centre_ne[1] + east


def rectify(frame_rgb: np.ndarray, camera: CameraModel, pose: FramePose, mpp: float, side_px: int,
            heading_deg: float | None = None) -> GroundPatch:
    """Warp a frame onto the flat ground: a side_px square at mpp metres per pixel (see module doc).

    heading_deg: yaw to make the patch north-up with (default the pose's yaw; both None -> heading-up).
    A frame of another resolution than the camera's uses camera.scaled_to (same aspect required).
    """
    if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or frame_rgb.dtype != np.uint8:
        raise SkylocError(f"rectify: expected an HxWx3 uint8 frame, got {frame_rgb.shape} {frame_rgb.dtype}")
    if not (math.isfinite(mpp) and mpp > 0) or int(side_px) < 2:
        raise SkylocError(f"rectify: mpp ({mpp}) must be > 0 and side_px ({side_px}) >= 2")
    side_px = int(side_px)
    cam = camera.scaled_to(frame_rgb.shape[1], frame_rgb.shape[0])
    yaw = heading_deg if heading_deg is not None else pose.yaw_deg
    if yaw is not None and not math.isfinite(yaw):
        raise SkylocError(f"rectify: heading {yaw} is not finite")
    h = altitude_for(cam, pose)
    R = camera_to_ned(pose, yaw if yaw is not None else 0.0)
    centre = _axis_ground(R, h)

    frame = frame_rgb
    yaw0 = yaw if yaw is not None else 0.0
    # capped so the reduced frame keeps >= 32 px a side (its aspect then stays within 2 %)
    scale = min(_frame_px_per_patch_px(cam, pose, centre, mpp, yaw0, h), min(cam.width, cam.height) / 32.0)
    if scale > _PREFILTER_ABOVE:
        w = max(2, int(round(cam.width / scale)))
        hh = max(2, int(round(cam.height * w / cam.width)))
        frame = cv2.resize(frame_rgb, (w, hh), interpolation=cv2.INTER_AREA)
        cam = cam.scaled_to(w, hh)

    H = None if cam.dist else patch_homography(cam, pose, side_px, mpp, centre, yaw0, h)
    if H is not None:
        # one projective warp (the fast path); a float mask warped the same way is 1 exactly where
        # the bilinear sample lies wholly inside the frame
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        img = cv2.warpPerspective(frame, H, (side_px, side_px), flags=flags, borderMode=cv2.BORDER_CONSTANT)
        cover = cv2.warpPerspective(np.ones(frame.shape[:2], np.float32), H, (side_px, side_px), flags=flags,
                                    borderMode=cv2.BORDER_CONSTANT)
        valid = cover > 0.999
    else:
        north, east = patch_ground_coords(side_px, mpp, centre)
        x, y, front = ground_to_frame(cam, pose, north, east, yaw0, h)
        valid = front & (x >= 0) & (x <= cam.width - 1) & (y >= 0) & (y <= cam.height - 1)
        mx = np.where(valid, x, -10.0).astype(np.float32)
        my = np.where(valid, y, -10.0).astype(np.float32)
        img = cv2.remap(frame, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    img[~valid] = 0
    return GroundPatch(img, valid, float(mpp), None if yaw is None else float(yaw) % 360.0, centre)


def patch_homography(cam: CameraModel, pose: FramePose, side_px: int, mpp: float, centre: tuple[float, float],
                     yaw: float, h: float) -> np.ndarray | None:
    """3x3 H taking patch pixels (x right, y down, centres at integers) to frame pixels of a camera
    without distortion: K R_ned->cam diag(1, 1, h) A, A = patch pixel -> (north, east, 1).
    None when part of the patch lies behind the camera (beyond the horizon): the projective warp
    would fold it back into the picture, so the point-wise path must mark it invalid."""
    c = (side_px - 1) / 2.0
    A = np.array([[0.0, -mpp, centre[0] + c * mpp], [mpp, 0.0, centre[1] - c * mpp], [0.0, 0.0, 1.0]])
    H = cam.K() @ camera_to_ned(pose, yaw).T @ np.diag([1.0, 1.0, h]) @ A
    corners = np.array([[0, 0, 1], [side_px - 1, 0, 1], [0, side_px - 1, 1], [side_px - 1, side_px - 1, 1]], float)
    # the depth is affine in patch pixels: positive at the corners -> positive everywhere
    if np.any((corners @ H.T)[:, 2] <= 1e-9 * h):
        return None
    return H / H[2, 2]


def _frame_px_per_patch_px(cam: CameraModel, pose: FramePose, centre: tuple[float, float], mpp: float,
                           yaw: float, h: float) -> float:
    """Geometric-mean frame pixels spanned by one patch pixel at the patch centre."""
    n = np.array([centre[0], centre[0] + mpp, centre[0]])
    e = np.array([centre[1], centre[1], centre[1] + mpp])
    x, y, _ = ground_to_frame(cam, pose, n, e, yaw, h)
    det = (x[1] - x[0]) * (y[2] - y[0]) - (x[2] - x[0]) * (y[1] - y[0])
    return math.sqrt(abs(float(det)))


def _rot_ne(n: float, e: float, angle_deg: float) -> tuple[float, float]:
    """(north, east) vector turned clockwise (towards east) by angle_deg."""
    a = math.radians(angle_deg)
    return n * math.cos(a) - e * math.sin(a), n * math.sin(a) + e * math.cos(a)


def rotate_patch(patch: GroundPatch, angle_deg: float) -> GroundPatch:
    """The patch content turned clockwise by angle_deg about its centre (same size; corners that
    come from outside are invalid). heading_deg becomes (heading or 0) + angle: a heading-up patch
    rotated by the true yaw is north-up."""
    if not math.isfinite(angle_deg):
        raise SkylocError(f"rotate_patch: angle {angle_deg} is not finite")
    s = patch.image.shape[0]
    c = (s - 1) / 2.0
    # cv2 angles are counter-clockwise in image coordinates (y down): clockwise = negative.
    M = cv2.getRotationMatrix2D((c, c), -angle_deg, 1.0)
    img = cv2.warpAffine(patch.image, M, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    # valid only where the bilinear sample took nothing from outside the source's valid area
    cover = cv2.warpAffine(patch.valid.astype(np.float32), M, (s, s), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT)
    valid = cover > 0.999
    img[~valid] = 0
    heading = ((patch.heading_deg or 0.0) + angle_deg) % 360.0
    return GroundPatch(img, valid, patch.mpp, heading, _rot_ne(*patch.ref_offset_m, angle_deg))


def rotations(patch: GroundPatch, n: int = 8) -> list[GroundPatch]:
    """n rotations of the patch, 360 / n apart starting at 0 (one batch for the heading search);
    each carries the heading it assumes."""
    if int(n) < 1:
        raise SkylocError(f"rotations: n ({n}) must be >= 1")
    return [rotate_patch(patch, k * 360.0 / int(n)) for k in range(int(n))]


def crop_centre(patch: GroundPatch, side_px: int) -> GroundPatch:
    """The central side_px square of a patch (same centre, same ref_offset)."""
    s = patch.image.shape[0]
    if side_px > s:
        raise SkylocError(f"crop_centre: {side_px} px is larger than the {s} px patch")
    o = (s - side_px) // 2
    if (s - side_px) % 2:
        raise SkylocError(f"crop_centre: {s} - {side_px} px must be even to keep the centre")
    return replace(patch, image=patch.image[o:o + side_px, o:o + side_px].copy(),
                   valid=patch.valid[o:o + side_px, o:o + side_px].copy())


def footprint_ne(camera: CameraModel, pose: FramePose, yaw_deg: float | None = None,
                 per_side: int = 16, max_off_nadir_deg: float = 80.0) -> np.ndarray:
    """(N, 2) ground (north, east) of the frame border (pixel centres 0..W-1), from the nadir point.

    Rays flatter than max_off_nadir_deg are cut at that angle's ground distance, so a frame seeing
    the horizon gets a large but finite footprint.
    """
    w, h = camera.width - 1, camera.height - 1
    t = np.linspace(0.0, 1.0, per_side, endpoint=False)
    u = np.concatenate([t * w, np.full(per_side, w), w - t * w, np.zeros(per_side)])
    v = np.concatenate([np.zeros(per_side), t * h, np.full(per_side, h), h - t * h])
    pts = np.stack([u, v], axis=1)[:, None, :].astype(np.float64)
    if camera.dist:
        xn = cv2.undistortPoints(pts, camera.K(), np.asarray(camera.dist))[:, 0, :]
    else:
        xn = np.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy], axis=1)
    rays = np.concatenate([xn, np.ones((xn.shape[0], 1))], axis=1) @ camera_to_ned(pose, yaw_deg).T
    alt = altitude_for(camera, pose)
    horiz = np.hypot(rays[:, 0], rays[:, 1])
    cap = alt * math.tan(math.radians(max_off_nadir_deg))
    down = np.maximum(rays[:, 2], 1e-12)
    dist = np.where(rays[:, 2] > 0, np.minimum(alt * horiz / down, cap), cap)
    scale = dist / np.maximum(horiz, 1e-12)
    return np.stack([rays[:, 0] * scale, rays[:, 1] * scale], axis=1)


def ground_coverage_m(camera: CameraModel, pose: FramePose, rotation_free: bool | None = None) -> float:
    """Side (metres) of the largest square centred on the optical-axis ground point that the frame
    covers entirely.

    The square is oriented like the rectified patch (north-up when the pose has a heading, else
    heading-up). rotation_free (default: heading unknown) asks for a square that stays covered at
    any rotation, i.e. inside the inscribed circle (side = radius * sqrt 2), which is what the
    rotations of a heading search need. The footprint is treated as convex (exact for a pinhole
    camera; close for usual lens distortion).
    """
    if rotation_free is None:
        rotation_free = pose.yaw_deg is None
    yaw = pose.yaw_deg if pose.yaw_deg is not None else 0.0
    alt = altitude_for(camera, pose)
    c = np.array(_axis_ground(camera_to_ned(pose, yaw), alt))
    poly = footprint_ne(camera, pose, yaw)
    edges = np.roll(poly, -1, axis=0) - poly
    length = np.hypot(edges[:, 0], edges[:, 1])
    keep = length > 1e-9
    poly, edges, length = poly[keep], edges[keep], length[keep]
    area2 = float(np.sum(poly[:, 0] * np.roll(poly[:, 1], -1) - np.roll(poly[:, 0], -1) * poly[:, 1]))
    sign = 1.0 if area2 > 0 else -1.0
    # signed distance of c from each edge line, positive inside
    d = sign * (edges[:, 0] * (c[1] - poly[:, 1]) - edges[:, 1] * (c[0] - poly[:, 0])) / length
    if np.any(d <= 0):
        return 0.0
    if rotation_free:
        return float(math.sqrt(2.0) * d.min())
    nrm = np.abs(edges) / length[:, None]  # |normal| components equal |edge| components swapped
    return float(2.0 * np.min(d / (nrm[:, 0] + nrm[:, 1])))


def pick_scale_level(coverage_m: float, tile_sides_m: list[float] | tuple[float, ...] | np.ndarray) -> int | None:
    """Index of the largest tile ground side the frame covers (<= coverage_m); None when none fits."""
    best, best_side = None, -math.inf
    if not math.isfinite(coverage_m):
        return None
    for i, side in enumerate(tile_sides_m):
        side = float(side)
        if math.isfinite(side) and side > 0 and side <= coverage_m * (1 + 1e-9) and side > best_side:
            best, best_side = i, side
    return best


@dataclass
class ScaleCandidate:
    level: int  # index into the tile sides
    tile_side_m: float
    altitude_m: float  # the altitude this candidate assumes
    patch: GroundPatch


def scale_candidates(frame_rgb: np.ndarray, camera: CameraModel, pose: FramePose,
                     tile_sides_m: list[float] | tuple[float, ...], side_px: int,
                     heading_deg: float | None = None) -> list[ScaleCandidate]:
    """Unknown altitude (no altitude, no gsd): one candidate per scale level, assuming the frame's
    covered square (ground_coverage_m) spans exactly that level's tile side.

    With flat ground and fixed attitude the picture does not depend on the altitude, only its
    metric size does: every candidate holds the same pixels, rectified once, with the level's
    mpp (tile_side / side_px), altitude and ref_offset.
    """
    if not tile_sides_m:
        raise SkylocError("scale_candidates: no tile sides given")
    unit = pose.with_(altitude_m=1.0, gsd_m=None)
    cov1 = ground_coverage_m(camera.scaled_to(frame_rgb.shape[1], frame_rgb.shape[0]), unit)
    if cov1 <= 0:
        raise SkylocError("scale_candidates: the optical-axis ground point is not inside the frame footprint")
    base = rectify(frame_rgb, camera, unit, cov1 / side_px, side_px, heading_deg)
    out = []
    for i, side in enumerate(tile_sides_m):
        side = float(side)
        if not (math.isfinite(side) and side > 0):
            raise SkylocError(f"scale_candidates: tile side {side} must be > 0")
        k = side / cov1  # altitude, since coverage is proportional to altitude
        out.append(ScaleCandidate(i, side, k, replace(base, image=base.image.copy(), valid=base.valid.copy(),
                                                      mpp=side / side_px,
                                                      ref_offset_m=(base.ref_offset_m[0] * k,
                                                                    base.ref_offset_m[1] * k))))
    return out
