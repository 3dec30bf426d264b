"""`skyloc synth world|dataset|flight`: the procedural map, a University-1652-layout dataset, a flight.

A thin layer over make_world / make_dataset / make_flight. Without --map, dataset and flight
generate the built-in procedural world into OUT/map and use it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from skyloc.core.errors import SkylocError
from skyloc.core.options import HelpFormatter, number
from skyloc.synth.appearance import APPEARANCES
from skyloc.synth.camera import SpiralConfig
from skyloc.synth.nadir import NadirViewConfig
from skyloc.synth.world import DEFAULT_LAT, DEFAULT_LON


# Every numeric flag goes through core.options.number (finite, in range; argparse names the flag and
# exits 2 before anything is written).
SEED = number(int, ge=0, le=2**32 - 1)  # numpy seeds are non-negative
COUNT = number(int, ge=1, le=1_000_000)
METRES = number(gt=0, le=100_000)
FOV = number(gt=0, lt=180)
STRENGTH = number(ge=0, le=10)  # photometric change strength (0 = off)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="synth_command", required=True, metavar="{world,dataset,flight}")
    fmt = HelpFormatter  # defaults shown only when they say something

    w = sub.add_parser("world", help="write the procedural world (map.png + map.csv)", formatter_class=fmt)
    w.add_argument("--out", type=Path, required=True, help="output folder")
    w.add_argument("--seed", type=SEED, default=0)
    w.add_argument("--size-m", type=number(gt=0, le=100_000), default=1500.0, help="side of the square world in metres")
    w.add_argument("--mpp", type=number(gt=0, le=1000), default=1.0, help="metres per pixel")
    w.add_argument("--lat", type=number(ge=-85, le=85), default=DEFAULT_LAT, help="latitude of the world's centre")
    w.add_argument("--lon", type=number(ge=-180, le=180), default=DEFAULT_LON, help="longitude of the world's centre")

    s = SpiralConfig()
    d = sub.add_parser("dataset", help="University-1652-layout dataset rendered from a map", formatter_class=fmt)
    _common(d)
    d.add_argument("--locations", type=COUNT, default=40, help="locations with drone views (train + test)")
    d.add_argument("--drone-per-location", type=COUNT, default=12, help="drone views along the spiral")
    d.add_argument("--test-fraction", type=number(gt=0, lt=1), default=0.5)
    d.add_argument("--distractors", type=number(int, ge=0, le=1_000_000), default=None,
                   help="satellite-only gallery locations (default: 35%% of the test locations)")
    d.add_argument("--image-px", type=number(int, ge=16, le=8192), default=256, help="side of every output image")
    d.add_argument("--sat-size-m", type=METRES, default=None,
                   help="ground side of the satellite crop (default: width seen mid-spiral)")
    d.add_argument("--min-separation-m", type=number(ge=0, le=100_000), default=None,
                   help="minimum distance between locations (default: half the satellite crop)")
    d.add_argument("--spiral-scale", type=number(gt=0, le=100), default=s.scale, help="scales altitudes, radii and footprints")
    d.add_argument("--alt-start", type=METRES, default=s.altitude_start_m, help="first (highest) view altitude, m")
    d.add_argument("--alt-end", type=METRES, default=s.altitude_end_m, help="last view altitude, m")
    d.add_argument("--pitch-start", type=number(gt=0, le=90), default=s.pitch_start_deg, help="first view's depression, deg")
    d.add_argument("--pitch-end", type=number(gt=0, le=90), default=s.pitch_end_deg, help="last view's depression, deg")
    d.add_argument("--radius-start", type=number(ge=0, le=100_000), default=None,
                   help="first view's horizontal distance to the target, m (overrides the pitches)")
    d.add_argument("--radius-end", type=number(ge=0, le=100_000), default=None, help="last view's horizontal distance, m")
    d.add_argument("--turns", type=number(ge=0, le=100), default=s.turns, help="revolutions around the target")
    d.add_argument("--fov", type=FOV, default=s.fov_deg, help="drone camera field of view, deg")
    d.add_argument("--views", choices=("spiral", "nadir", "mixed"), default="spiral",
                   help="drone views: the U1652 spiral, onboard-like downward frames (random altitude, tilt, "
                        "roll / pitch, any heading; poses in poses.csv), or half of each")
    n = NadirViewConfig()
    d.add_argument("--nadir-altitude-range", type=_range, default=n.altitude_range_m, metavar="MIN,MAX",
                   help="nadir views: altitude range, m")
    d.add_argument("--nadir-tilt-max", type=number(ge=0, le=75), default=n.tilt_max_deg, help="nadir views: largest gimbal tilt, deg")
    d.add_argument("--nadir-attitude", type=number(ge=0, le=45), default=n.attitude_deg,
                   help="nadir views: airframe roll / pitch drawn in +- this, deg")
    d.add_argument("--nadir-fov", type=FOV, default=n.fov_deg, help="nadir views: horizontal field of view, deg")
    d.add_argument("--photometric", type=STRENGTH, default=1.0, help="strength of drone photometric changes (0 = off)")
    d.add_argument("--jpeg-quality", type=number(int, ge=1, le=100), default=92)

    f = sub.add_parser("flight", help="simulated flight video + truth.csv over a map", formatter_class=fmt)
    _common(f)
    f.add_argument("--seconds", type=number(gt=0, le=86_400), default=30.0)
    f.add_argument("--fps", type=number(gt=0, le=1000), default=10.0)
    f.add_argument("--altitude", type=METRES, default=120.0, help="metres above ground")
    f.add_argument("--speed", type=number(ge=0, le=1000), default=12.0, help="ground speed, m/s")
    f.add_argument("--fov", type=FOV, default=60.0, help="horizontal field of view, deg")
    f.add_argument("--width", type=number(int, ge=16, le=8192), default=320)
    f.add_argument("--height", type=number(int, ge=16, le=8192), default=240)
    f.add_argument("--tilt", type=number(ge=0, le=75), default=0.0, help="forward tilt from nadir, deg (the lowest with --tilt-max)")
    f.add_argument("--tilt-max", type=number(ge=0, le=75), default=None,
                   help="let the camera tilt wander smoothly between --tilt and this, deg (max 75)")
    f.add_argument("--altitude-range", type=_range, default=None, metavar="MIN,MAX",
                   help="let the altitude wander smoothly in this range, m (overrides --altitude)")
    f.add_argument("--attitude", type=number(ge=0, le=45), default=0.0,
                   help="airframe roll and pitch wander within +- this, deg (camera fixed to the airframe)")
    f.add_argument("--yaw-mode", choices=("track", "random-walk", "fixed"), default="track",
                   help="aircraft heading: along the track, turning on its own (smooth random yaw rate), or fixed")
    f.add_argument("--yaw-rate", type=number(ge=0, le=3600), default=15.0, help="random-walk: largest yaw rate, deg/s")
    f.add_argument("--margin", type=number(ge=0, le=10_000), default=5.0, help="clearance beyond the footprint, m")
    f.add_argument("--photometric", type=STRENGTH, default=0.5, help="strength of the flight's look change")
    f.add_argument("--frames", action="store_true", help="also write every frame as OUT/frames/NNNNNN.jpg")
    f.add_argument("--appearance", choices=APPEARANCES, default="none",
                   help="frames from another season (colour, vegetation, moved shadows, haze), another sensor "
                        "(resolution, blur, noise, JPEG) or both plus a small misregistration (full); seeded, "
                        "recorded in flight.json")
    f.add_argument("--render-map", type=Path, default=None,
                   help="render the frames from this other image of the area (GeoTIFF / corners CSV); "
                        "the run registers against --map")


def _pair(text: str) -> tuple[float, float]:
    try:
        a, b = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX (two numbers), got {text!r}") from None
    return a, b


def _range(text: str) -> tuple[float, float]:
    """MIN,MAX altitudes: finite, > 0, MIN <= MAX."""
    a, b = _pair(text)
    for v in (a, b):
        number(gt=0, le=100_000)(repr(v))
    if a > b:
        raise argparse.ArgumentTypeError(f"{text!r}: MIN {a:g} is above MAX {b:g}")
    return a, b


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--map", type=Path, default=None,
                   help="GeoTIFF, corners CSV, folder with map.csv, or PNG/JPEG with <stem>.csv "
                        "(default: the procedural world, generated into OUT/map)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--world-size-m", type=number(gt=0, le=100_000), default=1500.0, help="procedural world side (no --map)")
    p.add_argument("--world-mpp", type=number(gt=0, le=1000), default=1.0, help="procedural world metres per pixel (no --map)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset / flight already in OUT")


def _check_out(args: argparse.Namespace) -> None:
    """--out is a folder: an existing file there (the map's CSV, an image) is refused before anything is written."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SkylocError(f"--out {out} is a file, not a folder: give the folder to write the "
                          f"{args.synth_command} into (nothing was written)")


def main(args: argparse.Namespace) -> int:
    _check_out(args)
    if args.synth_command == "world":
        from skyloc.synth.world import make_world

        path = make_world(args.out, seed=args.seed, size_m=args.size_m, mpp=args.mpp, lat=args.lat, lon=args.lon)
        print(f"wrote {path} and {path.with_name('map.png')}")
        return 0
    if args.synth_command == "dataset":
        from skyloc.synth.dataset import SynthDatasetConfig, make_dataset
        from skyloc.synth.photometric import PhotometricConfig

        cfg = SynthDatasetConfig(
            locations=args.locations, drone_per_location=args.drone_per_location, test_fraction=args.test_fraction,
            distractors=args.distractors, image_px=args.image_px, sat_size_m=args.sat_size_m,
            min_separation_m=args.min_separation_m,
            spiral=SpiralConfig(altitude_start_m=args.alt_start, altitude_end_m=args.alt_end,
                                pitch_start_deg=args.pitch_start, pitch_end_deg=args.pitch_end,
                                turns=args.turns, fov_deg=args.fov, scale=args.spiral_scale,
                                radius_start_m=args.radius_start, radius_end_m=args.radius_end),
            views=args.views,
            nadir=NadirViewConfig(altitude_range_m=args.nadir_altitude_range, tilt_max_deg=args.nadir_tilt_max,
                                  attitude_deg=args.nadir_attitude, fov_deg=args.nadir_fov),
            drone_photometric=PhotometricConfig(strength=args.photometric), jpeg_quality=args.jpeg_quality,
            seed=args.seed, overwrite=args.overwrite, world_size_m=args.world_size_m, world_mpp=args.world_mpp)
        out = make_dataset(args.map, args.out, cfg)
        import json

        meta = json.loads((out / "synth.json").read_text())
        print(f"wrote dataset {out}: {meta['train_locations']} train + {meta['test_locations']} test locations "
              f"(of {meta['requested_locations']} asked), {meta['distractors']} distractors "
              "(locations.csv, poses.csv, synth.json, map/)")
        return 0
    from skyloc.synth.flight import FlightConfig, make_flight
    from skyloc.synth.photometric import PhotometricConfig

    cfg = FlightConfig(seconds=args.seconds, fps=args.fps, altitude_m=args.altitude, speed_mps=args.speed,
                       fov_deg=args.fov, width=args.width, height=args.height, tilt_deg=args.tilt,
                       tilt_max_deg=args.tilt_max, altitude_range_m=args.altitude_range, attitude_deg=args.attitude,
                       yaw_mode=args.yaw_mode, yaw_rate_max_dps=args.yaw_rate,
                       margin_m=args.margin, seed=args.seed, write_frames=args.frames, overwrite=args.overwrite,
                       photometric=PhotometricConfig(strength=args.photometric, jpeg_quality=(80, 95)),
                       world_size_m=args.world_size_m, world_mpp=args.world_mpp, appearance=args.appearance,
                       render_map=str(args.render_map) if args.render_map else None)
    video = make_flight(args.map, args.out, cfg)
    print(f"wrote {video}, {video.with_name('truth.csv')}, {video.with_name('flight.json')}")
    return 0
