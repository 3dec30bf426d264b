"""Downward training views as the onboard camera sees them: any heading, a range of altitudes,
a gimbal tilt and some airframe roll / pitch, aimed so that the optical axis meets the target.

Each view comes with its FramePose (runtime.pose conventions) so training can rectify it the way
the runtime does (runtime.rectify) instead of learning the perspective.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from skyloc.runtime.pose.camera import CameraModel
from skyloc.runtime.pose.frame_pose import MAX_TILT_DEG, FramePose
from skyloc.synth.camera import Camera, attitude_camera, border_uv

from skyloc.core.errors import SkylocError


@dataclass
class NadirViewConfig:
    altitude_range_m: tuple[float, float] = (80.0, 250.0)
    tilt_max_deg: float = 15.0  # gimbal tilt drawn in [0, tilt_max]
    attitude_deg: float = 5.0  # airframe roll and pitch drawn in +- this
    fov_deg: float = 60.0  # horizontal
    scale: float = 1.0  # scales the altitudes (hence footprints) for small maps

    def check(self) -> None:
        lo, hi = self.altitude_range_m
        vals = (lo, hi, self.tilt_max_deg, self.attitude_deg, self.fov_deg, self.scale)
        if not all(math.isfinite(v) for v in vals) or not (0 < lo <= hi) or self.scale <= 0:
            raise SkylocError(f"nadir views: need 0 < altitude MIN <= MAX and scale > 0 (got {vals})")
        if not (0 <= self.tilt_max_deg <= MAX_TILT_DEG and 0 <= self.attitude_deg < 45 and 1 <= self.fov_deg <= 150):
            raise SkylocError(f"nadir views: tilt max {self.tilt_max_deg} must be in [0, {MAX_TILT_DEG:g}], attitude "
                              f"{self.attitude_deg} in [0, 45), fov {self.fov_deg} in [1, 150]")


def aimed_camera(pose: FramePose, cfg: NadirViewConfig, width: int, height: int,
                 target_e: float = 0.0, target_n: float = 0.0) -> Camera:
    """The camera with this pose whose optical axis meets the ground at the target."""
    cam = attitude_camera(0.0, 0.0, pose, cfg.fov_deg, width, height)
    e, n, hit = cam.ground_points(np.array(width / 2), np.array(height / 2))
    if not hit:
        raise SkylocError(f"nadir views: pose {pose} does not see the ground at the image centre")
    return attitude_camera(target_e - float(e), target_n - float(n), pose, cfg.fov_deg, width, height)


def draw_pose(rng: np.random.Generator, cfg: NadirViewConfig) -> FramePose:
    lo, hi = cfg.altitude_range_m
    a = cfg.attitude_deg
    return FramePose(altitude_m=float(rng.uniform(lo, hi)) * cfg.scale, roll_deg=float(rng.uniform(-a, a)),
                     pitch_deg=float(rng.uniform(-a, a)), yaw_deg=float(rng.uniform(0.0, 360.0)),
                     camera_tilt_deg=float(rng.uniform(0.0, cfg.tilt_max_deg)))


def nadir_views(rng: np.random.Generator, cfg: NadirViewConfig, n: int, width: int, height: int,
                target_e: float = 0.0, target_n: float = 0.0) -> list[tuple[Camera, FramePose]]:
    return [(aimed_camera(p, cfg, width, height, target_e, target_n), p)
            for p in (draw_pose(rng, cfg) for _ in range(n))]


def nadir_extent_m(cfg: NadirViewConfig, width: int, height: int) -> float:
    """Largest distance from the target to any ground point a view can see (extreme poses)."""
    alt = cfg.altitude_range_m[1] * cfg.scale
    a = cfg.attitude_deg
    worst = 0.0
    for tilt in {0.0, cfg.tilt_max_deg}:
        for roll in {-a, 0.0, a}:
            for pitch in {-a, 0.0, a}:
                pose = FramePose(altitude_m=alt, roll_deg=roll, pitch_deg=pitch, yaw_deg=0.0, camera_tilt_deg=tilt)
                cam = aimed_camera(pose, cfg, width, height)
                ge, gn, hit = cam.ground_points(*border_uv(width, height, 9))
                if not hit.all():
                    return math.inf
                worst = max(worst, float(np.max(np.hypot(ge, gn))))
    return worst


def pose_from_camera(cam: Camera) -> FramePose | None:
    """FramePose of a zero-roll synth camera (spiral views): level airframe, tilt = 90 - depression;
    None when the camera is flatter than the tilt limit."""
    tilt = 90.0 - cam.pitch_deg
    if cam.roll_deg or not (0.0 <= tilt <= MAX_TILT_DEG + 1e-9):
        return None
    return FramePose(altitude_m=cam.alt_m, yaw_deg=cam.yaw_deg, camera_tilt_deg=min(max(tilt, 0.0), MAX_TILT_DEG))


def camera_model(cam: Camera) -> CameraModel:
    """The synth camera's intrinsics in runtime.camera's (OpenCV pixel-centre) convention."""
    return CameraModel.from_hfov(cam.fov_deg, cam.width, cam.height)


def nadir_ground_width_m(cfg: NadirViewConfig) -> float:
    """Ground width a level nadir view sees at the middle of the altitude range (default satellite crop)."""
    mid = 0.5 * (cfg.altitude_range_m[0] + cfg.altitude_range_m[1]) * cfg.scale
    return 2.0 * mid * math.tan(math.radians(cfg.fov_deg) / 2)
