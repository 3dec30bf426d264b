"""Pinhole camera over a flat ground plane, and the University-1652 descending spiral.

World frame: local metres about an origin (x east, y north, z up); the ground is z = 0.
Camera frame (OpenCV): x right, y down, z forward. Pixel coordinates are continuous with (0, 0)
at the outer top-left corner, so the principal point of a W x H image is (W / 2, H / 2) and
pixel (col, row) has its centre at (col + 0.5, row + 0.5). Square pixels; fov is horizontal.

A camera is posed by yaw (heading of the optical axis, clockwise from north), pitch (depression
of the optical axis below the horizon, 90 = nadir) and roll (turn about the optical axis, positive
= the image's right side dips, like a right-wing-down roll; default 0). With zero roll the image's
up direction is the horizontal heading (for a nadir camera too: image up = yaw). `Camera.from_axes`
poses a camera from its right and forward axes in world coordinates (any attitude).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from skyloc.runtime.pose.frame_pose import FramePose


@dataclass(frozen=True)
class Camera:
    east_m: float
    north_m: float
    alt_m: float  # height above the ground plane
    yaw_deg: float
    pitch_deg: float
    fov_deg: float  # horizontal field of view
    width: int
    height: int
    roll_deg: float = 0.0

    @classmethod
    def from_axes(cls, east_m: float, north_m: float, alt_m: float, right: np.ndarray, forward: np.ndarray,
                  fov_deg: float, width: int, height: int) -> "Camera":
        """Camera whose right / forward (optical) axes are the given world (east, north, up) vectors."""
        fwd = np.asarray(forward, np.float64) / np.linalg.norm(forward)
        rgt = np.asarray(right, np.float64) / np.linalg.norm(right)
        pitch = math.degrees(math.asin(max(-1.0, min(1.0, -fwd[2]))))
        yaw = math.degrees(math.atan2(fwd[0], fwd[1])) % 360.0
        base = cls(east_m, north_m, alt_m, yaw, pitch, fov_deg, width, height).rotation()
        # any yaw works at exact nadir: the roll then carries the image orientation
        roll = math.degrees(math.atan2(float(rgt @ base[1]), float(rgt @ base[0])))
        return cls(float(east_m), float(north_m), float(alt_m), yaw, pitch, float(fov_deg), int(width), int(height),
                   roll)

    @property
    def focal_px(self) -> float:
        return (self.width / 2) / math.tan(math.radians(self.fov_deg) / 2)

    @property
    def centre(self) -> np.ndarray:
        return np.array([self.east_m, self.north_m, self.alt_m])

    def rotation(self) -> np.ndarray:
        """World -> camera rotation: rows are the camera's right, down and forward axes in world."""
        y, p = math.radians(self.yaw_deg), math.radians(self.pitch_deg)
        fwd = np.array([math.sin(y) * math.cos(p), math.cos(y) * math.cos(p), -math.sin(p)])
        right = np.array([math.cos(y), -math.sin(y), 0.0])
        down = np.cross(fwd, right)
        if self.roll_deg:
            r = math.radians(self.roll_deg)
            right, down = math.cos(r) * right + math.sin(r) * down, -math.sin(r) * right + math.cos(r) * down
        return np.stack([right, down, fwd])

    def intrinsics(self) -> np.ndarray:
        f = self.focal_px
        return np.array([[f, 0.0, self.width / 2], [0.0, f, self.height / 2], [0.0, 0.0, 1.0]])

    def rays(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """World directions (..., 3) of the rays through pixel coords (u, v) (not normalised)."""
        f = self.focal_px
        xc = (np.asarray(u, np.float64) - self.width / 2) / f
        yc = (np.asarray(v, np.float64) - self.height / 2) / f
        d_cam = np.stack([xc, yc, np.ones_like(xc)], axis=-1)
        return d_cam @ self.rotation()  # R^T d for row vectors

    def ground_points(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(east, north, hit) where the rays through (u, v) meet z = 0; hit False above the horizon."""
        d = self.rays(u, v)
        hit = d[..., 2] < -1e-9
        t = np.where(hit, -self.alt_m / np.where(hit, d[..., 2], -1.0), np.nan)
        return self.east_m + t * d[..., 0], self.north_m + t * d[..., 1], hit

    def pixel_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """(u, v) of every pixel centre, each (height, width)."""
        return np.meshgrid(np.arange(self.width) + 0.5, np.arange(self.height) + 0.5)

    def project(self, east: np.ndarray, north: np.ndarray, up: np.ndarray | float = 0.0
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World points -> (u, v, in_front)."""
        p = np.stack(np.broadcast_arrays(np.asarray(east, np.float64), np.asarray(north, np.float64),
                                         np.asarray(up, np.float64)), axis=-1) - self.centre
        pc = p @ self.rotation().T
        z = pc[..., 2]
        front = z > 1e-9
        zs = np.where(front, z, 1.0)
        f = self.focal_px
        return f * pc[..., 0] / zs + self.width / 2, f * pc[..., 1] / zs + self.height / 2, front

    def footprint_radius_m(self, samples: int = 9) -> float:
        """Largest horizontal distance from the camera's ground foot to any point of its view border."""
        ge, gn, hit = self.ground_points(*border_uv(self.width, self.height, samples))
        if not hit.all():
            return math.inf
        return float(np.max(np.hypot(ge - self.east_m, gn - self.north_m)))


def attitude_camera(east: float, north: float, pose: "FramePose", fov_deg: float, width: int, height: int) -> Camera:
    """The camera of an aircraft at (east, north, pose.altitude_m) with the pose's attitude and gimbal
    tilt (runtime.pose conventions: image top towards the nose; unknown yaw taken as 0)."""
    from skyloc.runtime.pose.frame_pose import camera_to_ned

    r = camera_to_ned(pose)  # columns: camera x (right), y (down), z (axis) in NED
    enu = lambda v: np.array([v[1], v[0], -v[2]])  # noqa: E731
    return Camera.from_axes(east, north, float(pose.altitude_m), enu(r[:, 0]), enu(r[:, 2]), fov_deg, width, height)


def smooth_profile(rng: np.random.Generator, t: np.ndarray, lo: float, hi: float, period_s: float,
                   terms: int = 3) -> np.ndarray:
    """A smooth random curve over times t staying within [lo, hi] (sum of random sinusoids with
    periods of period_s .. 3 period_s); constant lo when hi <= lo."""
    if hi <= lo:
        return np.full(np.shape(t), float(lo))
    amp = rng.uniform(0.5, 1.0, terms)
    per = rng.uniform(period_s, 3 * period_s, terms)
    ph = rng.uniform(0, 2 * math.pi, terms)
    x = sum(a * np.sin(2 * math.pi * np.asarray(t) / p + f) for a, p, f in zip(amp, per, ph)) / amp.sum()
    return lo + (hi - lo) * 0.5 * (x + 1.0)


def look_at(east: float, north: float, alt: float, target_e: float, target_n: float,
            fov_deg: float, width: int, height: int | None = None) -> Camera:
    """Camera at (east, north, alt) whose optical axis passes through the ground point (target_e, target_n)."""
    de, dn = target_e - east, target_n - north
    dist = math.hypot(de, dn)
    yaw = math.degrees(math.atan2(de, dn)) % 360.0 if dist > 1e-9 else 0.0
    pitch = math.degrees(math.atan2(alt, dist))
    return Camera(float(east), float(north), float(alt), float(yaw) % 360.0, float(pitch), float(fov_deg),
                  int(width), int(width if height is None else height))


@dataclass
class SpiralConfig:
    """The University-1652 drone path: a descending spiral with the camera aimed at the target.

    U1652 descends from 256 m to 121.5 m. Our defaults look more steeply down (pitch 60 -> 75
    degrees, 50 degree fov) than U1652's Google-Earth views so the views of a location fit on a
    map of a few hundred metres; `scale` shrinks the whole spiral (altitudes and radii, hence
    ground footprints) for small maps. The horizontal radius follows from altitude and pitch,
    radius = altitude / tan(pitch), unless radius_start_m / radius_end_m are given, in which
    case they set the radii and the pitch follows (the camera always aims at the target).
    At scale 1 the views reach 288 m from the target and see about 190 m across mid-spiral.
    """

    altitude_start_m: float = 256.0
    altitude_end_m: float = 121.5
    pitch_start_deg: float = 60.0  # depression of the optical axis at the first (highest) view
    pitch_end_deg: float = 75.0
    turns: float = 1.0  # revolutions around the target from first to last view
    fov_deg: float = 50.0
    scale: float = 1.0
    radius_start_m: float | None = None  # horizontal camera-target distance, overrides the pitches
    radius_end_m: float | None = None

    def geometry(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(altitudes, horizontal radii) of n views, first = highest and farthest."""
        alts = self.scale * np.linspace(self.altitude_start_m, self.altitude_end_m, n)
        if self.radius_start_m is not None or self.radius_end_m is not None:
            r0 = self.radius_start_m if self.radius_start_m is not None else self.radius_end_m
            r1 = self.radius_end_m if self.radius_end_m is not None else self.radius_start_m
            return alts, self.scale * np.linspace(float(r0), float(r1), n)
        pitches = np.radians(np.linspace(self.pitch_start_deg, self.pitch_end_deg, n))
        return alts, alts / np.tan(pitches)


def spiral_cameras(cfg: SpiralConfig, n: int, size_px: int, start_bearing_deg: float = 0.0,
                   target_e: float = 0.0, target_n: float = 0.0, clockwise: bool = True) -> list[Camera]:
    """n cameras along the descending spiral around a target, first = highest and farthest.

    start_bearing_deg is the bearing of the first camera as seen from the target.
    """
    alts, radii = cfg.geometry(n)
    frac = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    sign = 1.0 if clockwise else -1.0
    cams = []
    for a, r, f in zip(alts, radii, frac):
        bearing = math.radians(start_bearing_deg + sign * 360.0 * cfg.turns * f)
        cams.append(look_at(target_e + r * math.sin(bearing), target_n + r * math.cos(bearing), float(a),
                            target_e, target_n, cfg.fov_deg, size_px))
    return cams


def mid_spiral_ground_width_m(cfg: SpiralConfig) -> float:
    """Ground width across the image centre seen from the middle of the spiral (default satellite crop)."""
    alts, radii = cfg.geometry(3)
    slant = math.hypot(alts[1], radii[1])
    return 2.0 * slant * math.tan(math.radians(cfg.fov_deg) / 2)


def border_uv(width: int, height: int, samples: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coords along the outer border of an image, `samples` per side."""
    e = np.linspace(0, 1, samples)
    u = np.concatenate([e * width, np.full(samples, float(width)), e * width, np.zeros(samples)])
    v = np.concatenate([np.zeros(samples), e * height, np.full(samples, float(height)), e * height])
    return u, v


def spiral_extent_m(cfg: SpiralConfig, n: int) -> float:
    """Largest distance from the target to any ground point seen by the n spiral views (any bearing).

    A view's ground footprint is a convex quadrilateral, so its farthest point is on the border.
    """
    worst = 0.0
    for cam in spiral_cameras(cfg, n, 64):
        ge, gn, hit = cam.ground_points(*border_uv(cam.width, cam.height))
        if not hit.all():
            return math.inf
        worst = max(worst, float(np.max(np.hypot(ge, gn))))
    return worst
