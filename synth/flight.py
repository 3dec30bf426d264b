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

When no waypoint path fits, the flight steers to stay inside (synth.flight_path); when even
that fails, it flies lower, with a warning and a note in flight.json (lower_to_fit). Frames can
come from another image of the area (render_map) and through another season / sensor
(appearance: synth.appearance); truth stays in the map's frame.

Writes DIR/flight.mp4 (OpenCV mp4v), DIR/truth.csv (per frame: aircraft lat/lon, altitude,
roll, pitch, yaw, tilt and the ground point on the optical axis, center_lat/lon),
DIR/flight.json (the camera file for `--camera`, plus the flight's settings), DIR/map/ and
optionally DIR/frames/NNNNNN.jpg.
"""
from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field, replace
import json
import logging
import math
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from skyloc.core import geo
from skyloc.core.errors import SkylocError
from skyloc.runtime.maps.open import open_map
from skyloc.runtime.pose.camera import CameraModel
from skyloc.runtime.pose.frame_pose import MAX_TILT_DEG, FramePose
from skyloc.synth.appearance import BothValid, SeasonMap, apply_sensor, draw_appearance
from skyloc.synth.camera import Camera, attitude_camera, smooth_profile
from skyloc.synth.flight_path import fit_path
from skyloc.synth.output import open_output_map
from skyloc.synth.photometric import (
    PhotometricConfig,
    apply_params,
    draw_params,
    encode_jpeg,
)
from skyloc.synth.render import render_view
from skyloc.synth.world import WorldConfig


log = logging.getLogger(__name__)

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
    world_size_m: float = WorldConfig.size_m  # the procedural world used when no map is given
    world_mpp: float = WorldConfig.mpp
    appearance: str = "none"  # one of synth.appearance.APPEARANCES: another season / sensor than the map
    render_map: str | None = None  # render the frames from this image of the area (the run uses the map)
    lower_to_fit: bool = True  # no path fits: fly lower (with a warning) instead of failing


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


def _overlaps(m) -> bool:
    lat_min, lon_min, lat_max, lon_max = m.bounds_latlon()
    if lat_min >= lat_max or lon_min >= lon_max:
        return False
    la, lo = np.meshgrid(np.linspace(lat_min, lat_max, 33), np.linspace(lon_min, lon_max, 33))
    return bool(m.is_valid(la, lo).any())


def _fit(gmap, rng: np.random.Generator, cfg: FlightConfig, footprint: float):
    """(cfg, footprint, positions, headings, region, notes): the path at the asked altitude, else at
    the highest of a few lower ones that fits -- said in a warning and in flight.json's notes."""
    try:
        return (cfg, footprint, *fit_path(gmap, rng, cfg, footprint), [])
    except SkylocError as exc:
        if not cfg.lower_to_fit:
            raise
        first = exc
    lo, hi = _altitude_range(cfg)
    for f in (0.85, 0.7, 0.55, 0.4, 0.3):
        low = replace(cfg, altitude_m=cfg.altitude_m * f,
                      altitude_range_m=None if cfg.altitude_range_m is None else (lo * f, hi * f))
        fp = worst_footprint_m(low)
        try:
            pos, yaw, region = fit_path(gmap, rng, low, fp, waypoints=False)
        except SkylocError:
            continue
        lo2, hi2 = _altitude_range(low)
        note = (f"no path at {lo:.0f}-{hi:.0f} m keeps the whole {footprint:.0f} m camera footprint on the valid map; "
                f"flying at {lo2:.0f}-{hi2:.0f} m instead (set --altitude / --altitude-range or --fov to choose)")
        log.warning("synth flight: %s", note)
        return low, fp, pos, yaw, region, [note]
    raise SkylocError(f"{first} (no path fits down to {0.3 * lo:.0f} m either)")


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

    render_map = open_map(cfg.render_map) if cfg.render_map else gmap
    plan_map = BothValid(gmap, render_map) if cfg.render_map else gmap
    if cfg.render_map and not _overlaps(plan_map):
        raise SkylocError(f"flight: --render-map {cfg.render_map} does not overlap the map {gmap.source}; "
                          "give an image of the same area")

    # the first three streams are the ones earlier versions drew, so level track-yaw flights keep their path
    rng_path, rng_day, rng_noise, rng_att = (np.random.default_rng(s)
                                             for s in np.random.SeedSequence(cfg.seed).spawn(4))
    cfg, footprint, pos, track_yaw, region, notes = _fit(plan_map, rng_path, cfg, footprint)
    poses = frame_poses(cfg, rng_att, track_yaw)
    day = draw_params(rng_day, cfg.photometric)
    day.jpeg_quality = 0  # the video codec compresses already
    # its own stream (from the seed's 5th child), so flights without it keep their bytes
    rng_look = np.random.default_rng(np.random.SeedSequence(cfg.seed).spawn(5)[4])
    look = draw_appearance(cfg.appearance, rng_look)
    source = SeasonMap(render_map, look) if look.changes_ground or look.misregistration_m != (0.0, 0.0) else render_map

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
            rgb, valid = render_view(source, cam, region.lat0, region.lon0)
            if not valid.all():
                raise SkylocError(f"flight: frame {i} sees {int((~valid).sum())} pixels off the valid map "
                                  f"(validity grid {region.g:.1f} m too coarse for this map); raise --margin")
            frame = apply_sensor(apply_params(rgb, day, rng_noise), look, rng_look)
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
            "map": str(kept.relative_to(out)), "origin_latlon": [region.lat0, region.lon0], "config": asdict(cfg),
            # frames may come from another image of the area and through another season / sensor:
            # truth.csv stays in the map's frame (a misregistration shows up as a fix error)
            "render_map": str(Path(cfg.render_map).resolve()) if cfg.render_map else None,
            "appearance": asdict(look), "path_planner": region.planner, "notes": notes}
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
