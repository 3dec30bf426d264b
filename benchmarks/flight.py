"""`skyloc bench flight`: localization to metres, measured.

Two parts, one results set (`flight.{csv,md,png}`, `flight-photo.csv`):

- **photo** (always, when ../shared/data/aerovloc is present): the real autumn aerial photo is
  registered against its summer satellite map over a start prior of `prior_m` (300 m) radius:
  the map window is every place the photo's centre may be (2 x prior_m + the photo's extent), at
  several prior centres up to 280 m from the truth. Error in metres per registrar / setting.
- **flights** (with `--model`): simulated flights (runtime.synth.flight: altitude band, tilt up to
  `tilt_max` deg, random-walk heading) over the procedural world, ../shared/data/turku-satellite
  and ../shared/data/aerovloc/map, each localized by `skyloc run` with the flight's telemetry for
  {heading known, unknown (--no-heading)} x {registration on, off (--no-register)}; the tile set
  of each map / altitude band is cut by the model with the map recorded as its imagery.
"""
from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from skyloc.benchmarks.report import Goal, write_results
from skyloc.runtime import geo
from skyloc.runtime.errors import SkylocError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PHOTO_CASES = (  # (registrar, conf, heading: "known" +-3 deg | "unknown", scale_tol, prior centres used)
    ("ncc", {}, "known", 0.03, 6), ("ncc", {"work_mpp": 2.0}, "known", 0.03, 6),
    ("ncc", {"work_mpp": 0.5}, "known", 0.03, 1), ("ncc", {}, "unknown", 0.03, 1),
    ("sift", {}, "known", 0.1, 2), ("orb", {}, "known", 0.1, 2),
)
PRIOR_OFFSETS_M = ((0.0, 0.0), (150.0, 150.0), (-200.0, -100.0), (250.0, 0.0), (0.0, -250.0), (-120.0, 240.0))


# --- the real photo ---------------------------------------------------------------------------


def aerovloc_patch(root: Path, mpp: float = 0.25) -> tuple[Any, float, float]:
    """The photo (north-up, 0.065 m/px) as a GroundPatch at ~mpp, and the truth (lat, lon)."""
    import cv2

    from skyloc.runtime.rectify import GroundPatch

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
    from skyloc.runtime.maps import open_map
    from skyloc.runtime.register import make_registrar

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
            t = time.perf_counter()
            r = reg.register(patch, mrgb, window / mrgb.shape[1], None, 3.0 if heading == "known" else 180.0,
                             scale_tol, map_valid=mvalid)
            dt = time.perf_counter() - t
            ok = math.isfinite(r.east_m) and math.isfinite(r.north_m)
            glat, glon = geo.offset_latlon(clat, clon, r.east_m, r.north_m) if ok else (math.nan, math.nan)
            err = float(geo.haversine_m(glat, glon, lat, lon)) if ok else math.nan
            rows.append({"registrar": name, "work_mpp": work, "heading": heading, "prior_offset_m":
                         round(math.hypot(de, dn), 1), "error_m": round(err, 2), "verified": r.verified,
                         "peak": round(r.score, 4), "second": round(r.second, 4),
                         "ratio": round(r.score / max(r.second, 1e-3), 3), "heading_deg": round(r.heading_deg, 2),
                         "scale": round(r.scale, 4), "accuracy_m": round(r.accuracy_m, 2),
                         "window_m": round(window, 1), "seconds": round(dt, 3), "reason": r.reason})
            if progress:
                print(f"photo {name} {conf} {heading} prior+{math.hypot(de, dn):.0f} m: error {err:.1f} m, "
                      f"verified {r.verified}, peak {r.score:.3f}/{r.second:.3f}, {dt:.2f} s", flush=True)
    return rows


# --- simulated flights ------------------------------------------------------------------------


def flight_metrics(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-run numbers from `skyloc run` records that carry truth errors."""
    live = [r for r in records if "skipped" not in r]
    ver = [r for r in live if r.get("verified") and r.get("truth_error_m") is not None]
    acc = [r for r in live if r.get("accepted") and r.get("truth_filtered_error_m") is not None]
    err = np.array([r["truth_error_m"] for r in ver], float)
    calib = [r["truth_error_m"] <= 2 * r["raw_accuracy_m"] for r in ver if r.get("raw_accuracy_m") is not None]
    total = [sum(r.get("latency_ms", {}).values()) for r in live]
    reg = [r.get("latency_ms", {}).get("register", 0.0) for r in live]
    return {
        "frames": len(records), "skipped": len(records) - len(live), "verified": len(ver),
        "verified_rate": len(ver) / len(live) if live else math.nan,
        "verified_median_m": float(np.median(err)) if err.size else math.nan,
        "verified_p95_m": float(np.percentile(err, 95)) if err.size else math.nan,
        "accepted": len(acc),
        "accepted_max_m": max((r["truth_filtered_error_m"] for r in acc), default=math.nan),
        "within_2acc": float(np.mean(calib)) if calib else math.nan,
        "raw_median_m": float(np.median([r["truth_error_m"] for r in live if r.get("truth_error_m") is not None]
                                        or [math.nan])),
        "latency_p50_ms": float(np.median(total)) if total else math.nan,
        "register_p50_ms": float(np.median(reg)) if reg else math.nan,
    }


def _tile_m(altitude: float, fov_deg: float, width: int, height: int) -> float:
    """About half the short ground side of a nadir frame at this altitude: covered at any heading."""
    short = 2 * altitude * math.tan(math.radians(fov_deg) / 2) * min(width, height) / width
    return float(round(0.55 * short))


def flight_rows(model: Path, maps: Sequence[tuple[str, Path | None]], altitudes: Sequence[float],
                work_dir: Path, seconds: float = 20.0, fps: float = 1.0, tilt_max: float = 15.0,
                width: int = 640, height: int = 480, fov_deg: float = 60.0, seed: int = 0,
                headings: Sequence[str] = ("known", "unknown"), registration: Sequence[bool] = (True, False),
                progress: bool = True, world_m: float = 1500.0) -> list[dict]:
    from skyloc.cli import main as skyloc
    from skyloc.runtime.imagery import imagery_record
    from skyloc.runtime.synth.flight import FlightConfig, make_flight
    from skyloc.runtime.synth.world import make_world
    from skyloc.runtime.tileset import build_tileset

    rows = []
    for map_name, map_path in maps:
        if map_path is None:
            map_path = make_world(work_dir / "world", seed=seed, size_m=world_m, mpp=0.5)
        elif not Path(map_path).exists():
            rows.append({"map": map_name, "status": f"skipped: {map_path} not present"})
            continue
        for alt in altitudes:
            case = work_dir / f"{map_name}-{alt:g}"
            tile_m = _tile_m(alt, fov_deg, width, height)
            base = {"map": map_name, "altitude_m": alt, "tile_m": tile_m}
            try:
                cfg = FlightConfig(seconds=seconds, fps=fps, speed_mps=8.0, altitude_range_m=(alt, 1.1 * alt),
                                   tilt_max_deg=tilt_max, attitude_deg=3.0, yaw_mode="random-walk", seed=seed,
                                   width=width, height=height, fov_deg=fov_deg, overwrite=True)
                video = make_flight(map_path, case / "flight", cfg)
                tiles = case / "tiles.npz"
                build_tileset(model, map_path, tiles, tile_m=tile_m, stride_m=max(5.0, tile_m / 3), progress=False,
                              imagery=imagery_record(map_path, tiles), overwrite=True)
            except SkylocError as exc:
                rows.append({**base, "status": f"skipped: {exc}"})
                continue
            truth = video.parent / "truth.csv"
            for heading in headings:
                for reg in registration:
                    out = case / f"fixes-{heading}-{'reg' if reg else 'noreg'}.jsonl"
                    argv = ["run", "--model", str(model), "--tiles", str(tiles), "--source", str(video),
                            "--camera", str(video.parent / "flight.json"), "--telemetry", str(truth),
                            "--truth", str(truth), "--out", str(out), "--overwrite"]
                    argv += [] if heading == "known" else ["--no-heading"]
                    argv += [] if reg else ["--no-register"]
                    rc = skyloc(argv)
                    recs = [json.loads(l) for l in out.read_text().splitlines() if l.strip()] if out.exists() else []
                    row = {**base, "heading": heading, "registration": "on" if reg else "off", "status": f"rc {rc}",
                           **flight_metrics(recs)}
                    rows.append(row)
                    if progress:
                        print(f"flight {map_name} {alt:g} m heading {heading} reg {reg}: verified "
                              f"{row['verified_rate']:.2f}, median {row['verified_median_m']:.1f} m", flush=True)
    return rows


def flight_goals(rows: Sequence[dict], photo: Sequence[dict]) -> list[Goal]:
    """The issue's goals over the real maps, heading unknown, registration on (pooled frames)."""
    sel = [r for r in rows if r.get("heading") == "unknown" and r.get("registration") == "on"
           and r.get("map") in ("turku", "aerovloc") and r.get("frames")]
    goals = []

    def pooled(key: str, fn) -> float:
        vals = [r[key] for r in sel if isinstance(r.get(key), float) and math.isfinite(r[key])]
        return fn(vals) if vals else math.nan

    if sel:
        ver = sum(r["verified"] for r in sel)
        live = sum(r["frames"] - r["skipped"] for r in sel)
        med, p95 = pooled("verified_median_m", max), pooled("verified_p95_m", max)
        amax, cal = pooled("accepted_max_m", max), pooled("within_2acc", min)
        why = "worst run (per-run numbers in the table)"
        goals += [Goal("verified median error", "<= 5 m", f"{med:.2f} m", med <= 5 if math.isfinite(med) else None, why),
                  Goal("verified p95 error", "<= 15 m", f"{p95:.2f} m", p95 <= 15 if math.isfinite(p95) else None, why),
                  Goal("verified-fix rate", ">= 80 %", f"{100 * ver / max(live, 1):.0f} %", ver >= 0.8 * live),
                  Goal("accepted fix error", "none > 50 m", f"max {amax:.1f} m", amax <= 50 if math.isfinite(amax) else None),
                  Goal("accuracy calibration", ">= 90 % within 2 x accuracy_m", f"{100 * cal:.0f} %",
                       cal >= 0.9 if math.isfinite(cal) else None, why)]
    else:
        goals.append(Goal("simulated flights", "the goals above", "not run", None, "pass --model (exported ONNX)"))
    default = [p for p in photo if p["registrar"] == "ncc" and p["heading"] == "known" and p["work_mpp"] == 1.0]
    if default:
        worst = max(p["error_m"] for p in default)
        goals.append(Goal("aerovloc real photo, 300 m prior", "<= 10 m",
                          f"max {worst:.2f} m over {len(default)} prior centres (ncc, 1 m/px)",
                          worst <= 10 and all(p["verified"] for p in default)))
    return goals


def bench_flight(model: Path | None = None, maps: Sequence[str] = ("procedural", "turku", "aerovloc"),
                 altitudes: Sequence[float] = (80.0, 150.0, 250.0), seconds: float = 20.0, fps: float = 1.0,
                 work_dir: Path | None = None, photo: bool = True, results_dir: Path | None = None,
                 name: str = "flight", command: str | None = None, progress: bool = True,
                 data: Path = DATA) -> dict[str, Path]:
    import tempfile

    known = {"procedural": None, "turku": data / "turku-satellite", "aerovloc": data / "aerovloc" / "map"}
    bad = [m for m in maps if m not in known]
    if bad:
        raise SkylocError(f"bench flight: unknown map(s) {bad}; choose from {sorted(known)}")
    photo_res = photo_rows(data / "aerovloc", progress=progress) if photo and (data / "aerovloc").exists() else []
    rows: list[dict] = []
    notes = []
    if model is not None:
        with tempfile.TemporaryDirectory(prefix="skyloc-flight-") as tmp:
            wd = Path(work_dir) if work_dir else Path(tmp)
            rows = flight_rows(Path(model), [(m, known[m]) for m in maps], altitudes, wd, seconds, fps,
                               progress=progress)
    else:
        notes.append("Simulated flights not run: pass --model (an exported ONNX model with its sidecar).")
    if photo and not photo_res:
        notes.append(f"Real photo not measured: {data / 'aerovloc'} not present.")

    def plot(fig: Any) -> None:
        ax = fig.add_subplot(1, 2, 1)
        for key, grp in _groups(photo_res, ("registrar", "work_mpp", "heading")).items():
            ax.plot([p["prior_offset_m"] for p in grp], [min(p["error_m"], 200) for p in grp], "o-", label=str(key))
        ax.set(xlabel="prior centre offset from truth, m", ylabel="error, m (clipped at 200)", yscale="symlog",
               title="aerovloc real photo")
        ax.legend(fontsize=7)
        ax2 = fig.add_subplot(1, 2, 2)
        for key, grp in _groups([r for r in rows if r.get("frames")], ("map", "heading", "registration")).items():
            ax2.plot([r["altitude_m"] for r in grp], [r["verified_median_m"] for r in grp], "o-", label=str(key))
        ax2.set(xlabel="altitude, m", ylabel="verified median error, m", title="simulated flights")
        if rows:
            ax2.legend(fontsize=7)

    table = rows if rows else [{"status": "flights not run"}]
    return write_results(name, table, results_dir, title="Flight localization (registration to metres)",
                         goals=flight_goals(rows, photo_res), notes=notes, plot=plot,
                         extra_tables=[("Real aerial photo (aerovloc), 300 m start prior", "photo", photo_res,
                                        list(photo_res[0]) if photo_res else [])] if photo_res else [],
                         command=command)


def _groups(rows: Sequence[dict], keys: Sequence[str]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    return out
