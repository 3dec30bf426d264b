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
"""
from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from skyloc.core import geo
from skyloc.core.errors import SkylocError
from skyloc.runtime.maps.geotiff import GeoTiffMap
from skyloc.runtime.maps.base import GeoMap
from skyloc.runtime.maps.mosaic import TiledMap, write_corners_csv
from skyloc.runtime.maps.open import open_map
from skyloc.synth.camera import (Camera, SpiralConfig, mid_spiral_ground_width_m, spiral_cameras,
                                   spiral_extent_m)
from skyloc.synth.nadir import NadirViewConfig, camera_model, nadir_extent_m, nadir_views, pose_from_camera
from skyloc.synth.photometric import PhotometricConfig, apply_photometric, encode_jpeg
from skyloc.synth.render import render_view, view_is_valid
from skyloc.synth.world import make_world

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
    world_size_m: float = 1500.0  # the procedural world used when no map is given
    world_mpp: float = 1.0

    def resolved_sat_size(self) -> float:
        return float(self.sat_size_m) if self.sat_size_m else mid_spiral_ground_width_m(self.spiral)


def prepare_out(out: Path, names: tuple[str, ...], overwrite: bool, keep: Path | None) -> None:
    """Make out ready: refuse (or, with overwrite, delete) our previous outputs in it.

    A folder holding `keep` (the input map, e.g. OUT/map from `skyloc synth world`) is left alone.
    """
    def holds_input(p: Path) -> bool:
        return keep is not None and p.resolve() in keep.resolve().parents

    present = [out / n for n in names if (out / n).exists() and not holds_input(out / n)]
    if present and not overwrite:
        raise SkylocError(f"{out} already holds output ({present[0].name}); pass --overwrite or another --out")
    for p in present:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def keep_map_copy(gmap: GeoMap, dest: Path) -> Path:
    """Copy the map's files into dest (a folder) so the output carries its source; returns the map path."""
    dest.mkdir(parents=True, exist_ok=True)
    if isinstance(gmap, GeoTiffMap):
        src = Path(gmap.source)
        for side in (src, src.with_name(src.name + ".ovr"), src.with_name(src.name + ".aux.xml")):
            if side.is_file() and side.resolve() != (dest / side.name).resolve():
                shutil.copyfile(side, dest / side.name)
        return dest / src.name
    if isinstance(gmap, TiledMap) and all(t.path is not None for t in gmap.tiles):
        rows = []
        for t in gmap.tiles:
            rel = Path(t.filename)
            name = rel.name if rel.is_absolute() or ".." in rel.parts else str(rel)  # stay inside dest
            target = dest / name
            if t.path.resolve() != target.resolve():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(t.path, target)
            rows.append((name, t.tl_lat, t.tl_lon, t.br_lat, t.br_lon))
        csv_path = dest / "map.csv"
        if Path(gmap.source).resolve() != csv_path.resolve():
            write_corners_csv(csv_path, rows)
        return csv_path
    raise SkylocError(f"map {gmap.source}: only file-backed maps can be copied into the output")


def resolve_map(map_path: Path | str | None, out_dir: Path, seed: int, size_m: float = 1500.0,
                mpp: float = 1.0) -> Path:
    """The map to use: the given one, or the built-in procedural world generated into out_dir/map."""
    if map_path is not None:
        return Path(map_path)
    return make_world(out_dir / "map", seed=seed, size_m=size_m, mpp=mpp)


def open_output_map(map_path: Path | str | None, out: Path, names: tuple[str, ...], overwrite: bool,
                    seed: int, world_size_m: float, world_mpp: float) -> tuple[GeoMap, Path]:
    """Open the source map (or make the procedural world in OUT), prepare OUT and keep a copy of
    the map in OUT/map. A bad map fails before OUT is touched."""
    gmap = open_map(map_path) if map_path is not None else None
    prepare_out(out, names, overwrite, Path(map_path) if map_path is not None else None)
    if gmap is None:
        gmap = open_map(resolve_map(None, out, seed, world_size_m, world_mpp))
    return gmap, keep_map_copy(gmap, out / "map")


class _Placer:
    """Dart throwing of location centres in local metres, with validity and separation checks."""

    def __init__(self, gmap: GeoMap, rng: np.random.Generator, sep_m: float) -> None:
        self.gmap, self.rng, self.sep = gmap, rng, sep_m
        lat_min, lon_min, lat_max, lon_max = gmap.bounds_latlon()
        self.lat0, self.lon0 = 0.5 * (lat_min + lat_max), 0.5 * (lon_min + lon_max)
        self.west, self.north = geo.latlon_to_local_m(lat_max, lon_min, self.lat0, self.lon0)
        self.east, self.south = geo.latlon_to_local_m(lat_min, lon_max, self.lat0, self.lon0)
        self.taken: list[tuple[float, float]] = []

    def draw(self, margin_m: float) -> tuple[float, float] | None:
        """A candidate (lat, lon) at least margin_m inside the bounds and sep_m from the others."""
        lo_e, hi_e = self.west + margin_m, self.east - margin_m
        lo_n, hi_n = self.south + margin_m, self.north - margin_m
        if lo_e >= hi_e or lo_n >= hi_n:
            return None
        e, n = self.rng.uniform(lo_e, hi_e), self.rng.uniform(lo_n, hi_n)
        if any(math.hypot(e - a, n - b) < self.sep for a, b in self.taken):
            return None
        lat, lon = geo.local_m_to_latlon(e, n, self.lat0, self.lon0)
        return float(lat), float(lon)

    def accept(self, lat: float, lon: float) -> None:
        e, n = geo.latlon_to_local_m(lat, lon, self.lat0, self.lon0)
        self.taken.append((float(e), float(n)))


def _square_valid(gmap: GeoMap, lat: float, lon: float, size_m: float, probes: int = 9) -> bool:
    g = np.linspace(-size_m / 2, size_m / 2, probes)
    e, n = np.meshgrid(g, g)
    la, lo = geo.local_m_to_latlon(e, n, lat, lon)
    return bool(gmap.is_valid(la, lo).all())


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
    reach = max(spiral_extent_m(cfg.spiral, k_spiral) if k_spiral else 0.0,
                nadir_extent_m(cfg.nadir, px, px) if k_nadir else 0.0, sat_m / math.sqrt(2))
    if math.isinf(reach):
        raise SkylocError("synth dataset: some drone views see the horizon; lower fov, raise the spiral pitch "
                          "or lower the nadir tilt / attitude")
    n_test = max(1, int(round(cfg.locations * cfg.test_fraction)))
    n_test = min(n_test, cfg.locations - 1)
    n_dis = math.ceil(0.35 * n_test) if cfg.distractors is None else int(cfg.distractors)
    total = cfg.locations + n_dis
    width = max(4, len(str(total)))
    kw = max(2, len(str(K)))
    ss = np.random.SeedSequence(cfg.seed)
    # the 4th stream is new (nadir poses): spiral datasets keep the bytes of earlier versions
    rng_place, rng_split, rng_photo, rng_nadir = (np.random.default_rng(s) for s in ss.spawn(4))
    is_test = np.zeros(cfg.locations, bool)
    is_test[rng_split.permutation(cfg.locations)[:n_test]] = True
    sep = cfg.min_separation_m if cfg.min_separation_m is not None else 0.5 * sat_m
    placer = _Placer(gmap, rng_place, sep)
    rows: list[list[str]] = []
    pose_rows: list[list[str]] = []

    def sat_image(lat: float, lon: float) -> bytes | None:
        rgb, valid = gmap.read_crop(lat, lon, sat_m, px)
        if not valid.all():
            return None
        return encode_jpeg(apply_photometric(rgb, rng_photo, cfg.sat_photometric), cfg.jpeg_quality)

    def sat_row(loc: str, split: str, file: str, lat: float, lon: float) -> list[str]:
        return [loc, split, "satellite", file, "0", _fmt(lat, 8), _fmt(lon, 8)] + [""] * 7 + [_fmt(sat_m, 3)]

    with tqdm(total=total, desc="synth dataset", unit="loc") as bar:
        placed = 0
        attempts = 0
        while placed < total:
            attempts += 1
            if attempts > cfg.max_attempts * total:
                raise SkylocError(
                    f"synth dataset: placed only {placed} of {total} locations on {gmap.source} (valid area too "
                    f"small for views reaching {reach:.0f} m at {sep:.0f} m spacing); lower --locations, "
                    "--spiral-scale or --min-separation")
            drone = placed < cfg.locations
            cand = placer.draw(reach if drone else sat_m / math.sqrt(2))
            if cand is None:
                continue
            lat, lon = cand
            if not _square_valid(gmap, lat, lon, sat_m):
                continue
            loc = f"{placed + 1:0{width}d}"
            if not drone:
                sat = sat_image(lat, lon)
                if sat is None:
                    continue
                _write(out / "test" / "gallery_satellite" / loc / f"{loc}.jpg", sat)
                rows.append(sat_row(loc, "distractor", f"test/gallery_satellite/{loc}/{loc}.jpg", lat, lon))
            else:
                bearing = float(rng_place.uniform(0, 360))
                cams = spiral_cameras(cfg.spiral, k_spiral, px, start_bearing_deg=bearing) if k_spiral else []
                kinds = ["spiral"] * len(cams) + ["nadir"] * k_nadir
                poses = [pose_from_camera(c) for c in cams]
                for c, p in nadir_views(rng_nadir, cfg.nadir, k_nadir, px, px):
                    cams.append(c)
                    poses.append(p)
                if not all(view_is_valid(gmap, c, lat, lon) for c in cams):
                    continue
                views = []
                for c in cams:
                    rgb, valid = render_view(gmap, c, lat, lon)
                    if not valid.all():
                        break
                    views.append(rgb)
                if len(views) < K:
                    continue
                sat = sat_image(lat, lon)
                if sat is None:
                    continue
                test = bool(is_test[placed])
                split = "test" if test else "train"
                sat_dirs = ("query_satellite", "gallery_satellite") if test else ("satellite",)
                drone_dirs = ("query_drone", "gallery_drone") if test else ("drone",)
                for d in sat_dirs:
                    _write(out / split / d / loc / f"{loc}.jpg", sat)
                rows.append(sat_row(loc, split, f"{split}/{sat_dirs[0]}/{loc}/{loc}.jpg", lat, lon))
                for i, (c, rgb) in enumerate(zip(cams, views), start=1):
                    data = encode_jpeg(apply_photometric(rgb, rng_photo, cfg.drone_photometric), cfg.jpeg_quality)
                    name = f"image-{i:0{kw}d}.jpeg"
                    for d in drone_dirs:
                        _write(out / split / d / loc / name, data)
                    file = f"{split}/{drone_dirs[0]}/{loc}/{name}"
                    rows.append(_drone_row(loc, split, file, i, lat, lon, c))
                    pose_rows.append(_pose_row(file, loc, split, kinds[i - 1], poses[i - 1], c, lat, lon))
            placer.accept(lat, lon)
            placed += 1
            bar.update(1)

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
            "sat_size_m": sat_m, "reach_m": reach, "train_locations": cfg.locations - n_test,
            "test_locations": n_test, "distractors": n_dis, "config": asdict(cfg)}
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
