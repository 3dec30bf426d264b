"""A University-1652-layout dataset rendered from any georeferenced map.

Each location gets one north-up satellite crop and K drone views with the camera aimed at the
target, plus photometric changes. `views` picks the drone views: "spiral" (default) along a
descending spiral (the U1652 recipe); "nadir" as the onboard camera sees them (runtime.synth.nadir:
random altitude in a range, gimbal tilt, some roll / pitch, any heading; raw camera frames, not
rectified); "mixed": the first K - K // 2 along the spiral, the rest nadir. DIR/poses.csv gives
every drone image's pose (altitude, roll, pitch, yaw, tilt; runtime.pose conventions) and
intrinsics (OpenCV pixel-centre convention), so training can rectify it as the runtime does
(runtime.rectify); the optical axis meets the ground at the location centre. Layout:

    DIR/train/satellite/<id>/<id>.jpg          DIR/train/drone/<id>/image-01.jpeg ... image-K.jpeg
    DIR/test/query_satellite/<id>/<id>.jpg     DIR/test/gallery_satellite/<id>/<id>.jpg (+ distractors)
    DIR/test/query_drone/<id>/image-NN.jpeg    DIR/test/gallery_drone/<id>/image-NN.jpeg (same files)
    DIR/locations.csv  DIR/poses.csv  DIR/synth.json  DIR/map/ (the map it was made from)

Drone images are numbered along the spiral: image-01 is the first, highest and farthest view.
A location is kept only when every pixel of its satellite crop and all its drone views is valid.
Nadir views fly each location as high as its clearance allows (synth.placement): at most the
range's top, never below its bottom. The dataset places the locations that fit (at least 2),
says how many in a warning and synth.json's notes, and names settings that work when none fit.
"""
from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
import json
import logging
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from skyloc.core import geo
from skyloc.core.errors import SkylocError
from skyloc.synth.camera import (
    Camera,
    SpiralConfig,
    mid_spiral_ground_width_m,
    spiral_cameras,
    spiral_extent_m,
)
from skyloc.synth.nadir import (
    NadirViewConfig,
    camera_model,
    nadir_ground_width_m,
    nadir_views,
    pose_from_camera,
)
from skyloc.synth.output import open_output_map
from skyloc.synth.photometric import PhotometricConfig, apply_photometric, encode_jpeg
from skyloc.synth.placement import NadirFit, Placer, placement_advice, square_valid
from skyloc.synth.render import render_view, view_is_valid
from skyloc.synth.valid_area import ValidArea
from skyloc.synth.world import WorldConfig


log = logging.getLogger(__name__)

LOCATION_COLUMNS = ["location_id", "split", "view", "file", "index", "lat", "lon", "cam_lat", "cam_lon",
                    "cam_alt_m", "cam_yaw_deg", "cam_pitch_deg", "fov_deg", "distance_m", "ground_size_m"]
POSE_COLUMNS = ["file", "location_id", "split", "kind", "altitude_m", "roll_deg", "pitch_deg", "yaw_deg", "tilt_deg",
                "fx", "fy", "cx", "cy", "width", "height", "ground_lat", "ground_lon", "cam_lat", "cam_lon"]
VIEW_KINDS = ("spiral", "nadir", "mixed")


@dataclass
class SynthDatasetConfig:
    locations: int = 40  # locations with drone views (train + test)
    drone_per_location: int = 12
    test_fraction: float = 0.5  # U1652 splits its 1402 buildings 701 / 701
    distractors: int | None = None  # satellite-only gallery locations; None: ceil(0.35 * test), as U1652's 250 / 701
    image_px: int = 256
    sat_size_m: float | None = None  # None: the ground width seen across the image centre mid-spiral
    min_separation_m: float | None = None  # None: half the satellite crop
    spiral: SpiralConfig = field(default_factory=SpiralConfig)
    views: str = "spiral"  # one of VIEW_KINDS
    nadir: NadirViewConfig = field(default_factory=NadirViewConfig)
    drone_photometric: PhotometricConfig = field(default_factory=PhotometricConfig)
    sat_photometric: PhotometricConfig = field(default_factory=lambda: PhotometricConfig(strength=0.25))
    jpeg_quality: int = 92
    seed: int = 0
    max_attempts: int = 300  # candidate draws per location before giving up
    overwrite: bool = False
    world_size_m: float = WorldConfig.size_m  # the procedural world used when no map is given
    world_mpp: float = WorldConfig.mpp

    def resolved_sat_size(self) -> float:
        if self.sat_size_m:
            return float(self.sat_size_m)
        # nadir-only datasets never fly the spiral: size the crop from the nadir settings
        return nadir_ground_width_m(self.nadir) if self.views == "nadir" else mid_spiral_ground_width_m(self.spiral)


@dataclass
class _Location:
    """One placed location, rendered and encoded (written once the split is known)."""

    lat: float
    lon: float
    sat: bytes
    views: list[bytes] = field(default_factory=list)
    cams: list[Camera] = field(default_factory=list)
    poses: list = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    top_m: float | None = None  # nadir views: the altitude cap fitted to the valid map around it


def _placement_notes(cfg: SynthDatasetConfig, fit: NadirFit | None, drones: list[_Location], n_test: int,
                     n_dis: int, want_dis: int, sep: float, source: str) -> list[str]:
    notes = []
    if len(drones) < cfg.locations or n_dis < want_dis:
        notes.append(f"placed {len(drones)} of {cfg.locations} locations with drone views ({n_test} test) and "
                     f"{n_dis} of {want_dis} distractors on {source}: the valid map holds no more at {sep:.0f} m "
                     f"spacing; for more, try --min-separation-m {_sep_for(sep, len(drones), cfg.locations):.0f} "
                     "(locations fit about in proportion to 1 / spacing^2) or a larger map")
    if fit is not None:
        low = [d.top_m for d in drones if d.top_m is not None and d.top_m < fit.hi_m - 1e-6]
        if low:
            notes.append(f"nadir views: {len(low)} of {len(drones)} locations fly below {fit.hi_m:.0f} m to keep "
                         f"their views on the valid map (lowest ceiling {min(low):.0f} m)")
    return notes


def _sep_for(sep: float, placed: int, want: int) -> float:
    return max(1.0, 0.8 * sep * math.sqrt(max(placed, 1) / want))


def _fmt(x: float | None, nd: int) -> str:
    return "" if x is None else f"{x:.{nd}f}"


def make_dataset(map_path: Path | str | None, out_dir: Path | str, cfg: SynthDatasetConfig) -> Path:
    """Render the dataset into out_dir (see module doc); returns out_dir. map_path None: procedural world."""
    out = Path(out_dir)
    K, px = int(cfg.drone_per_location), int(cfg.image_px)
    if cfg.locations < 2 or K < 1 or px < 16 or not 0 < cfg.test_fraction < 1:
        raise SkylocError(f"synth dataset: need locations >= 2 (got {cfg.locations}), drone views >= 1 ({K}), "
                          f"image_px >= 16 ({px}) and 0 < test_fraction < 1 ({cfg.test_fraction})")
    if cfg.views not in VIEW_KINDS:
        raise SkylocError(f"synth dataset: --views {cfg.views!r}: choose one of {', '.join(VIEW_KINDS)}")
    k_nadir = {"spiral": 0, "nadir": K, "mixed": K // 2}[cfg.views]
    k_spiral = K - k_nadir
    if k_nadir:
        cfg.nadir.check()
    gmap, kept = open_output_map(map_path, out, ("train", "test", "locations.csv", "poses.csv", "synth.json", "map"),
                                 cfg.overwrite, cfg.seed, cfg.world_size_m, cfg.world_mpp)

    sat_m = cfg.resolved_sat_size()
    spiral_reach = spiral_extent_m(cfg.spiral, k_spiral) if k_spiral else 0.0
    fit = NadirFit.of(cfg.nadir, px, px) if k_nadir else None
    # nadir views need only their lowest altitude's reach: each location's altitude is fitted below
    reach = max(spiral_reach, fit.reach_m(fit.lo_m) if fit else 0.0, sat_m / 2)  # the crop is north-up
    if math.isinf(reach):
        raise SkylocError("synth dataset: some drone views see the horizon; lower fov, raise the spiral pitch "
                          "or lower the nadir tilt / attitude")
    area = ValidArea(gmap)
    n_test = max(1, int(round(cfg.locations * cfg.test_fraction)))
    n_test = min(n_test, cfg.locations - 1)
    width = max(4, len(str(cfg.locations + (math.ceil(0.35 * n_test) if cfg.distractors is None
                                              else int(cfg.distractors)))))
    kw = max(2, len(str(K)))
    ss = np.random.SeedSequence(cfg.seed)
    # the 4th stream is new (nadir poses): spiral datasets keep the bytes of earlier versions
    rng_place, rng_split, rng_photo, rng_nadir = (np.random.default_rng(s) for s in ss.spawn(4))
    is_test = np.zeros(cfg.locations, bool)
    is_test[rng_split.permutation(cfg.locations)[:n_test]] = True
    sep = cfg.min_separation_m if cfg.min_separation_m is not None else 0.5 * sat_m
    placer = Placer(gmap, rng_place, sep)
    budget = 10 * cfg.max_attempts  # consecutive misses before the map counts as full

    def sat_image(lat: float, lon: float) -> bytes | None:
        rgb, valid = gmap.read_crop(lat, lon, sat_m, px)
        if not valid.all():
            return None
        return encode_jpeg(apply_photometric(rgb, rng_photo, cfg.sat_photometric), cfg.jpeg_quality)

    def drone_location(lat: float, lon: float) -> _Location | None:
        nadir_cfg, top = cfg.nadir, None
        if fit is not None:
            top = fit.top_altitude_m(area.clearance_at(lat, lon))
            if top is None:
                return None
            nadir_cfg = fit.config_up_to(top)
        bearing = float(rng_place.uniform(0, 360))
        cams = spiral_cameras(cfg.spiral, k_spiral, px, start_bearing_deg=bearing) if k_spiral else []
        kinds = ["spiral"] * len(cams) + ["nadir"] * k_nadir
        poses = [pose_from_camera(c) for c in cams]
        for c, p in nadir_views(rng_nadir, nadir_cfg, k_nadir, px, px):
            cams.append(c)
            poses.append(p)
        if not all(view_is_valid(gmap, c, lat, lon) for c in cams):
            return None
        views = []
        for c in cams:
            rgb, valid = render_view(gmap, c, lat, lon)
            if not valid.all():
                return None
            views.append(rgb)
        sat = sat_image(lat, lon)
        if sat is None:
            return None
        data = [encode_jpeg(apply_photometric(rgb, rng_photo, cfg.drone_photometric), cfg.jpeg_quality)
                for rgb in views]
        return _Location(lat, lon, sat, data, cams, poses, kinds, top)

    def place(want: int, desc: str, make, margin: float) -> list:
        got: list = []
        misses = 0
        with tqdm(total=want, desc=desc, unit="loc") as bar:
            while len(got) < want and misses < budget:
                cand = placer.draw(margin)
                loc = None
                if cand is not None and square_valid(gmap, cand[0], cand[1], sat_m):
                    loc = make(*cand)
                if loc is None:
                    misses += 1
                    continue
                got.append(loc)
                placer.accept(loc.lat, loc.lon)
                misses = 0
                bar.update(1)
        return got

    drones: list[_Location] = place(cfg.locations, "synth dataset", drone_location, reach)
    if len(drones) < 2:
        raise SkylocError(f"synth dataset: placed only {len(drones)} of {cfg.locations} locations on {gmap.source}: "
                          + placement_advice(area, sat_m, spiral_reach, cfg.spiral.scale, fit, sep))
    if len(drones) < cfg.locations:
        n_test = min(max(1, int(round(len(drones) * cfg.test_fraction))), len(drones) - 1)
        is_test = np.zeros(len(drones), bool)
        is_test[rng_split.permutation(len(drones))[:n_test]] = True
    n_dis = math.ceil(0.35 * n_test) if cfg.distractors is None else int(cfg.distractors)

    def distractor(lat: float, lon: float) -> _Location | None:
        sat = sat_image(lat, lon)
        return None if sat is None else _Location(lat, lon, sat)

    dist: list[_Location] = place(n_dis, "distractors", distractor, sat_m / 2)
    notes = _placement_notes(cfg, fit, drones, n_test, len(dist), n_dis, sep, gmap.source)
    for note in notes:
        log.warning("synth dataset: %s", note)

    rows: list[list[str]] = []
    pose_rows: list[list[str]] = []

    def sat_row(loc: str, split: str, file: str, lat: float, lon: float) -> list[str]:
        return [loc, split, "satellite", file, "0", _fmt(lat, 8), _fmt(lon, 8)] + [""] * 7 + [_fmt(sat_m, 3)]

    for i, d in enumerate(drones):
        loc = f"{i + 1:0{width}d}"
        split = "test" if is_test[i] else "train"
        sat_dirs = ("query_satellite", "gallery_satellite") if is_test[i] else ("satellite",)
        drone_dirs = ("query_drone", "gallery_drone") if is_test[i] else ("drone",)
        for sd in sat_dirs:
            _write(out / split / sd / loc / f"{loc}.jpg", d.sat)
        rows.append(sat_row(loc, split, f"{split}/{sat_dirs[0]}/{loc}/{loc}.jpg", d.lat, d.lon))
        for j, (c, data) in enumerate(zip(d.cams, d.views), start=1):
            name = f"image-{j:0{kw}d}.jpeg"
            for dd in drone_dirs:
                _write(out / split / dd / loc / name, data)
            file = f"{split}/{drone_dirs[0]}/{loc}/{name}"
            rows.append(_drone_row(loc, split, file, j, d.lat, d.lon, c))
            pose_rows.append(_pose_row(file, loc, split, d.kinds[j - 1], d.poses[j - 1], c, d.lat, d.lon))
    for i, d in enumerate(dist, start=len(drones) + 1):
        loc = f"{i:0{width}d}"
        _write(out / "test" / "gallery_satellite" / loc / f"{loc}.jpg", d.sat)
        rows.append(sat_row(loc, "distractor", f"test/gallery_satellite/{loc}/{loc}.jpg", d.lat, d.lon))

    with open(out / "locations.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(LOCATION_COLUMNS)
        w.writerows(rows)
    with open(out / "poses.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(POSE_COLUMNS)
        w.writerows(pose_rows)
    source = gmap.describe()
    src = Path(source["source"]).resolve()
    source["source"] = str(src.relative_to(out.resolve())) if out.resolve() in src.parents else str(src)
    meta = {"kind": "skyloc-synth-dataset", "map": str(kept.relative_to(out)), "map_source": source,
            "sat_size_m": sat_m, "reach_m": reach, "train_locations": len(drones) - n_test,
            "test_locations": n_test, "distractors": len(dist), "requested_locations": cfg.locations,
            "requested_distractors": n_dis, "notes": notes,
            "nadir_top_altitude_m": [d.top_m for d in drones] if fit else None, "config": asdict(cfg)}
    (out / "synth.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    return out


def _drone_row(loc: str, split: str, file: str, index: int, lat: float, lon: float, c: Camera) -> list[str]:
    cam_lat, cam_lon = geo.local_m_to_latlon(c.east_m, c.north_m, lat, lon)
    return [loc, split, "drone", file, str(index), _fmt(lat, 8), _fmt(lon, 8), _fmt(cam_lat, 8), _fmt(cam_lon, 8),
            _fmt(c.alt_m, 3), _fmt(c.yaw_deg, 3), _fmt(c.pitch_deg, 3), _fmt(c.fov_deg, 3),
            _fmt(math.hypot(c.east_m, c.north_m), 3), ""]


def _pose_row(file: str, loc: str, split: str, kind: str, pose, c: Camera, lat: float, lon: float) -> list[str]:
    """poses.csv row: the view's pose (blank when it has none, e.g. a spiral view flatter than the
    tilt limit) and intrinsics; ground = where the optical axis meets the ground (the target)."""
    k = camera_model(c)
    ge, gn, _ = c.ground_points(np.array(c.width / 2), np.array(c.height / 2))
    g_lat, g_lon = geo.local_m_to_latlon(float(ge), float(gn), lat, lon)
    cam_lat, cam_lon = geo.local_m_to_latlon(c.east_m, c.north_m, lat, lon)
    vals = ([""] * 5 if pose is None else
            [_fmt(pose.altitude_m, 3), _fmt(pose.roll_deg, 4), _fmt(pose.pitch_deg, 4), _fmt(pose.yaw_deg, 4),
             _fmt(pose.camera_tilt_deg, 4)])
    return ([file, loc, split, kind] + vals + [_fmt(k.fx, 4), _fmt(k.fy, 4), _fmt(k.cx, 4), _fmt(k.cy, 4),
                                              str(k.width), str(k.height), _fmt(float(g_lat), 8), _fmt(float(g_lon), 8),
                                              _fmt(float(cam_lat), 8), _fmt(float(cam_lon), 8)])


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
