"""`skyloc bench learned-gate`: calibrate the learned registrar's `verified` gate on real maps.

Queries are real imagery: 150 m squares of the Turku and aerovloc maps seen through an appearance
change (another day and sensor: channel gains, gamma, haze, blur, noise, JPEG; rotated, +-4 %
scale), and squares of the real aerovloc photo (another season and sensor than its map). Each
is registered against a 300 m north-up crop holding it (right place, offset up to +-30 m) and
against crops 150-500 m away that hold none of its ground (wrong place; also the other map),
with the heading unknown (the whole circle, the hard case: 12 rotations to fit) and known
(+-5 deg). The registrar runs with a permissive gate (min_inliers 3, no margin) so every trial
records its raw inliers and distinct second; the gate is then chosen on those numbers: the
smallest inlier floor with 0 wrong places verified at a x1.5 safety factor, for each margin.
The CSV holds numbers only (no imagery).
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from skyloc.core import geo
from skyloc.core.errors import SkylocError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MAPS = {"turku": DATA / "turku-satellite", "aerovloc": DATA / "aerovloc" / "map"}
PHOTO = DATA / "aerovloc" / "query"
SIDE_M, CROP_M, MPP = 150.0, 300.0, 0.5
MARGINS = (1.5, 2.0, 2.5, 3.0)
SAFETY = 1.5


@dataclass
class Query:
    source: str          # turku | aerovloc | photo
    image: np.ndarray    # heading-up (yaw unknown) or north-up
    valid: np.ndarray
    mpp: float
    lat: float           # truth: ground under the image centre
    lon: float
    up_deg: float        # true bearing of the image's up axis
    scale: float         # true ground size of a pixel / stated mpp
    radius_m: float      # half diagonal on the ground: crops farther than this hold none of it


def appearance(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = img.astype(np.float32) / 255
    x = np.clip(x * rng.uniform(0.8, 1.2, 3), 0, 1) ** rng.uniform(0.7, 1.4)
    x = rng.uniform(0.75, 0.95) * x + rng.uniform(0.03, 0.15)
    x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.5, 1.5)) + rng.normal(0, rng.uniform(0.01, 0.03), x.shape)
    ok, buf = cv2.imencode(".jpg", np.clip(x * 255, 0, 255).astype(np.uint8),
                           [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(50, 85))])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


def map_queries(name: str, gmap: Any, n: int, rng: np.random.Generator, known: bool) -> list[Query]:
    grid = gmap.grid(SIDE_M * 1.5, 10.0)
    if not len(grid):
        raise SkylocError(f"learned-gate: no {SIDE_M * 1.5:g} m square of data in the {name} map")
    out = []
    for k in rng.choice(len(grid), size=min(n, len(grid)), replace=False):
        lat, lon = map(float, grid[k])
        up = float(rng.uniform(-3, 3) if known else rng.uniform(0, 360))
        scale = float(rng.uniform(0.96, 1.04))
        px = round(SIDE_M / MPP)
        img, valid = gmap.read_crop(lat, lon, SIDE_M * scale, px, yaw_deg=up)
        out.append(Query(name, appearance(img, rng), valid, SIDE_M / px, lat, lon, up, scale,
                         SIDE_M * scale / math.sqrt(2)))
    return out


def photo_queries(n: int, rng: np.random.Generator, known: bool) -> list[Query]:
    """Squares of the real photo (north-up, 0.065 m/px) at MPP, turned for heading-unknown trials."""
    from skyloc.runtime.register.learned import _turned

    from skyloc.benchmarks.flight_photo import aerovloc_patch

    photo, lat0, lon0 = aerovloc_patch(PHOTO.parent, MPP)  # north-up at ~MPP, and its truth
    small, mpp = photo.image, photo.mpp
    H, W = small.shape[:2]
    side = min(round(SIDE_M / mpp), H)
    out = []
    for _ in range(n):
        x0, y0 = int(rng.integers(0, W - side + 1)), int(rng.integers(0, H - side + 1))
        img = small[y0:y0 + side, x0:x0 + side]
        valid = img.max(axis=2) > 8
        de, dn = (x0 + side / 2 - W / 2) * mpp, -(y0 + side / 2 - H / 2) * mpp
        lat, lon = geo.offset_latlon(lat0, lon0, de, dn)
        up = float(rng.uniform(-3, 3) if known else rng.uniform(0, 360))
        _, _, img, valid = _turned(img, valid, -up)  # heading-up view of a drone flying `up`
        out.append(Query("photo", img, valid, mpp, float(lat), float(lon), up, 1.0, side * mpp / math.sqrt(2)))
    return out


def _trial(reg: Any, q: Query, gmap: Any, clat: float, clon: float, known: bool, kind: str,
           map_name: str, dist_m: float) -> dict[str, Any] | None:
    from skyloc.runtime.localize.rectify import GroundPatch

    mrgb, mvalid = gmap.read_crop(clat, clon, CROP_M, round(CROP_M / MPP))
    if mvalid.mean() < 0.5:
        return None
    heading = 0.0 if known else None
    patch = GroundPatch(q.image, q.valid, q.mpp, heading, (0.0, 0.0))
    t = time.perf_counter()
    r = reg.register(patch, mrgb, CROP_M / mrgb.shape[1], None, 5.0 if known else 180.0, 0.06, map_valid=mvalid)
    dt = time.perf_counter() - t
    te, tn = geo.latlon_to_local_m(q.lat, q.lon, clat, clon)
    same_map = math.isfinite(dist_m)  # crops of the other map have no meaningful error
    err = math.hypot(r.east_m - float(te), r.north_m - float(tn)) if math.isfinite(r.east_m) and same_map else math.nan
    return {"kind": kind, "query": q.source, "map": map_name, "heading": "known" if known else "unknown",
            "crop_dist_m": round(dist_m, 1), "inliers": r.inliers, "second": int(r.second) if r.second >= 0 else 0, "matches": r.matches,
            "geometry_ok": r.verified, "error_m": round(err, 2), "accuracy_m": round(r.accuracy_m, 3),
            "heading_err_deg": round(abs((r.heading_deg - q.up_deg + 180) % 360 - 180), 2)
            if math.isfinite(r.heading_deg) else math.nan,
            "scale_err": round(r.scale - q.scale, 4) if math.isfinite(r.scale) else math.nan,
            "seconds": round(dt, 3), "reason": r.reason}


def _wrong_centre(q: Query, rng: np.random.Generator, gmap: Any = None) -> tuple[float, float, float] | None:
    """A crop centre 150-500 m away whose CROP_M square holds none of the query's ground (and,
    with `gmap`, at least half data on a 7x7 probe)."""
    probe = (np.arange(7) - 3) * CROP_M / 7
    for _ in range(200):
        d, a = rng.uniform(150, 500), rng.uniform(0, 2 * math.pi)
        de, dn = d * math.sin(a), d * math.cos(a)
        gap = math.hypot(max(abs(de) - CROP_M / 2, 0), max(abs(dn) - CROP_M / 2, 0))
        if gap <= q.radius_m + 5:
            continue
        lat, lon = geo.offset_latlon(q.lat, q.lon, de, dn)
        if gmap is not None:
            pe, pn = np.meshgrid(probe, probe)
            la, lo = geo.offset_latlon(float(lat), float(lon), pe, pn)
            if gmap.is_valid(la, lo).mean() < 0.5:
                continue
        return float(lat), float(lon), d
    return None


def run_trials(reg: Any, maps: dict[str, Any], per_map: int, photo: int, wrong_per_query: int,
               seed: int = 0, progress: bool = True) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    grids: dict[str, np.ndarray] = {}
    for known in (False, True):
        qs = [q for name, g in maps.items() for q in map_queries(name, g, per_map, rng, known)]
        if "aerovloc" in maps and PHOTO.is_dir():
            qs += photo_queries(photo, rng, known)
        for q in qs:
            home = "aerovloc" if q.source == "photo" else q.source
            de, dn = rng.uniform(-30, 30, 2)
            clat, clon = geo.offset_latlon(q.lat, q.lon, -de, -dn)
            todo = [("right", home, float(clat), float(clon), float(math.hypot(de, dn)))]
            for _ in range(wrong_per_query):
                c = _wrong_centre(q, rng, maps[home])
                if c:
                    todo.append(("wrong", home, *c))
            other = [m for m in maps if m != home]
            if other:  # the other map: a place that looks nothing like it, or a look-alike
                if other[0] not in grids:
                    grids[other[0]] = maps[other[0]].grid(CROP_M, 20.0)
                grid = grids[other[0]]
                if len(grid):
                    la, lo = grid[int(rng.integers(len(grid)))]
                    todo.append(("wrong", other[0], float(la), float(lo), math.inf))
            for kind, mname, la, lo, d in todo:
                row = _trial(reg, q, maps[mname], la, lo, known, kind, mname, d)
                if row is None:
                    continue
                rows.append(row)
                if progress:
                    print(f"{row['kind']:5s} {row['query']:8s} on {mname:8s} {row['heading']:7s} inliers "
                          f"{row['inliers']:3d} second {row['second']:3d} err {row['error_m']} m "
                          f"{row['seconds']:.2f} s", flush=True)
    return rows


def passes(row: dict[str, Any], min_inliers: int, margin: float, min_ratio: float = 0.0) -> bool:
    return bool(row["geometry_ok"]) and row["inliers"] >= min_inliers and row["inliers"] >= margin * row["second"] \
        and row["inliers"] >= min_ratio * row.get("matches", 0)


def choose_gate(rows: list[dict[str, Any]], min_ratio: float = 0.0) -> list[dict[str, Any]]:
    """Per margin: the inlier floor = SAFETY x the most inliers any wrong place reached while
    clearing that margin and the inlier ratio (rounded up, at least 8), and what it gives on the
    right places."""
    wrong = [r for r in rows if r["kind"] == "wrong"]
    right = [r for r in rows if r["kind"] == "right"]
    out = []
    for m in MARGINS:
        worst = max((r["inliers"] for r in wrong if passes(r, 0, m, min_ratio)), default=0)
        floor = max(8, math.ceil(SAFETY * (worst + 1)))
        ok = [r for r in right if passes(r, floor, m, min_ratio)]
        errs = np.array([r["error_m"] for r in ok], float)
        within = [r for r in ok if r["error_m"] <= 2 * r["accuracy_m"]]
        out.append({"margin": m, "min_inlier_ratio": min_ratio, "worst_wrong_inliers": worst, "min_inliers": floor,
                    "wrong_trials": len(wrong), "wrong_verified": sum(passes(r, floor, m, min_ratio) for r in wrong),
                    "right_trials": len(right), "right_verified": len(ok),
                    "right_verified_pct": round(100 * len(ok) / max(len(right), 1), 1),
                    "median_error_m": round(float(np.median(errs)), 2) if len(errs) else math.nan,
                    "p95_error_m": round(float(np.percentile(errs, 95)), 2) if len(errs) else math.nan,
                    "max_error_m": round(float(errs.max()), 2) if len(errs) else math.nan,
                    "within_2acc_pct": round(100 * len(within) / max(len(ok), 1), 1)})
    return out


def load_trials(path: Path) -> list[dict[str, Any]]:
    """Trials of an earlier run (its CSV), typed back, to re-score them under the current gate.
    (`verified_default_gate` is recomputed; `run` says which run a trial came from.)"""
    ints, floats = ("inliers", "second", "matches"), ("crop_dist_m", "error_m", "accuracy_m", "heading_err_deg", "scale_err", "seconds")
    with open(path, newline="") as f:
        rows = [dict(r) for r in csv.DictReader(f)]
    for r in rows:
        # runs from before `matches` was recorded read 0 there (the ratio cannot refuse them)
        r.update({k: int(r.get(k) or 0) for k in ints}, **{k: float(r[k]) if r[k] != "" else math.nan for k in floats})
        r["geometry_ok"] = r["geometry_ok"] == "True"
        r["run"] = r.get("run") or path.stem
    return rows


def _run(matcher: str | Path | None, per_map: int, photo: int, wrong_per_query: int, seed: int,
         progress: bool) -> list[dict[str, Any]]:
    import tempfile

    from skyloc.runtime.maps.open import open_map
    from skyloc.runtime.register.registry import make_registrar

    missing = [str(p) for p in MAPS.values() if not p.exists()]
    if missing:
        raise SkylocError(f"learned-gate needs the real maps in ../shared/data; missing {missing}")
    with tempfile.TemporaryDirectory(prefix="skyloc-gate-") as tmp:
        if matcher is None:
            from skyloc.export.matcher import export_matcher

            matcher = export_matcher("xfeat", Path(tmp) / "xfeat.onnx")
        # permissive: every trial keeps its raw inliers and second; the gate is applied afterwards
        reg = make_registrar("xfeat", onnx=str(matcher), min_inliers=3, min_margin=1e-9, min_inlier_ratio=0.0)
        maps = {k: open_map(p) for k, p in MAPS.items()}
        return run_trials(reg, maps, per_map, photo, wrong_per_query, seed, progress)


def bench_learned_gate(matcher: str | Path | None = None, per_map: int = 14, photo: int = 8,
                       wrong_per_query: int = 3, seed: int = 0, results_dir: str | Path | None = None,
                       name: str = "learned_gate", command: str | None = None,
                       progress: bool = True, rescore: str | Path | list | None = None) -> dict[str, Path]:
    from skyloc.benchmarks.report import Goal, write_results

    if rescore is not None:
        paths = [rescore] if isinstance(rescore, (str, Path)) else list(rescore)
        rows = [r for p in paths for r in load_trials(Path(p))]
    else:
        rows = [{"run": f"seed {seed}", **r} for r in _run(matcher, per_map, photo, wrong_per_query, seed, progress)]
    from skyloc.runtime.register.learned import LearnedConf

    conf = LearnedConf()
    gate = choose_gate(rows, conf.min_inlier_ratio)
    best = max(gate, key=lambda g: (g["right_verified"], -g["margin"]))
    for r in rows:
        r["verified_default_gate"] = passes(r, conf.min_inliers, conf.min_margin, conf.min_inlier_ratio)
    wrong = [r for r in rows if r["kind"] == "wrong"]
    right_ok = [r for r in rows if r["kind"] == "right" and r["verified_default_gate"]]
    within = sum(r["error_m"] <= 2 * r["accuracy_m"] for r in right_ok)
    timing = [{"heading": h, "trials": len(ts), "median_s": round(float(np.median(ts)), 3),
               "p95_s": round(float(np.percentile(ts, 95)), 3)}
              for h in ("known", "unknown") if (ts := [r["seconds"] for r in rows if r["heading"] == h])]
    by_query = [{"query": q, "heading": h, "kind": k, "trials": len(sel),
                 "verified": sum(r["verified_default_gate"] for r in sel),
                 "max_inliers": max(r["inliers"] for r in sel),
                 "median_error_m_verified": round(float(np.median([r["error_m"] for r in sel if r["verified_default_gate"]])), 2)
                 if any(r["verified_default_gate"] for r in sel) else math.nan}
                for q in ("turku", "aerovloc", "photo") for h in ("unknown", "known") for k in ("right", "wrong")
                if (sel := [r for r in rows if r["query"] == q and r["heading"] == h and r["kind"] == k])]
    goals = [
        Goal("wrong places verified (default gate)", ">= 200 trials, 0 verified",
             f"{sum(r['verified_default_gate'] for r in wrong)} of {len(wrong)}",
             len(wrong) >= 200 and not any(r["verified_default_gate"] for r in wrong)),
        Goal("verified errors within 2 x accuracy_m", ">= 90 %",
             f"{100 * within / max(len(right_ok), 1):.1f} % of {len(right_ok)}",
             bool(right_ok) and within >= 0.9 * len(right_ok)),
    ]
    notes = [f"Default gate (LearnedConf): min_inliers {conf.min_inliers}, min_margin {conf.min_margin:g}, "
             f"min_inlier_ratio {conf.min_inlier_ratio:g} (inliers / putative matches, `matches`); "
             f"the best margin by this run: x{best['margin']:g} with min_inliers {best['min_inliers']}.",
             "Trials: 150 m query squares (map squares after an appearance change, or squares of the real "
             "aerovloc photo) against 300 m crops at 0.5 m/px; right = the crop holds the query (offset <= 30 m "
             "per axis), wrong = a crop 150-500 m away holding none of its ground, or a crop of the other map "
             "(crop_dist_m inf). `geometry_ok` = the fit passed the pose checks with a permissive gate."]
    if rescore is not None:
        notes.append("Re-scored (no registration in this run) from the trials of earlier runs, column `run`: "
                     + ", ".join(sorted({str(r['run']) for r in rows})) + ".")
    from skyloc.benchmarks.flight import registration_label

    kind = "" if rescore is not None else f" ({registration_label(matcher) if matcher else 'xfeat'})"
    return write_results(name, rows, results_dir, title=f"Learned registrar{kind}: verification gate on real maps",
                         md_columns=["kind", "query", "map", "heading", "crop_dist_m", "inliers", "second",
                                     "verified_default_gate", "error_m", "accuracy_m", "seconds"],
                         goals=goals, notes=notes, command=command,
                         extra_tables=[("Gate per margin", "thresholds", gate, list(gate[0])),
                                       ("By query", "by-query", by_query, list(by_query[0])),
                                       ("Time per registration (this CPU)", "timing", timing, list(timing[0]))])
