"""The fix record: one JSON object per frame, written by `skyloc run` (JSON lines, UDP).

This table is the one definition of the record: the loop puts `schema = SCHEMA_VERSION` on
every record, `validate_record` checks a record against it, `skyloc report` reads it, and the
README's "Fix record" section is generated from it (`schema_markdown()`). Change a field's
meaning or unit -> bump the version; adding an optional field keeps it.

Time base: `time_s` is the frame's capture time in seconds on the source's own clock (telemetry
and truth join on it): image folders the EXIF DateTimeOriginal (+SubSec) when the images have one
(seconds since 1970 on the camera's clock), else frame number / fps; videos the container
timestamp; live sources seconds since the source opened. `capture_unix_s`, when present, is the
absolute UTC capture time (live: the wall clock at grab; EXIF with its UTC offset).
`latency_ms` are wall durations measured in this process. Positions are WGS84 degrees; distances
metres; angles degrees, headings clockwise from true north.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Mapping

from skyloc.core.errors import SkylocError
from skyloc.runtime.register.registry import REGISTRARS

SCHEMA_VERSION = "skyloc.fix/2"
# Versions whose records `skyloc report` still reads (v1 = records without a `schema` field).
READABLE_VERSIONS = ("skyloc.fix/1", SCHEMA_VERSION)



# The closed sets of values a record carries. Defined once here: the localizer, the filter, the
# outputs (GPS_INPUT yaw, NMEA heading), the report and the tests import them, so a spelling
# cannot drift between the module that writes a value and the one that acts on it. StrEnum
# members are plain strings (JSON, ==, f-strings all see the value).
class HeadingSource(StrEnum):
    """`heading_source`: where `heading_deg` came from."""
    POSE = "pose"  # telemetry / EXIF / --yaw: the autopilot's own heading
    ROTATION_SEARCH = "rotation-search"  # best of the embedded rotations (a 360/R-degree guess)
    REGISTRATION = "registration"  # measured by the map registration (what GPS_INPUT.yaw carries)


class ScaleSource(StrEnum):
    """`scale_source`: how the tile scale level was chosen."""
    COVERAGE = "coverage"  # largest level the frame covers (camera model + altitude)
    GSD = "gsd"  # no camera model: --gsd
    SEARCH = "search"  # altitude unknown: every level tried


class SkipReason(StrEnum):
    """`skipped`: why a frame made no match."""
    UNREADABLE = "unreadable"
    CORRUPT = "corrupt"
    EMPTY = "empty"
    GRAYSCALE = "grayscale"
    TOO_SMALL = "too-small"
    WRONG_SIZE = "wrong-size"
    DTYPE = "dtype"
    NAN = "nan"
    NON_FINITE = "non-finite"
    LOW_CONTRAST = "low-contrast"
    SATURATED = "saturated"
    LOW_TEXTURE = "low-texture"
    BLANK_EMBEDDING = "blank-embedding"
    NO_MATCH = "no-match"
    NO_POSE = "no-pose"
    NO_COVERAGE = "no-coverage"
    DEADLINE = "deadline"  # the per-frame search deadline passed with nothing to vouch for
    ERROR = "error"


class FixStatus(StrEnum):
    """`reason`: what the temporal filter decided about a fix (null = accepted on the track)."""
    INIT = "init"
    REINIT = "reinit"
    TENTATIVE = "tentative"
    SPEED = "speed"
    LOW_CONFIDENCE = "low-confidence"
    NON_FINITE = "non-finite"
    UNVERIFIED = "unverified"  # registration did not vouch (or retrieval only): never accepted
    OUTSIDE_PRIOR = "outside-prior"  # retrieval-only fix outside the start prior before any track


# Registrar names: the registry's own keys (one row per plugin there), never retyped.
REGISTRAR_NAMES: tuple[str, ...] = tuple(REGISTRARS)
SKIP_REASONS = tuple(SkipReason)

# The stages a record may time, named as Localizer.step's stages (embed = preprocess + infer);
# `total` is the whole frame, grab included.
LATENCY_STAGES = ("grab", "pose", "quality", "rectify", "preprocess", "infer", "retrieve", "register", "filter",
                  "total")


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str  # int | float | str | bool | dict[str, float] | object
    unit: str
    meaning: str
    when: str = "always"  # always | fix (a match was made: not skipped) | optional
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] | None = None  # the closed set a str field takes its value from


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("schema", "str", "", f"record format and version, `{SCHEMA_VERSION}`"),
    FieldSpec("frame", "int", "", "frame index from the source, from 0", lo=0),
    FieldSpec("time_s", "float", "s", "capture time on the source's clock (see time base)", lo=0),
    FieldSpec("capture_unix_s", "float", "s", "absolute UTC capture time (seconds since 1970) when known",
              when="optional", lo=0),
    FieldSpec("source", "str", "", "the source's name (file, camera, stream)"),
    FieldSpec("latency_ms", "dict[str, float]", "ms",
              f"wall time per stage that ran: {', '.join(LATENCY_STAGES)} (total = the whole frame)"),
    FieldSpec("skipped", "str", "", "why no match was made; absent on a fix", when="optional",
              choices=tuple(SkipReason)),
    FieldSpec("error", "str", "", "the exception text when skipped = error", when="optional"),
    FieldSpec("lat", "float", "deg", "aircraft latitude: the filtered fix when accepted, the raw match otherwise",
              when="fix", lo=-90, hi=90),
    FieldSpec("lon", "float", "deg", "aircraft longitude (as lat)", when="fix", lo=-180, hi=180),
    FieldSpec("raw_lat", "float", "deg", "aircraft latitude of this frame's match, before the temporal filter",
              when="optional", lo=-90, hi=90),
    FieldSpec("raw_lon", "float", "deg", "aircraft longitude before the filter", when="optional", lo=-180, hi=180),
    FieldSpec("ground_lat", "float", "deg", "latitude of the ground point under the optical axis (matched patch centre)",
              when="optional", lo=-90, hi=90),
    FieldSpec("ground_lon", "float", "deg", "longitude of that ground point", when="optional", lo=-180, hi=180),
    FieldSpec("accepted", "bool", "", "the temporal filter accepted the fix (it is on the track)", when="fix"),
    FieldSpec("reason", "str", "", "why the filter decided so (null when accepted on the track)",
              when="optional", choices=tuple(FixStatus)),
    FieldSpec("verified", "bool", "", "a geometric registration against the map imagery confirmed the match",
              when="optional"),
    FieldSpec("send_3d", "bool", "", "sent to the autopilot as a 3D position (verified, accepted, finite)",
              when="optional"),
    FieldSpec("accuracy_m", "float", "m", "estimated 1-sigma horizontal error of lat/lon", when="optional", lo=0),
    FieldSpec("raw_accuracy_m", "float", "m", "estimated 1-sigma error of raw_lat/raw_lon", when="optional", lo=0),
    FieldSpec("heading_deg", "float", "deg", "aircraft heading used or estimated, clockwise from true north [0, 360)",
              when="optional", lo=0, hi=360),
    FieldSpec("heading_source", "str", "", "where the heading came from: pose (telemetry / EXIF / "
              "flags), rotation-search (best of the embedded rotations), registration (map registration; "
              "the only heading GPS_INPUT.yaw / NMEA HDT carry)", when="optional", choices=tuple(HeadingSource)),
    FieldSpec("pose_source", "str", "", "where the frame's pose came from: field=source pairs (telemetry, "
              "mavlink, exif, flags); `none` when no source gave a value (scale and heading then searched)",
              when="optional"),
    FieldSpec("score", "float", "", "cosine similarity of the best tile", when="optional", lo=-1.0001, hi=1.0001),
    FieldSpec("confidence", "float", "", "score margin to the best tile of a distinct place", when="optional"),
    FieldSpec("tile", "int", "", "index of the best tile in the tile set", when="optional", lo=0),
    FieldSpec("scale_level", "float", "", "tile size multiplier of the best tile (tile set --scales)",
              when="optional", lo=0),
    FieldSpec("scale_source", "str", "", "how the scale level was chosen: coverage (largest the "
              "frame covers), gsd (no camera model: --gsd), search (altitude unknown: every level tried)",
              when="optional", choices=tuple(ScaleSource)),
    FieldSpec("coverage_m", "float", "m", "side of the ground square the frame fully covers", when="optional", lo=0),
    FieldSpec("registration", "object", "", "the geometric registration's details (method, inliers, score, ...)",
              when="optional"),
    FieldSpec("vn_mps", "float", "m/s", "track velocity north (accepted fixes)", when="optional"),
    FieldSpec("ve_mps", "float", "m/s", "track velocity east (accepted fixes)", when="optional"),
    FieldSpec("speed_mps", "float", "m/s", "speed implied by this fix and the last accepted one", when="optional",
              lo=0),
    FieldSpec("window_m", "float", "m", "radius of the search window around the track, when it was used",
              when="optional", lo=0),
    FieldSpec("north_up_deg", "float", "deg", "the heading the frame was turned north-up by", when="optional"),
    FieldSpec("aircraft_lat", "float", "deg", "(v1) aircraft latitude when lat was the ground point",
              when="optional", lo=-90, hi=90),
    FieldSpec("aircraft_lon", "float", "deg", "(v1) aircraft longitude", when="optional", lo=-180, hi=180),
    FieldSpec("truth_error_m", "float", "m", "distance from raw_lat/raw_lon to the true aircraft position "
              "(--truth runs)", when="optional", lo=0),
    FieldSpec("truth_filtered_error_m", "float", "m", "distance from lat/lon to the true aircraft position",
              when="optional", lo=0),
    FieldSpec("truth_ground_error_m", "float", "m", "distance from ground_lat/ground_lon to the true ground point "
              "under the image centre", when="optional", lo=0),
)
FIELD_BY_NAME: dict[str, FieldSpec] = {f.name: f for f in FIELDS}

_PY_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _check_value(spec: FieldSpec, value: Any, where: str) -> None:
    if spec.type == "dict[str, float]":
        if not isinstance(value, Mapping):
            raise SkylocError(f"{where}: {spec.name} must be an object of numbers, got {value!r}")
        for k, v in value.items():
            if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)) \
                    or not math.isfinite(v) or v < 0:
                raise SkylocError(f"{where}: {spec.name}[{k!r}] = {v!r} must be a finite number >= 0")
        return
    if spec.type == "object":
        if not isinstance(value, Mapping):
            raise SkylocError(f"{where}: {spec.name} must be an object, got {value!r}")
        return
    types_ = _PY_TYPES[spec.type]
    if isinstance(value, bool) and spec.type != "bool" or not isinstance(value, types_):
        raise SkylocError(f"{where}: {spec.name} = {value!r} must be {spec.type}")
    if spec.type in ("int", "float"):
        if not math.isfinite(value):
            raise SkylocError(f"{where}: {spec.name} = {value!r} must be finite")
        if spec.lo is not None and not value >= spec.lo:
            raise SkylocError(f"{where}: {spec.name} = {value!r} must be >= {spec.lo}")
        if spec.hi is not None and not value <= spec.hi:
            raise SkylocError(f"{where}: {spec.name} = {value!r} must be <= {spec.hi}")
    if spec.choices is not None and value not in spec.choices:
        raise SkylocError(f"{where}: {spec.name} = {value!r} is not one of {', '.join(spec.choices)}")


def validate_record(rec: Mapping[str, Any], where: str = "fix record", strict: bool = False) -> dict[str, Any]:
    """Check one record against the schema; return it as a dict. Raises SkylocError naming the field.

    Records without `schema` are read as v1 (before the field existed). Unknown fields are
    allowed (a newer writer may add optional ones) unless `strict`. `null` is allowed for
    optional fields. A record is either skipped (has `skipped`) or a fix (has every `fix` field).
    """
    if not isinstance(rec, Mapping):
        raise SkylocError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    version = rec.get("schema", "skyloc.fix/1")
    if version not in READABLE_VERSIONS:
        raise SkylocError(f"{where}: schema {version!r} is not one this skyloc reads ({', '.join(READABLE_VERSIONS)}); "
                          f"upgrade skyloc")
    for spec in FIELDS:
        if spec.name not in rec:
            if spec.when == "always" and not (spec.name == "schema" and version == "skyloc.fix/1"):
                raise SkylocError(f"{where}: required field {spec.name!r} is missing")
            continue
        value = rec[spec.name]
        if value is None:
            if spec.when == "always":
                raise SkylocError(f"{where}: field {spec.name!r} must not be null")
            continue
        _check_value(spec, value, where)
    skipped = rec.get("skipped")
    if skipped is None:
        missing = [s.name for s in FIELDS if s.when == "fix" and rec.get(s.name) is None]
        if missing:
            raise SkylocError(f"{where}: neither skipped nor a complete fix (missing {', '.join(missing)})")
    if strict:
        unknown = sorted(set(rec) - set(FIELD_BY_NAME))
        if unknown:
            raise SkylocError(f"{where}: unknown fields {unknown} for {version}")
    return dict(rec)


def schema_markdown() -> str:
    """The README's fix-record table, generated from FIELDS."""
    head = __doc__.split("\n\n", 2)[2].strip() if __doc__ else ""
    lines = [f"Schema `{SCHEMA_VERSION}` (field `schema` on every record; records without it are v1).",
             "", head, "",
             "| field | type | unit | present | meaning |", "|---|---|---|---|---|"]
    present = {"always": "always", "fix": "on a fix", "optional": "when known"}
    for f in FIELDS:
        meaning = f.meaning + (f" ({', '.join(f'`{c}`' for c in f.choices)})" if f.choices else "")
        lines.append(f"| `{f.name}` | {f.type} | {f.unit} | {present[f.when]} | {meaning} |")
    return "\n".join(lines) + "\n"
