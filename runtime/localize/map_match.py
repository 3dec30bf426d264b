"""The learned registrar in the run path: which registrar `Localizer` registers with, the map
features it matches against, and the register stage's stored-feature registration.

With a tile set that carries map features (`skyloc tiles --matcher`, runtime/maps/map_features.py)
`--registrar auto` (the default) is the learned registrar on the recorded matcher; only the frame
goes through the extractor onboard and it is matched against the stored features inside the
candidate's window (start prior, track prediction, retrieved places) or, with no track and no
prior to scan, the whole map when it is small (`whole_map_km2`). Without map features, `auto` is
NCC; `--registrar ncc|sift|xfeat` still picks (a learned registrar without stored features
extracts the map crop on the fly).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from skyloc.core.errors import SkylocError

AUTO = "auto"
LEARNED = ("xfeat", "learned")
LEARNED_MAX_PX = 512  # the frame patch's tile side for the learned registrar, at most (extraction cost)
# its patch spans up to 2.5 tile sides with the heading unknown (heading-up: a tile is ~0.55 of the
# frame's short ground side, so 2.5 sides hold its long side too; 2 cut it: aerovloc / Turku at 250 m,
# 14-15 -> 16 of 20 frames verified), 2 with it known (north-up; extraction goes with the area, and the
# ResNet-50 INT8 flight's frame -> fix with 2.5 took 2.6x inference alone, the goal is 2.5x); <= 768 px
LEARNED_PAD, LEARNED_PAD_HEADING, LEARNED_MAX_SIDE_PX = 2.5, 2.0, 768


def is_learned(registrar: Any) -> bool:
    return registrar is not None and callable(getattr(registrar, "register_keypoints", None))


def registrar_fingerprint(registrar: Any) -> str | None:
    """The matcher fingerprint (sha256 of its ONNX) a learned registrar extracts with, if it says."""
    ext = getattr(registrar, "extractor", None)
    fp = getattr(ext, "fingerprint", None) or getattr(registrar, "fingerprint", None)
    return str(fp) if fp else None


def _matcher_for(opt: Any, tiles: Any) -> Path:
    if getattr(opt, "matcher", None):
        return Path(opt.matcher)
    rec = (tiles.meta or {}).get("map_features") or {}
    m = rec.get("matcher")
    where = tiles.path or "the tile set"
    if not m:
        raise SkylocError(f"registrar {opt.registrar!r}: {where} records no matcher ONNX; pass --matcher M.onnx "
                          f"(`skyloc export matcher`) or --registrar ncc")
    p = Path(m)
    if not p.exists() and tiles.path is not None and (Path(tiles.path).parent / p.name).exists():
        p = Path(tiles.path).parent / p.name  # moved together with the tile set
    if not p.exists():
        raise SkylocError(f"matcher {m} that {where} records is not there; pass --matcher M.onnx (the matcher its "
                          f"map features were extracted with) or --registrar ncc")
    return p


def open_registration(opt: Any, tiles: Any, imagery: Any, registrar: Any = None, map_features: Any = None
                      ) -> tuple[Any, Any]:
    """(registrar, map features or None) for a Localizer; nothing without imagery (retrieval only)."""
    from skyloc.runtime.maps.map_features import MapFeatures
    from skyloc.runtime.register.registry import make_registrar

    if imagery is None:
        return registrar, None
    name = str(opt.registrar).lower()
    has_features = bool((tiles.meta or {}).get("map_features")) or map_features is not None
    if registrar is None:
        if name == AUTO:
            name = LEARNED[0] if has_features else "ncc"
        conf = opt.registrar_conf(name) if hasattr(opt, "registrar_conf") else {}  # --ncc-*, [run.ncc], ...
        if name in LEARNED:
            conf["onnx"] = str(_matcher_for(opt, tiles))
        registrar = make_registrar(name, **conf)
    if not is_learned(registrar) or not has_features:
        return registrar, None
    fp = registrar_fingerprint(registrar)
    if map_features is None:
        map_features = MapFeatures.for_tileset(tiles.path, tiles.meta, fp)
    elif fp is not None and map_features.fingerprint != fp:
        raise SkylocError(f"map features {map_features.path} were extracted by matcher {map_features.fingerprint[:12]}"
                          f"... but the registrar's matcher is {fp[:12]}...; use the same matcher")
    return registrar, map_features


def register_px_for(opt: Any, map_features: Any, sides_m: list[float]) -> int:
    """Pixels a side of the registered patch: `register_px`, or for stored features the largest
    tile side at their m/px (the patch is then extracted at about the map's resolution), capped."""
    if map_features is None or not sides_m:
        return int(opt.register_px)
    want = int(math.ceil(max(sides_m) / map_features.mpp))
    return int(max(opt.register_px, min(LEARNED_MAX_PX, want)))


def patch_pad_for(map_features: Any, register_px: int, heading_known: bool = False) -> float:
    """How many tile sides the rectified patch spans: 1 (NCC registers one tile), up to LEARNED_PAD
    (LEARNED_PAD_HEADING with the heading known) with stored map features: the frame usually sees
    more ground than one tile (a tile fits inside the frame at any heading) and every keypoint of
    it helps; ground the frame did not see is marked invalid, so the registrar extracts nothing there."""
    if map_features is None:
        return 1.0
    pad = LEARNED_PAD_HEADING if heading_known else LEARNED_PAD
    return float(max(1.0, min(pad, LEARNED_MAX_SIDE_PX / max(1, register_px))))


def whole_map_window(stage: Any) -> tuple[float, float, float, float] | None:
    """(lat, lon, half east, half north) of the whole map's stored features when the stage may
    match against them all: no track to predict, no start prior to scan, a small map."""
    mf = getattr(stage, "map_features", None)
    if mf is None or not (0 < mf.area_km2 <= stage.opt.whole_map_km2):
        return None
    w, h = mf.extent_m
    lat, lon = mf.centre
    return lat, lon, 0.5 * w + 1.0, 0.5 * h + 1.0


def register_stored(stage: Any, patch: Any, lat: float, lon: float, half_e_m: float, half_n_m: float,
                    tol: float, scale_tol: float, deadline: float | None = None) -> Any:
    """Register the patch against the stored map features inside the north-up rectangle around
    (lat, lon); offsets are metres of the patch centre from (lat, lon)."""
    mf = stage.map_features
    kp = mf.window(lat, lon, half_e_m, half_n_m)
    shape = mf.window_shape(half_e_m, half_n_m)
    return stage.registrar.register_keypoints(patch, kp, mf.mpp, shape, None, tol, scale_tol, deadline=deadline)


def registration_view(stage: Any, patch: Any) -> Any:
    """What is registered of the frame's patch: NCC takes the tile-sized centre square (its
    template); the learned registrar takes the whole patch (its valid mask marks the ground the
    frame saw: with the heading unknown the patch is sqrt(2) larger, twice the ground to match)."""
    from skyloc.runtime.localize.rectify import crop_centre

    return patch if is_learned(stage.registrar) else crop_centre(patch, stage.register_px)


TRACK_TOL_DEG = 15.0  # 10 refused a random-walk turn of 11.8 deg between frames 1 s apart


def candidate_tol(stage: Any, label: str, tol: float) -> float:
    """Heading search (+- degrees) for one candidate. The learned registrar searches rotations
    `rot_step_deg` apart and XFeat loses about half its inliers 10 deg off, so at the track's
    prediction (its heading from the last registration, turned by at most a few degrees since)
    it searches the track's heading itself, +- TRACK_TOL_DEG, not the retrieval's +-22.5 deg sector."""
    if label in ("track", "tentative") and is_learned(stage.registrar):
        return min(tol, max(stage.opt.heading_tol_deg, TRACK_TOL_DEG))
    return tol
