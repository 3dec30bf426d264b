"""What the per-frame pipeline takes and gives: `LocalizerOptions` (its knobs, the `skyloc run` flags
they derive) and `Fix` (everything decided about one frame: the record before JSON)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from skyloc.runtime.localize.retrieval import SearchWindow
from skyloc.runtime.register.features import FeatureConf, LightGlueConf
from skyloc.runtime.register.learned import LearnedConf
from skyloc.runtime.register.ncc import NccConf

from skyloc.core.errors import SkylocError
from skyloc.core.options import check_options, group_fields, opt, opt_group


def parse_start(start: tuple[float, ...] | None) -> SearchWindow | None:
    """--start LAT,LON[,RADIUS_M] -> the search window (default radius 500 m); SkylocError when invalid."""
    if start is None:
        return None
    if len(start) not in (2, 3) or not all(math.isfinite(v) for v in start):
        raise SkylocError(f"--start {start}: need LAT,LON[,RADIUS_M] with finite numbers")
    lat, lon = start[0], start[1]
    radius = start[2] if len(start) == 3 else 500.0
    if not (-90 <= lat <= 90 and -180 <= lon <= 180 and radius > 0):
        raise SkylocError(f"--start {start}: latitude in [-90, 90], longitude in [-180, 180], radius > 0")
    return SearchWindow(float(lat), float(lon), float(radius))


@dataclass
class LocalizerOptions:
    """The per-frame pipeline's knobs; RunOptions (runtime/run/loop.py) extends it with the run's own.
    The `skyloc run` flags are derived from these fields (skyloc/core/options.py)."""

    k: int = opt(20, "tiles fetched per rotation and scale level (distinct places are taken from them)", ge=1)
    candidates: int = opt(3, "distinct places registered against the map imagery per frame", ge=1)
    acquire_candidates: int = opt(8, "...while no recent verified fix predicts the place (acquisition: "
                                     "slower frames until the track is found)", ge=1)
    rotations: int = opt(8, "rotations embedded in one batch when the heading is unknown", ge=1, le=72)
    distinct_m: float | None = opt(None, "two tiles are distinct places when their centres are farther "
                                         "apart than this, metres [the tile side]", gt=0)
    window_m: float | None = opt(None, "search only within this radius (+ max speed x elapsed) of the last "
                                       "accepted fix, metres; 0 searches the whole map [the tile side]", ge=0)
    window_margin: float = opt(0.02, "...unless a tile outside the window scores higher by more than this",
                               ge=0, le=2)
    start: tuple[float, ...] | None = opt(None, "start prior LAT,LON[,RADIUS_M]: search only there until "
                                                "the first accepted fix [radius 500 m]", metavar="LAT,LON[,R]")
    refine_m: float | None = opt(None, "retrieval-only fix = score-weighted centre of the hits this close to "
                                       "the best tile, metres; 0 = the best tile's centre [1.5 x stride]", ge=0)
    register: bool = opt(True, "register candidates against the map imagery; --no-register: retrieval only "
                               "(every fix unverified: never accepted, never sent as a 3D fix)")
    registrar: str = opt("auto", "registration method (runtime/register/registry.py): auto = the learned "
                                 "registrar when the tile set carries map features (`skyloc tiles --matcher`), "
                                 "else ncc")
    matcher: str | None = opt(None, "matcher ONNX of the learned registrar [the one the tile set's map features "
                                    "record]", metavar="M.onnx")
    whole_map_km2: float = opt(2.0, "with no track and no start prior to scan, match the frame against the whole "
                                    "map's stored features when the map is at most this large, km^2 (0: never; measured at 43k "
                                    "keypoints/km^2: ~1 s per frame up to 2 km^2 heading known, ~8 s at 1 km^2 unknown)",
                               ge=0, le=1000)
    register_px: int = opt(160, "side of the tile-sized patch registered against the map, pixels", ge=32, le=2048)
    register_max_px: int = opt(64, "registration works at no finer than the tile side / this many pixels "
                                   "(a 95 m tile at 1.5 m/px: the same metre-level fix at half the cost)", ge=16)
    register_deadline_s: float = opt(10.0, "the register stage spends at most this long on a frame (plus one "
                                           "registration hypothesis): no further candidate place is started "
                                           "and the search in progress ends with its best so far, unverified "
                                           "(the record says why and which were left; 0: no limit), seconds",
                                      ge=0, le=3600)
    max_accuracy_m: float = opt(5.0, "a registration claiming a worse 1-sigma accuracy than this is not "
                                     "trusted (the fix stays unverified), metres", gt=0)
    heading_tol_deg: float = opt(5.0, "registration's heading search around the known / estimated heading, "
                                       "degrees", ge=0, le=180)
    scale_tol: float = opt(0.03, "registration's relative scale search (altitude error)", ge=0, lt=1)
    max_speed_mps: float = opt(30.0, "m/s; fixes implying a faster move (beyond their accuracies) are rejected",
                               gt=0, le=1000, flag="--max-speed")
    accel_mps2: float = opt(3.0, "filter process noise: unmodelled acceleration, m/s^2", gt=0, le=100,
                            flag="--accel")
    gate_sigmas: float = opt(3.0, "speed gate slack in accuracy sigmas (candidate + track)", ge=0, le=100)
    noise_m: float = opt(0.0, "extra fixed slack of the speed gate, metres", ge=0)
    confirm: int = opt(2, "a new track's fixes are accepted once this many agree (the first alone is "
                          "'tentative', never sent)", ge=1, le=100)
    scan_m: float = opt(400.0, "until the first verified fix, also register the frame over the whole start "
                                "prior when its radius is at most this, metres (a map scan: seconds per frame "
                                "with the heading unknown; 0: never)", ge=0)
    acquire_full_circle: bool = opt(True, "with the heading unknown and no track yet, registration searches "
                                          "every heading (slower, until the first verified fix)")
    track_s: float = opt(3.0, "register around the track's predicted position first while its last verified "
                               "fix is at most this old, seconds (0: never)", ge=0, le=600)
    max_rejections: int = opt(5, "re-initialise the filter after this many consistent rejections in a row",
                              ge=1)
    min_confidence: float | None = opt(None, "reject fixes whose score margin to another place is below this",
                                       ge=-2, le=2)
    blank_cos: float = opt(0.95, "skip a frame whose embedding has this cosine (or more) with the embedding "
                                  "of a blank (black, grey, white) image", gt=0, le=1)
    use_heading: bool = opt(True, "use the heading of the pose source; --no-heading ignores every heading "
                                  "source (compass failure) and searches the rotations", flag="--heading")
    index: str = opt("auto", "tile search index", choices=("auto", "exact", "flat", "hnsw", "ivfpq"))
    blas_threads: int = opt(1, "BLAS threads of the tile search, capped process-wide while localizing "
                               "(threads fighting the model's for the cores cost 10-40x; 0: leave as is)",
                            ge=0, le=1024)
    # each registrar's own options, its Conf the one source of their defaults: --ncc-min-ratio, a
    # [run.ncc] table; only the chosen registrar's are used (registrar_conf)
    ncc: NccConf = opt_group(NccConf, "NCC registrar (--registrar ncc) options")
    features: FeatureConf = opt_group(FeatureConf, "SIFT / ORB registrar (--registrar sift|orb) options")
    lightglue: LightGlueConf = opt_group(LightGlueConf, "ALIKED / DISK + LightGlue registrar "
                                                        "(--registrar lightglue|aliked|disk) options")
    xfeat: LearnedConf = opt_group(LearnedConf, "learned registrar (--registrar xfeat, or auto on a tile set "
                                                "with map features) options; its matcher is --matcher")

    def __post_init__(self) -> None:
        check_options(self)
        if self.start is not None:
            parse_start(self.start)
        for g, cls in group_fields(type(self)):
            conf = getattr(self, g.name)
            if type(conf) is not cls:
                raise SkylocError(f"{type(self).__name__}.{g.name}: expected {cls.__name__}, got {type(conf).__name__}")
            for f in dataclasses.fields(cls):  # set by the run itself (the registrar's name, --matcher)
                if not f.metadata.get("cli", True) and getattr(conf, f.name) != f.default:
                    raise SkylocError(f"{g.name}.{f.name} = {getattr(conf, f.name)!r}: not an option here (the "
                                      f"registrar's name or --matcher sets it); leave it out of the config")

    def registrar_conf(self, name: str) -> dict[str, Any]:
        """The options of registrar `name` (registry.py) as make_registrar(name, **conf) takes them: the
        fields of its Conf group, less those the run sets itself (cli=False: detector, onnx)."""
        from skyloc.runtime.register.registry import registrar_class

        conf_cls = registrar_class(name).Conf
        for g, cls in group_fields(type(self)):
            if cls is conf_cls:
                conf = getattr(self, g.name)
                return {f.name: getattr(conf, f.name) for f in dataclasses.fields(cls) if f.metadata.get("cli", True)}
        return {}


@dataclass
class Fix:
    """Everything the pipeline decided about one frame (the record, before JSON)."""

    frame: int
    time_s: float
    source: str = ""
    skipped: str | None = None
    error: str | None = None
    lat: float | None = None  # aircraft: filtered when accepted, else this frame's estimate
    lon: float | None = None
    raw_lat: float | None = None  # aircraft, this frame's estimate before the filter
    raw_lon: float | None = None
    ground_lat: float | None = None  # the ground point under the optical axis (patch centre)
    ground_lon: float | None = None
    heading_deg: float | None = None
    heading_source: str | None = None  # outputs.schema.HeadingSource
    accuracy_m: float | None = None  # 1-sigma of lat/lon
    raw_accuracy_m: float | None = None  # 1-sigma of raw_lat/raw_lon
    verified: bool = False
    accepted: bool = False
    reason: str | None = None
    score: float | None = None
    confidence: float | None = None
    tile: int | None = None
    scale_level: float | None = None
    scale_source: str | None = None  # outputs.schema.ScaleSource
    coverage_m: float | None = None
    speed_mps: float | None = None
    vn_mps: float | None = None  # track velocity north / east (accepted fixes)
    ve_mps: float | None = None
    window_m: float | None = None
    registration: dict[str, Any] | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)

    @property
    def send_3d(self) -> bool:
        """Only a verified, accepted fix with finite numbers may go out as a 3D position."""
        nums = (self.lat, self.lon, self.accuracy_m)
        return bool(self.verified and self.accepted and self.skipped is None
                    and all(v is not None and math.isfinite(v) for v in nums))
