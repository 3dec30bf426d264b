"""The demo's report: a terminal/markdown table, report.json, the trajectory over the map and one
retrieval example (PNG). Uses only runtime-side pieces, so it works on any finished run."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from skyloc.core.geo import haversine_m
from skyloc.runtime.maps.base import GeoMap
from skyloc.runtime.maps.open import open_map
from skyloc.runtime.report.build import load_fixes, write_report as write_run_report
from skyloc.runtime.run.stats import STAGES, RunStats, load_truth_table
from skyloc.core.sidecar import read_model_sidecar


def fix_errors(fixes: list[dict[str, Any]], truth: dict[int, dict[str, float]], centers: np.ndarray,
               stride_m: float) -> dict[str, Any]:
    """Error of every fix (aircraft position, raw_lat/raw_lon) against the flight's truth.

    Verified fixes: median / p95 error and calibration (share within 2 x their accuracy_m).
    "Correct tile": the best tile's centre lies within one grid stride of the ground point under the
    optical axis (tiles overlap; a stride is the grid)."""
    raw, acc, tile_ok, ver, calib = [], [], [], [], []
    for f in fixes:
        t = truth.get(f["frame"])
        if t is None or "skipped" in f:
            continue
        la, lo = t.get("lat", t["center_lat"]), t.get("lon", t["center_lon"])
        e = float(haversine_m(la, lo, f["raw_lat"], f["raw_lon"]))
        raw.append(e)
        if f.get("verified"):
            ver.append(e)
            if f.get("raw_accuracy_m") is not None:
                calib.append(e <= 2.0 * float(f["raw_accuracy_m"]))
        if f.get("accepted"):
            acc.append(float(haversine_m(la, lo, f["lat"], f["lon"])))
        c = centers[int(f["tile"])]
        tile_ok.append(float(haversine_m(t["center_lat"], t["center_lon"], c[0], c[1])) <= stride_m)
    frames = len(fixes)

    def pct(v: list[float], q: float) -> float | None:
        return round(float(np.percentile(v, q)), 1) if v else None

    return {
        "frames": frames, "fixes": len(raw), "accepted": len(acc), "verified": len(ver),
        "fix_rate": round(len(acc) / frames, 3) if frames else 0.0,
        "verified_rate": round(len(ver) / frames, 3) if frames else 0.0,
        "correct_tile_rate": round(float(np.mean(tile_ok)), 3) if tile_ok else 0.0,
        "median_error_m": pct(raw, 50), "p90_error_m": pct(raw, 90),
        "verified_median_error_m": pct(ver, 50), "verified_p95_error_m": pct(ver, 95),
        "accuracy_calibration": round(float(np.mean(calib)), 3) if calib else None,
        "accepted_median_error_m": pct(acc, 50), "accepted_p90_error_m": pct(acc, 90),
        "accepted_max_error_m": round(max(acc), 1) if acc else None,
    }


def plot_retrieval(path: Path, gmap: GeoMap, model: Path, tiles: Path, video: Path,
                   truth: dict[int, dict[str, float]], frame_index: int, k: int = 4) -> Path:
    """The frame as the model sees it (north-up), the top-k tiles (green: within one tile of truth)."""
    from skyloc.runtime.backends import open_backend
    from skyloc.runtime.localize.localizer import nadir_patch
    from skyloc.runtime.localize.retrieval import ExactMatcher
    from skyloc.core.preprocess import to_model_input
    from skyloc.runtime.maps.tileset import TileSet

    cap = cv2.VideoCapture(str(video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, frame_index)
    ok, frame = cap.read()
    cap.release()
    if not ok:
        raise RuntimeError(f"cannot read frame {frame_index} of {video}")
    t = truth[frame_index]
    with open_backend(model, "onnxruntime") as backend:
        ts = TileSet.load(tiles, expect_model=backend.sidecar)
        c = backend.sidecar.input
        # the frame's centre square turned north-up, then its inner square (no corner from outside the picture)
        side = max(int(c.height), int(c.width))
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        big = nadir_patch(rgb, int(round(side * 2 ** 0.5)), 1.0, t["yaw_deg"]).image
        o = (big.shape[0] - side) // 2
        view = np.ascontiguousarray(big[o:o + side, o:o + side])
        emb = backend.embed(to_model_input([view], c, bgr=False))
    scores, idx = ExactMatcher(ts).search(emb, k)
    tile_m = float(ts.meta["tile_m"])
    px = 160
    cells = [cv2.resize(view, (px, px), interpolation=cv2.INTER_AREA)]
    labels = ["query (north-up)"]
    colours = [(255, 255, 255)]
    for s, i in zip(scores[0], idx[0]):
        lat, lon = ts.centers[i]
        crop, _ = gmap.read_crop(float(lat), float(lon), tile_m, px)
        d = float(haversine_m(t["center_lat"], t["center_lon"], lat, lon))
        cells.append(crop)
        labels.append(f"{d:.0f} m, s={s:.2f}")
        colours.append((0, 200, 0) if d <= tile_m / 2 else (220, 0, 0))
    out = np.full((px + 30, len(cells) * (px + 10) + 10, 3), 255, np.uint8)
    for j, (cell, label, col) in enumerate(zip(cells, labels, colours)):
        x = 10 + j * (px + 10)
        out[5:5 + px, x:x + px] = cell
        cv2.rectangle(out, (x - 3, 2), (x + px + 2, px + 7), col, 3)
        cv2.putText(out, label, (x, px + 24), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
    return path


def _table(summary: dict[str, Any], lat: dict[str, dict[str, float | None]], backend: str, precision: str) -> str:
    def f(v: Any, unit: str = "") -> str:
        return "-" if v is None else f"{v}{unit}"

    rows = [
        ("frames", f(summary["frames"])),
        ("median error (all fixes)", f(summary["median_error_m"], " m")),
        ("p90 error (all fixes)", f(summary["p90_error_m"], " m")),
        ("verified-fix rate (verified / frames)", f"{summary['verified_rate'] * 100:.0f} %"),
        ("median error (verified)", f(summary["verified_median_error_m"], " m")),
        ("p95 error (verified)", f(summary["verified_p95_error_m"], " m")),
        ("accuracy calibration (verified within 2 x accuracy_m)",
         "-" if summary["accuracy_calibration"] is None else f"{summary['accuracy_calibration'] * 100:.0f} %"),
        ("median error (accepted)", f(summary["accepted_median_error_m"], " m")),
        ("max error (accepted)", f(summary["accepted_max_error_m"], " m")),
        ("fix rate (accepted / frames)", f"{summary['fix_rate'] * 100:.0f} %"),
        ("correct-tile rate", f"{summary['correct_tile_rate'] * 100:.0f} %"),
        ("backend", backend),
        ("precision", precision),
    ]
    for s in STAGES:
        v = lat.get(s, {})
        if v.get("p50") is not None:
            rows.append((f"latency {s} p50 / p99", f"{v['p50']:.1f} / {v['p99']:.1f} ms"))
    w = max(len(r[0]) for r in rows)
    lines = ["| metric | value |", "|---|---|"] + [f"| {a:<{w}} | {b} |" for a, b in rows]
    return "\n".join(lines)


def write_report(out: Path, *, world: Path, fixes: Path, truth: Path, tiles: Path, model: Path, video: Path,
                 stats: RunStats, stride_m: float, extra: dict[str, Any] | None = None,
                 evidence: Path | None = None) -> Path:
    from skyloc.runtime.maps.tileset import TileSet

    side = read_model_sidecar(model)
    ts = TileSet.load(tiles)
    fx, tr = load_fixes(fixes), load_truth_table(truth)
    summary = fix_errors(fx, tr, ts.centers, stride_m)
    lat = stats.latency_summary()
    gmap = open_map(world)
    # the report any run gets (`skyloc report`): trajectory / error / latency PNGs, GeoJSON, GPX, KML
    run_report = write_run_report(fixes, out, gmap, truth, title="skyloc demo", name="run-report",
                                  evidence_dir=evidence)
    run_files = json.loads(run_report.read_text())["files"]
    retrieval = plot_retrieval(out / "retrieval.png", gmap, model, tiles, video, tr, frame_index=len(tr) // 2)
    report = {"summary": summary, "latency_ms": lat, "backend": stats.backend, "precision": side.precision,
              "variant": side.variant, "model_id": side.model_id, "tiles": len(ts), "run": stats.to_dict(),
              "files": {**run_files, "retrieval": retrieval.name, "fixes": fixes.name, "run_report": run_report.name},
              **(extra or {})}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    md = ["# skyloc demo report", "", _table(summary, lat, stats.backend, side.precision), "",
          f"Tile set: {len(ts)} tiles of {ts.meta.get('tile_m', 0):.0f} m every {stride_m:.0f} m. "
          "Errors are of the aircraft position against the flight's truth; verified fixes were confirmed by "
          "registration against the map imagery (only they are ever sent as a 3D fix); a correct tile is a "
          "best tile whose centre lies within one stride of the ground point under the optical axis.", "",
          "![trajectory](trajectory.png)", "", "![retrieval](retrieval.png)", "",
          *[f"![{k}]({v})" for k, v in run_files.items() if k in ("error", "latency", "timeline", "accuracy")], "",
          *([f"Registration evidence (frame, its ground patch, the map at the fix, the match surface; every "
             f"frame's in {evidence.name}/):", "", f"![evidence]({run_files['evidence']})", ""]
            if "evidence" in run_files and evidence is not None else []),
          "Track for QGIS / Mission Planner / Google Earth: " + ", ".join(
              run_files[k] for k in ("geojson", "gpx", "kml")) + f"; the run's own report: {run_report.name}", ""]
    if extra and "stage_seconds" in extra:
        md.insert(4, "Stage times (s): " + ", ".join(f"{k} {v}" for k, v in extra["stage_seconds"].items())
                  + f"; total {extra.get('total_seconds', '?')} s"
                  + (" (training skipped: the model an earlier demo in this folder trained on the same world and "
                     "settings was reused)" if extra.get("model_reused") else "") + "\n")
    (out / "report.md").write_text("\n".join(md))
    return out / "report.json"
