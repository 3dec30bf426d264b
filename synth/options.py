"""`skyloc synth world|dataset|flight` options: one dataclass per subcommand (flags, `--config` tables
`[synth.world]` / `[synth.dataset]` / `[synth.flight]`, the resolved config).

The flags keep their old spellings (`--altitude`, `--alt-start`, `--nadir-fov`...), so the fields are
named after the flags; every default is read from the synth dataclass that owns the value
(WorldConfig, SynthDatasetConfig with its SpiralConfig / NadirViewConfig / PhotometricConfig,
FlightConfig), never written here a second time. `to_config()` starts from that dataclass's
defaults and replaces only what a flag sets, so a value without a flag keeps its one default.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from skyloc.core.errors import SkylocError
from skyloc.core.options import _flag, check_options, opt
from skyloc.synth.appearance import APPEARANCES
from skyloc.synth.dataset import VIEW_KINDS, SynthDatasetConfig
from skyloc.synth.flight import YAW_MODES, FlightConfig
from skyloc.synth.world import WorldConfig

_W, _D, _F = WorldConfig(), SynthDatasetConfig(), FlightConfig()
_S, _N = _D.spiral, _D.nadir

# Ranges: what a flag may take at all (finite always); the synth modules check the combinations.
SEED = {"ge": 0, "le": 2**32 - 1}  # numpy seeds are non-negative
COUNT = {"ge": 1, "le": 1_000_000}
METRES = {"gt": 0, "le": 100_000}
FOV = {"gt": 0, "lt": 180}
TILT = {"ge": 0, "le": 75}
STRENGTH = {"ge": 0, "le": 10}  # photometric change strength (0 = off)


def _check_min_max(obj: Any, name: str) -> None:
    """A MIN,MAX field: two values, MIN <= MAX (each value's range is its opt's)."""
    v = getattr(obj, name)
    if v is None:
        return
    f = next(f for f in obj.__dataclass_fields__.values() if f.name == name)
    where = f"{type(obj).__name__}.{name} ({_flag(f)})"
    if len(v) != 2:
        raise SkylocError(f"{where} = {v!r}: expected MIN,MAX (two numbers)")
    if v[0] > v[1]:
        raise SkylocError(f"{where} = {v[0]:g},{v[1]:g}: MIN is above MAX")


@dataclass
class SynthWorldOptions:
    """`skyloc synth world`: the procedural map (OUT/map.png + OUT/map.csv)."""

    out: Path | None = opt(None, "output folder (required)")
    seed: int = opt(_W.seed, "world seed", **SEED)
    size_m: float = opt(_W.size_m, "side of the square world in metres", **METRES)
    mpp: float = opt(_W.mpp, "metres per pixel", gt=0, le=1000)
    lat: float = opt(_W.lat, "latitude of the world's centre", ge=-85, le=85)
    lon: float = opt(_W.lon, "longitude of the world's centre", ge=-180, le=180)

    def __post_init__(self) -> None:
        check_options(self)


@dataclass
class _SynthOutOptions:
    """What dataset and flight share: the map, the output folder and the fallback procedural world."""

    map: Path | None = opt(None, "GeoTIFF, corners CSV, folder with map.csv, or PNG/JPEG with <stem>.csv "
                                 "(default: the procedural world, generated into OUT/map)")
    out: Path | None = opt(None, "output folder (required)")
    overwrite: bool = opt(False, "replace a dataset / flight already in OUT")


@dataclass
class SynthDatasetOptions(_SynthOutOptions):
    """`skyloc synth dataset`: a University-1652-layout dataset rendered from a map."""

    seed: int = opt(_D.seed, "dataset seed", **SEED)
    world_size_m: float = opt(_D.world_size_m, "procedural world side (no --map)", **METRES)
    world_mpp: float = opt(_D.world_mpp, "procedural world metres per pixel (no --map)", gt=0, le=1000)
    locations: int = opt(_D.locations, "locations with drone views (train + test)", **COUNT)
    drone_per_location: int = opt(_D.drone_per_location, "drone views along the spiral", **COUNT)
    test_fraction: float = opt(_D.test_fraction, "share of the locations in the test split", gt=0, lt=1)
    distractors: int | None = opt(_D.distractors, "satellite-only gallery locations (default: 35%% of the test "
                                                  "locations)", ge=0, le=1_000_000)
    image_px: int = opt(_D.image_px, "side of every output image", ge=16, le=8192)
    sat_size_m: float | None = opt(_D.sat_size_m, "ground side of the satellite crop (default: width seen "
                                                  "mid-spiral, or by the nadir views with --views nadir)", **METRES)
    min_separation_m: float | None = opt(_D.min_separation_m, "minimum distance between locations (default: half "
                                                              "the satellite crop)", ge=0, le=100_000)
    spiral_scale: float = opt(_S.scale, "scales altitudes, radii and footprints", gt=0, le=100)
    alt_start: float = opt(_S.altitude_start_m, "first (highest) view altitude, m", **METRES)
    alt_end: float = opt(_S.altitude_end_m, "last view altitude, m", **METRES)
    pitch_start: float = opt(_S.pitch_start_deg, "first view's depression, deg", gt=0, le=90)
    pitch_end: float = opt(_S.pitch_end_deg, "last view's depression, deg", gt=0, le=90)
    radius_start: float | None = opt(_S.radius_start_m, "first view's horizontal distance to the target, m "
                                                        "(overrides the pitches)", ge=0, le=100_000)
    radius_end: float | None = opt(_S.radius_end_m, "last view's horizontal distance, m", ge=0, le=100_000)
    turns: float = opt(_S.turns, "revolutions around the target", ge=0, le=100)
    fov: float = opt(_S.fov_deg, "drone camera field of view, deg", **FOV)
    views: str = opt(_D.views, "drone views: the U1652 spiral, onboard-like downward frames (random altitude, "
                               "tilt, roll / pitch, any heading; poses in poses.csv), or half of each",
                     choices=VIEW_KINDS)
    nadir_altitude_range: tuple[float, ...] = opt(_N.altitude_range_m, "nadir views: altitude range, m",
                                                  metavar="MIN,MAX", **METRES)
    nadir_tilt_max: float = opt(_N.tilt_max_deg, "nadir views: largest gimbal tilt, deg", **TILT)
    nadir_attitude: float = opt(_N.attitude_deg, "nadir views: airframe roll / pitch drawn in +- this, deg",
                                ge=0, le=45)
    nadir_fov: float = opt(_N.fov_deg, "nadir views: horizontal field of view, deg", **FOV)
    photometric: float = opt(_D.drone_photometric.strength, "strength of drone photometric changes (0 = off)",
                             **STRENGTH)
    jpeg_quality: int = opt(_D.jpeg_quality, "JPEG quality of the written images", ge=1, le=100)

    def __post_init__(self) -> None:
        check_options(self)
        _check_min_max(self, "nadir_altitude_range")

    def to_config(self) -> SynthDatasetConfig:
        """The dataset config: SynthDatasetConfig's defaults with what these options set."""
        d = SynthDatasetConfig()  # fresh: the nested configs are not shared between runs
        return replace(
            d, locations=self.locations, drone_per_location=self.drone_per_location,
            test_fraction=self.test_fraction, distractors=self.distractors, image_px=self.image_px,
            sat_size_m=self.sat_size_m, min_separation_m=self.min_separation_m,
            spiral=replace(d.spiral, altitude_start_m=self.alt_start, altitude_end_m=self.alt_end,
                           pitch_start_deg=self.pitch_start, pitch_end_deg=self.pitch_end, turns=self.turns,
                           fov_deg=self.fov, scale=self.spiral_scale, radius_start_m=self.radius_start,
                           radius_end_m=self.radius_end),
            views=self.views,
            nadir=replace(d.nadir, altitude_range_m=tuple(self.nadir_altitude_range), tilt_max_deg=self.nadir_tilt_max,
                          attitude_deg=self.nadir_attitude, fov_deg=self.nadir_fov),
            drone_photometric=replace(d.drone_photometric, strength=self.photometric),
            jpeg_quality=self.jpeg_quality, seed=self.seed, overwrite=self.overwrite,
            world_size_m=self.world_size_m, world_mpp=self.world_mpp)


@dataclass
class SynthFlightOptions(_SynthOutOptions):
    """`skyloc synth flight`: a simulated flight video + truth.csv over a map."""

    seed: int = opt(_F.seed, "flight seed", **SEED)
    world_size_m: float = opt(_F.world_size_m, "procedural world side (no --map)", **METRES)
    world_mpp: float = opt(_F.world_mpp, "procedural world metres per pixel (no --map)", gt=0, le=1000)
    seconds: float = opt(_F.seconds, "flight length, s", gt=0, le=86_400)
    fps: float = opt(_F.fps, "frames per second", gt=0, le=1000)
    altitude: float = opt(_F.altitude_m, "metres above ground", **METRES)
    speed: float = opt(_F.speed_mps, "ground speed, m/s", ge=0, le=1000)
    fov: float = opt(_F.fov_deg, "horizontal field of view, deg", **FOV)
    width: int = opt(_F.width, "frame width, px", ge=16, le=8192)
    height: int = opt(_F.height, "frame height, px", ge=16, le=8192)
    tilt: float = opt(_F.tilt_deg, "forward tilt from nadir, deg (the lowest with --tilt-max)", **TILT)
    tilt_max: float | None = opt(_F.tilt_max_deg, "let the camera tilt wander smoothly between --tilt and this, "
                                                  "deg (max 75)", **TILT)
    altitude_range: tuple[float, ...] | None = opt(_F.altitude_range_m, "let the altitude wander smoothly in this "
                                                                        "range, m (overrides --altitude)",
                                                   metavar="MIN,MAX", **METRES)
    attitude: float = opt(_F.attitude_deg, "airframe roll and pitch wander within +- this, deg (camera fixed to "
                                           "the airframe)", ge=0, le=45)
    yaw_mode: str = opt(_F.yaw_mode, "aircraft heading: along the track, turning on its own (smooth random yaw "
                                     "rate), or fixed", choices=YAW_MODES)
    yaw_rate: float = opt(_F.yaw_rate_max_dps, "random-walk: largest yaw rate, deg/s", ge=0, le=3600)
    margin: float = opt(_F.margin_m, "clearance beyond the footprint, m", ge=0, le=10_000)
    photometric: float = opt(_F.photometric.strength, "strength of the flight's look change", **STRENGTH)
    frames: bool = opt(_F.write_frames, "also write every frame as OUT/frames/NNNNNN.jpg")
    appearance: str = opt(_F.appearance, "frames from another season (colour, vegetation, moved shadows, haze), "
                                         "another sensor (resolution, blur, noise, JPEG) or both plus a small "
                                         "misregistration (full); seeded, recorded in flight.json",
                          choices=APPEARANCES)
    render_map: Path | None = opt(_F.render_map, "render the frames from this other image of the area (GeoTIFF / "
                                                 "corners CSV); the run registers against --map")

    def __post_init__(self) -> None:
        check_options(self)
        _check_min_max(self, "altitude_range")

    def to_config(self) -> FlightConfig:
        """The flight config: FlightConfig's defaults with what these options set."""
        f = FlightConfig()
        return replace(
            f, seconds=self.seconds, fps=self.fps, altitude_m=self.altitude, speed_mps=self.speed, fov_deg=self.fov,
            width=self.width, height=self.height, tilt_deg=self.tilt, tilt_max_deg=self.tilt_max,
            altitude_range_m=None if self.altitude_range is None else tuple(self.altitude_range),
            attitude_deg=self.attitude, yaw_mode=self.yaw_mode, yaw_rate_max_dps=self.yaw_rate, margin_m=self.margin,
            seed=self.seed, write_frames=self.frames, overwrite=self.overwrite,
            photometric=replace(f.photometric, strength=self.photometric),
            world_size_m=self.world_size_m, world_mpp=self.world_mpp, appearance=self.appearance,
            render_map=None if self.render_map is None else str(self.render_map))


OPTIONS: dict[str, type] = {"world": SynthWorldOptions, "dataset": SynthDatasetOptions, "flight": SynthFlightOptions}
