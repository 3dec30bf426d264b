"""A simulated flight over a map: a smooth path, a downward camera, a video and its ground truth.

The path is a centripetal Catmull-Rom spline through random waypoints; every waypoint leg and
the smoothed curve stay inside the part of the map where the whole camera footprint is valid
(the map's validity grid eroded by the largest footprint radius the flight can have). The camera
looks straight down by default (tilt_deg tilts it forward; with tilt_max_deg the tilt wanders
smoothly between the two) and is mounted with the image top towards the nose (runtime.pose
conventions). The aircraft's yaw follows the flight direction (yaw_mode "track"), turns on its
own (a smooth random yaw rate, "random-walk": a multicopter need not fly nose-first) or stays
"fixed"; altitude (altitude_range_m) and airframe roll / pitch (attitude_deg) can wander too.
One photometric "day" is drawn for the whole flight (plus per-frame sensor noise), different
from the map's look.

Writes DIR/flight.mp4 (OpenCV mp4v), DIR/truth.csv (per frame: aircraft lat/lon, altitude,
roll, pitch, yaw, tilt and the ground point on the optical axis, center_lat/lon),
DIR/flight.json (the camera file for `--camera`, plus the flight's settings), DIR/map/ and
optionally DIR/frames/NNNNNN.jpg.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from skyloc.core import geo
from skyloc.runtime.pose.camera import CameraModel
from skyloc.core.errors import SkylocError
from skyloc.runtime.maps.base import GeoMap
from skyloc.runtime.pose.frame_pose import MAX_TILT_DEG, FramePose
from skyloc.synth.camera import Camera, attitude_camera, smooth_profile
from skyloc.synth.dataset import open_output_map
from skyloc.synth.photometric import PhotometricConfig, apply_params, draw_params, encode_jpeg
from skyloc.synth.render import render_view

TRUTH_COLUMNS = ["frame", "time_s", "lat", "lon", "altitude_m", "roll_deg", "pitch_deg", "yaw_deg", "tilt_deg",
                 "center_lat", "center_lon", "east_m", "north_m"]
YAW_MODES = ("track", "random-walk", "fixed")


@dataclass
class FlightConfig:
    seconds: float = 30.0
    fps: float = 10.0
    altitude_m: float = 120.0
    speed_mps: float = 12.0
    fov_deg: float = 60.0  # horizontal
    width: int = 320
    height: int = 240
    tilt_deg: float = 0.0  # forward tilt of the optical axis from nadir
    tilt_max_deg: float | None = None  # tilt wanders in [tilt_deg, tilt_max_deg]
    altitude_range_m: tuple[float, float] | None = None  # altitude wanders in this range (else altitude_m)
    attitude_deg: float = 0.0  # airframe roll and pitch wander within +-attitude_deg
    yaw_mode: str = "track"  # one of YAW_MODES
    yaw_rate_max_dps: float = 15.0  # random-walk: largest yaw rate, deg/s
    profile_period_s: float = 8.0  # shortest period of the wandering altitude / tilt / attitude
    max_turn_deg: float = 70.0  # heading change between waypoint legs
    leg_factor: tuple[float, float] = (1.5, 4.0)  # leg length range, in camera footprint radii
    margin_m: float = 5.0  # extra clearance beyond the footprint
    photometric: PhotometricConfig = field(default_factory=lambda: PhotometricConfig(
        strength=0.5, jpeg_quality=(80, 95)))
    seed: int = 0
    write_frames: bool = False
    overwrite: bool = False
    max_tries: int = 200
    world_size_m: float = 1500.0  # the procedural world used when no map is given
    world_mpp: float = 1.0


def frame_camera(cfg: FlightConfig, east: float, north: float, pose: FramePose) -> Camera:
    return attitude_camera(east, north, pose, cfg.fov_deg, cfg.width, cfg.height)


def _altitude_range(cfg: FlightConfig) -> tuple[float, float]:
    return (float(cfg.altitude_range_m[0]), float(cfg.altitude_range_m[1])) if cfg.altitude_range_m \
        else (cfg.altitude_m, cfg.altitude_m)


def _tilt_range(cfg: FlightConfig) -> tuple[float, float]:
    return cfg.tilt_deg, (cfg.tilt_max_deg if cfg.tilt_max_deg is not None else cfg.tilt_deg)


def worst_footprint_m(cfg: FlightConfig) -> float:
    """Largest distance from the aircraft's foot to anything a frame can see (highest altitude,
    extreme tilt / roll / pitch); inf when a frame can see the horizon."""
    alt = _altitude_range(cfg)[1]
    a = cfg.attitude_deg
    worst = 0.0
    for tilt in set(_tilt_range(cfg)):
        for roll in {-a, 0.0, a}:
            for pitch in {-a, 0.0, a}:
                pose = FramePose(altitude_m=alt, roll_deg=roll, pitch_deg=pitch, yaw_deg=0.0, camera_tilt_deg=tilt)
                worst = max(worst, frame_camera(cfg, 0.0, 0.0, pose).footprint_radius_m(17))
    return worst


def frame_poses(cfg: FlightConfig, rng: np.random.Generator, track_yaw: np.ndarray) -> list[FramePose]:
    """Per-frame altitude / attitude / tilt (see module doc), drawn from rng."""
    n = track_yaw.size
    t = np.arange(n) / cfg.fps
    alt = smooth_profile(rng, t, *_altitude_range(cfg), cfg.profile_period_s)
    tilt = smooth_profile(rng, t, *_tilt_range(cfg), cfg.profile_period_s)
    a = cfg.attitude_deg
    roll = smooth_profile(rng, t, -a, a, cfg.profile_period_s / 2) if a > 0 else np.zeros(n)
    pitch = smooth_profile(rng, t, -a, a, cfg.profile_period_s / 2) if a > 0 else np.zeros(n)
    if cfg.yaw_mode == "track":
        yaw = track_yaw
    else:
        start = float(rng.uniform(0.0, 360.0))
        if cfg.yaw_mode == "fixed":
            yaw = np.full(n, start)
        else:
            rate = smooth_profile(rng, t, -cfg.yaw_rate_max_dps, cfg.yaw_rate_max_dps, cfg.profile_period_s / 2)
            yaw = start + np.concatenate([[0.0], np.cumsum(rate[:-1]) / cfg.fps])
    return [FramePose(altitude_m=float(alt[i]), roll_deg=float(roll[i]), pitch_deg=float(pitch[i]),
                      yaw_deg=float(yaw[i]) % 360.0, camera_tilt_deg=float(tilt[i]), time_s=float(t[i]))
            for i in range(n)]


def check_config(cfg: FlightConfig) -> None:
    lo_a, hi_a = _altitude_range(cfg)
    lo_t, hi_t = _tilt_range(cfg)
    vals = (cfg.seconds, cfg.fps, lo_a, hi_a, lo_t, hi_t, cfg.attitude_deg, cfg.yaw_rate_max_dps, cfg.profile_period_s)
    if not all(math.isfinite(v) for v in vals):
        raise SkylocError(f"flight: settings must be finite numbers (got {vals})")
    if cfg.seconds <= 0 or cfg.fps <= 0 or lo_a <= 0 or cfg.width < 16 or cfg.height < 16:
        raise SkylocError("flight: seconds, fps and altitude must be > 0 and the frame at least 16x16 px")
    if lo_a > hi_a:
        raise SkylocError(f"flight: --altitude-range {lo_a},{hi_a}: MIN must not exceed MAX")
    if not (0 <= lo_t <= hi_t <= MAX_TILT_DEG):
        raise SkylocError(f"flight: tilt {lo_t}..{hi_t} deg must satisfy 0 <= --tilt <= --tilt-max <= {MAX_TILT_DEG:g}")
    if not 0 <= cfg.attitude_deg < 45:
        raise SkylocError(f"flight: --attitude {cfg.attitude_deg} deg must be in [0, 45)")
    if cfg.yaw_mode not in YAW_MODES:
        raise SkylocError(f"flight: --yaw-mode {cfg.yaw_mode!r}: choose one of {', '.join(YAW_MODES)}")
    if cfg.yaw_rate_max_dps < 0 or cfg.profile_period_s <= 0:
        raise SkylocError("flight: --yaw-rate must be >= 0 and the profile period > 0")


def catmull_rom(points: np.ndarray, per_segment: int = 40) -> np.ndarray:
    """Dense centripetal Catmull-Rom curve through points[1:-1] (the ends only shape the tangents)."""
    out = []
    for i in range(1, len(points) - 2):
        p0, p1, p2, p3 = points[i - 1:i + 3]
        t0 = 0.0
        t1 = t0 + max(np.linalg.norm(p1 - p0), 1e-6) ** 0.5
        t2 = t1 + max(np.linalg.norm(p2 - p1), 1e-6) ** 0.5
        t3 = t2 + max(np.linalg.norm(p3 - p2), 1e-6) ** 0.5
        t = np.linspace(t1, t2, per_segment, endpoint=False)[:, None]
        a1 = (t1 - t) / (t1 - t0) * p0 + (t - t0) / (t1 - t0) * p1
        a2 = (t2 - t) / (t2 - t1) * p1 + (t - t1) / (t2 - t1) * p2
        a3 = (t3 - t) / (t3 - t2) * p2 + (t - t2) / (t3 - t2) * p3
        b1 = (t2 - t) / (t2 - t0) * a1 + (t - t0) / (t2 - t0) * a2
        b2 = (t3 - t) / (t3 - t1) * a2 + (t - t1) / (t3 - t1) * a3
        out.append((t2 - t) / (t2 - t1) * b1 + (t - t1) / (t2 - t1) * b2)
    out.append(points[-2][None])
    return np.concatenate(out)


class _Region:
    """Where the camera's ground foot may go: valid map eroded by the footprint radius, on a metric grid."""

    def __init__(self, gmap: GeoMap, clearance_m: float) -> None:
        lat_min, lon_min, lat_max, lon_max = gmap.bounds_latlon()
        self.lat0, self.lon0 = 0.5 * (lat_min + lat_max), 0.5 * (lon_min + lon_max)
        self.west, self.north = geo.latlon_to_local_m(lat_max, lon_min, self.lat0, self.lon0)
        east, south = geo.latlon_to_local_m(lat_min, lon_max, self.lat0, self.lon0)
        span = max(east - self.west, self.north - south)
        self.g = max(clearance_m / 8.0, span / 1000.0, 0.5)
        nx, ny = int((east - self.west) / self.g) + 1, int((self.north - south) / self.g) + 1
        e = self.west + (np.arange(nx) + 0.5) * self.g
        n = self.north - (np.arange(ny) + 0.5) * self.g
        ee, nn = np.meshgrid(e, n)
        la, lo = geo.local_m_to_latlon(ee, nn, self.lat0, self.lon0)
        valid = gmap.is_valid(la, lo).astype(np.uint8)
        r = int(math.ceil(clearance_m / self.g)) + 1
        disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        # Outside the grid is invalid: pad before eroding so the border erodes too.
        padded = cv2.copyMakeBorder(valid, r, r, r, r, cv2.BORDER_CONSTANT, value=0)
        self.ok = cv2.erode(padded, disk)[r:-r, r:-r].astype(bool)

    def inside(self, e: np.ndarray, n: np.ndarray) -> np.ndarray:
        c = np.floor((np.asarray(e) - self.west) / self.g).astype(np.int64)
        r = np.floor((self.north - np.asarray(n)) / self.g).astype(np.int64)
        h, w = self.ok.shape
        good = (c >= 0) & (c < w) & (r >= 0) & (r < h)
        out = np.zeros(np.shape(e), bool)
        out[good] = self.ok[r[good], c[good]]
        return out

    def random_point(self, rng: np.random.Generator) -> np.ndarray:
        rows, cols = np.nonzero(self.ok)
        i = int(rng.integers(0, rows.size))
        return np.array([self.west + (cols[i] + 0.5) * self.g, self.north - (rows[i] + 0.5) * self.g])


def plan_path(region: _Region, rng: np.random.Generator, cfg: FlightConfig, footprint_m: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """(positions (N, 2) east/north, headings (N,) deg) for the N frames."""
    n = max(1, int(round(cfg.seconds * cfg.fps)))
    need = cfg.speed_mps * (n - 1) / cfg.fps
    lo, hi = (f * footprint_m for f in cfg.leg_factor)
    if not region.ok.any():
        raise SkylocError(f"flight: no part of the map keeps the whole {footprint_m:.0f} m camera footprint "
                          "valid; lower --altitude or --fov, or use a larger map")
    for _ in range(cfg.max_tries):
        pts = [region.random_point(rng)]
        heading = rng.uniform(0, 2 * math.pi)
        length, stuck = 0.0, 0
        while length < need + 2 * hi and stuck < 60:
            turn = math.radians(cfg.max_turn_deg if stuck < 20 else 180.0)
            h = heading + rng.uniform(-turn, turn)
            leg = rng.uniform(lo, hi)
            nxt = pts[-1] + leg * np.array([math.sin(h), math.cos(h)])
            s = np.linspace(0, 1, int(leg / (region.g / 2)) + 2)[:, None]
            seg = pts[-1] + s * (nxt - pts[-1])
            if region.inside(seg[:, 0], seg[:, 1]).all():
                pts.append(nxt)
                heading, length, stuck = h, length + leg, 0
            else:
                stuck += 1
        if length < need + 2 * hi:
            continue
        # Extra end points give the spline its end tangents; start the flight one leg in.
        curve = catmull_rom(np.array([2 * pts[0] - pts[1]] + pts + [2 * pts[-1] - pts[-2]]), 60)
        if not region.inside(curve[:, 0], curve[:, 1]).all():
            continue
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(curve, axis=0), axis=1))])
        s0 = arc[np.searchsorted(arc, np.linalg.norm(pts[1] - pts[0]) * 0.5)]
        s = s0 + cfg.speed_mps * np.arange(n) / cfg.fps
        if s[-1] > arc[-1] - 1.0:
            continue
        pos = np.stack([np.interp(s, arc, curve[:, 0]), np.interp(s, arc, curve[:, 1])], 1)
        ahead = np.stack([np.interp(s + 1.0, arc, curve[:, 0]), np.interp(s + 1.0, arc, curve[:, 1])], 1)
        d = ahead - np.stack([np.interp(s - 1.0, arc, curve[:, 0]), np.interp(s - 1.0, arc, curve[:, 1])], 1)
        yaw = np.degrees(np.arctan2(d[:, 0], d[:, 1])) % 360.0
        return pos, yaw
    raise SkylocError(f"flight: could not fit a {need:.0f} m path inside the valid map after {cfg.max_tries} "
                      "tries; shorten --seconds, lower --speed or --altitude, or use a larger map")


def make_flight(map_path: Path | str | None, out_dir: Path | str, cfg: FlightConfig) -> Path:
    """Render the flight into out_dir; returns the video path (truth.csv and flight.json beside it)."""
    out = Path(out_dir)
    check_config(cfg)
    footprint = worst_footprint_m(cfg)
    if math.isinf(footprint):
        raise SkylocError(f"flight: tilt up to {_tilt_range(cfg)[1]} deg (+ attitude {cfg.attitude_deg} deg) with "
                          f"fov {cfg.fov_deg} deg sees the horizon; lower --tilt / --tilt-max / --attitude or --fov")
    gmap, kept = open_output_map(map_path, out, ("flight.mp4", "truth.csv", "flight.json", "frames", "map"),
                                 cfg.overwrite, cfg.seed, cfg.world_size_m, cfg.world_mpp)

    # the first three streams are the ones earlier versions drew, so level track-yaw flights keep their path
    rng_path, rng_day, rng_noise, rng_att = (np.random.default_rng(s)
                                             for s in np.random.SeedSequence(cfg.seed).spawn(4))
    region = _Region(gmap, footprint + cfg.margin_m)
    pos, track_yaw = plan_path(region, rng_path, cfg, footprint)
    poses = frame_poses(cfg, rng_att, track_yaw)
    day = draw_params(rng_day, cfg.photometric)
    day.jpeg_quality = 0  # the video codec compresses already

    video = out / "flight.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), float(cfg.fps), (cfg.width, cfg.height))
    if not writer.isOpened():
        raise SkylocError(f"flight: OpenCV cannot write {video} with the mp4v codec (no FFmpeg backend?)")
    if cfg.write_frames:
        (out / "frames").mkdir(exist_ok=True)
    rows = []
    try:
        for i, ((e, n), pose) in enumerate(tqdm(list(zip(pos, poses)), desc="synth flight", unit="frame")):
            cam = frame_camera(cfg, e, n, pose)
            rgb, valid = render_view(gmap, cam, region.lat0, region.lon0)
            if not valid.all():
                raise SkylocError(f"flight: frame {i} sees {int((~valid).sum())} pixels off the valid map "
                                  f"(validity grid {region.g:.1f} m too coarse for this map); raise --margin")
            frame = apply_params(rgb, day, rng_noise)
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            if cfg.write_frames:
                (out / "frames" / f"{i:06d}.jpg").write_bytes(encode_jpeg(frame, 95))
            rows.append(_truth_row(i, cfg, cam, pose, region.lat0, region.lon0))
    finally:
        writer.release()
    _check_video(video, len(rows))
    with open(out / "truth.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(TRUTH_COLUMNS)
        w.writerows(rows)
    cam = frame_camera(cfg, 0.0, 0.0, FramePose(altitude_m=cfg.altitude_m, yaw_deg=0.0))
    # "camera" is the camera file for `skyloc run --camera flight.json` (OpenCV pixel-centre convention)
    meta = {"kind": "skyloc-synth-flight", "video": video.name,
            "camera": CameraModel.from_hfov(cfg.fov_deg, cfg.width, cfg.height).to_dict(), "frames": len(rows), "fps": cfg.fps,
            "width": cfg.width, "height": cfg.height, "fov_deg": cfg.fov_deg, "camera_matrix": cam.intrinsics().tolist(),
            "altitude_m": cfg.altitude_m, "altitude_range_m": list(_altitude_range(cfg)), "tilt_deg": cfg.tilt_deg,
            "tilt_range_deg": list(_tilt_range(cfg)), "attitude_deg": cfg.attitude_deg, "yaw_mode": cfg.yaw_mode,
            "footprint_radius_m": footprint,
            "map": str(kept.relative_to(out)), "origin_latlon": [region.lat0, region.lon0], "config": asdict(cfg)}
    (out / "flight.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return video


def _truth_row(i: int, cfg: FlightConfig, cam: Camera, pose: FramePose, lat0: float, lon0: float) -> list[str]:
    lat, lon = geo.local_m_to_latlon(cam.east_m, cam.north_m, lat0, lon0)
    ce, cn, _ = cam.ground_points(np.array(cam.width / 2), np.array(cam.height / 2))
    clat, clon = geo.local_m_to_latlon(float(ce), float(cn), lat0, lon0)
    return [str(i), f"{i / cfg.fps:.4f}", f"{lat:.8f}", f"{lon:.8f}", f"{cam.alt_m:.3f}", f"{pose.roll_deg:.3f}",
            f"{pose.pitch_deg:.3f}", f"{pose.yaw_deg:.3f}", f"{pose.camera_tilt_deg:.3f}", f"{clat:.8f}", f"{clon:.8f}",
            f"{cam.east_m:.3f}", f"{cam.north_m:.3f}"]


def _check_video(path: Path, frames: int) -> None:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise SkylocError(f"flight: wrote {path} but OpenCV cannot open it again")
        n = 0
        while cap.grab():
            n += 1
    finally:
        cap.release()
    if n != frames:
        raise SkylocError(f"flight: {path} holds {n} frames, expected {frames}")
