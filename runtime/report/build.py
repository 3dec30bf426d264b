"""`skyloc report FIXES.jsonl [--map MAP] [--truth truth.csv] --out DIR`: a report for any run.

Reads the fix records `skyloc run` wrote (schema in runtime/outputs/schema.py), and writes into DIR:
trajectory.png (fixes over the map: accepted / verified / rejected, truth when given),
error.png (error over time, with --truth), latency.png (per stage), track.geojson / .gpx / .kml
(for QGIS, Mission Planner, Google Earth), report.json and report.md; per frame (per_frame.py):
timeline.png (each frame's state and skip / filter reason), window.png (the search windows on the
map), accuracy.png (error against the claimed accuracy, with --truth), autopilot.png + .csv (what
GPS_INPUT / NMEA carried), and evidence.png (a sheet of the registration evidence `skyloc run
--evidence DIR` wrote, with --evidence DIR). Torch-free and matplotlib-free, so it runs on the
drone computer after a flight.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from skyloc.core.atomic import write_json_atomic, write_text_atomic
from skyloc.core.errors import SkylocError
from skyloc.runtime.outputs.schema import validate_record
from skyloc.core.geo import haversine_m
from skyloc.runtime.report.per_frame import frame_pictures, run_start

log = logging.getLogger(__name__)


def load_fixes(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines fix file, each checked against the fix schema.

    A run killed mid-write can leave a cut last line: it is dropped with a warning. Any other
    bad line is an error naming the line.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SkylocError(f"fixes {path} cannot be read ({exc}): pass the JSON lines file `skyloc run --out` wrote") \
            from None
    numbered = [(i + 1, s) for i, s in enumerate(lines) if s.strip()]
    records = []
    for k, (no, line) in enumerate(numbered):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            if k == len(numbered) - 1 and records:
                log.warning("%s: last line %d is cut (%s); ignored (the run was stopped mid-write)", path, no, exc)
                break
            raise SkylocError(f"fixes {path} line {no} is not JSON ({exc}); is it a `skyloc run` output?") from None
        records.append(validate_record(rec, where=f"fixes {path} line {no}"))
    if not records:
        raise SkylocError(f"fixes {path} holds no records")
    return records


def _truth_point(rec: dict[str, Any], row: dict[str, float]) -> tuple[float, float]:
    # v2 records give the aircraft position; v1 gave the ground point under the image centre
    if rec.get("schema", "skyloc.fix/1") != "skyloc.fix/1" and "lat" in row and "lon" in row:
        return row["lat"], row["lon"]
    return row["center_lat"], row["center_lon"]


def fix_errors(fixes: Sequence[dict[str, Any]], truth: dict[int, dict[str, float]]) -> list[dict[str, Any]]:
    """Per positioned record with truth: frame, time_s, error of lat/lon and of raw_lat/raw_lon (m)."""
    out = []
    for f in fixes:
        row = truth.get(int(f["frame"]))
        if row is None:
            continue
        tl, tn = _truth_point(f, row)
        raw = (f.get("raw_lat", f["lat"]), f.get("raw_lon", f["lon"]))
        out.append({"frame": f["frame"], "time_s": f["time_s"], "accepted": bool(f.get("accepted")),
                    "verified": bool(f.get("verified")), "accuracy_m": f.get("accuracy_m"),
                    "error_m": float(haversine_m(tl, tn, f["lat"], f["lon"])),
                    "raw_error_m": float(haversine_m(tl, tn, raw[0], raw[1]))})
    return out


def _stats(v: Sequence[float]) -> dict[str, float | int | None]:
    if not len(v):
        return {"n": 0, "median": None, "p90": None, "max": None}
    a = np.asarray(v, float)
    return {"n": int(a.size), "median": round(float(np.median(a)), 2), "p90": round(float(np.percentile(a, 90)), 2),
            "max": round(float(a.max()), 2)}


def latency_summary(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per stage p50 / p90 / p99 / max / mean (ms) over every record that timed it."""
    stages: dict[str, list[float]] = {}
    for r in records:
        for s, v in (r.get("latency_ms") or {}).items():
            stages.setdefault(s, []).append(float(v))
    order = sorted(stages, key=lambda s: (s == "total", list(stages).index(s)))
    return {s: {"n": len(stages[s]), "p50": round(float(np.percentile(stages[s], 50)), 3),
                "p90": round(float(np.percentile(stages[s], 90)), 3),
                "p99": round(float(np.percentile(stages[s], 99)), 3),
                "max": round(float(np.max(stages[s])), 3), "mean": round(float(np.mean(stages[s])), 3)}
            for s in order}


def summarize(records: Sequence[dict[str, Any]], errors: Sequence[dict[str, Any]] | None) -> dict[str, Any]:
    fixes = [r for r in records if r.get("skipped") is None]
    skipped: dict[str, int] = {}
    rejected: dict[str, int] = {}
    for r in records:
        if r.get("skipped") is not None:
            skipped[r["skipped"]] = skipped.get(r["skipped"], 0) + 1
        elif not r.get("accepted"):
            rejected[str(r.get("reason"))] = rejected.get(str(r.get("reason")), 0) + 1
    s: dict[str, Any] = {
        "frames": len(records), "fixes": len(fixes), "accepted": sum(bool(r.get("accepted")) for r in fixes),
        "verified": sum(bool(r.get("verified")) for r in fixes), "skipped": skipped, "rejected": rejected,
        "schema": sorted({r.get("schema", "skyloc.fix/1") for r in records}),
        "time_s": [records[0]["time_s"], records[-1]["time_s"]],
    }
    if errors is not None:
        s["truth"] = {"frames_with_truth": len(errors),
                      "raw_error_m": _stats([e["raw_error_m"] for e in errors]),
                      "accepted_error_m": _stats([e["error_m"] for e in errors if e["accepted"]]),
                      "verified_error_m": _stats([e["error_m"] for e in errors if e["verified"]])}
    return s


def write_report(fixes_path: str | os.PathLike, out_dir: str | os.PathLike, map_path: Any = None,
                 truth_path: str | os.PathLike | None = None, title: str | None = None,
                 name: str = "report", evidence_dir: str | os.PathLike | None = None,
                 start: Sequence[float] | None = None) -> Path:
    """Write the report files into out_dir; returns the path of `<name>.json` (`<name>.md` beside it).

    `evidence_dir`: the run's `--evidence` folder; `start`: the run's start prior LAT,LON[,R] (default:
    read from the run's resolved config beside the fixes, when there is one)."""
    from skyloc.runtime.report import plots
    from skyloc.runtime.outputs.tracks import write_tracks

    records = load_fixes(fixes_path)  # inputs first: a bad file leaves no empty report folder
    out = Path(out_dir)
    title = title or Path(fixes_path).stem
    fixes = [r for r in records if r.get("skipped") is None]
    truth = None
    if truth_path is not None:
        from skyloc.runtime.run.stats import load_truth_table

        truth = load_truth_table(truth_path)
    errors = fix_errors(fixes, truth) if truth is not None else None
    gmap = None
    if map_path is not None:
        from skyloc.runtime.maps.base import GeoMap
        from skyloc.runtime.maps.open import open_map

        gmap = map_path if isinstance(map_path, GeoMap) else open_map(map_path)
    by_frame = {e["frame"]: e["error_m"] for e in errors or []}
    for f in fixes:  # the tracks carry the error of each point when truth is known
        if f["frame"] in by_frame:
            f["report_error_m"] = round(by_frame[f["frame"]], 2)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = dict(write_tracks(fixes, out, "track", title))
    truth_line = []
    if truth:
        v2 = any(r.get("schema", "skyloc.fix/1") != "skyloc.fix/1" for r in records)
        truth_line = [(row["lat"], row["lon"]) if v2 and "lat" in row else (row["center_lat"], row["center_lon"])
                      for _, row in sorted(truth.items())]
    files["trajectory"] = plots.trajectory_png(out / "trajectory.png", fixes, truth_line, gmap, title)
    if errors:
        t = lambda sel: np.array([e["time_s"] for e in errors if sel(e)], float)  # noqa: E731
        y = lambda sel, k="error_m": np.array([e[k] for e in errors if sel(e)], float)  # noqa: E731
        series = [("raw match", t(lambda e: True), y(lambda e: True, "raw_error_m"), plots.GREY, "dot"),
                  ("accepted", t(lambda e: e["accepted"]), y(lambda e: e["accepted"]), plots.GREEN, "dot"),
                  ("verified", t(lambda e: e["verified"]), y(lambda e: e["verified"]), plots.CYAN, "dot")]
        acc = [e for e in errors if e["accepted"] and e["accuracy_m"] is not None]
        if acc:
            series.append(("claimed accuracy", np.array([e["time_s"] for e in acc]),
                           np.array([e["accuracy_m"] for e in acc], float), plots.ORANGE, "line"))
        files["error"] = plots.series_png(out / "error.png", series, "time (s)", "error (m)", f"{title}: error vs truth")
    lat = latency_summary(records)
    if lat:
        files["latency"] = plots.latency_png(out / "latency.png", lat, f"{title}: latency per stage (ms)")
    per_frame = frame_pictures(out, records, errors, gmap, title, files, evidence_dir,
                               start if start is not None else run_start(fixes_path))
    summary = summarize(records, errors)
    report = {"fixes": str(fixes_path), "map": str(getattr(gmap, "source", map_path)) if gmap else None,
              "truth": str(truth_path) if truth_path else None, "summary": summary, "latency_ms": lat,
              **per_frame, "files": {k: p.name for k, p in files.items()}}
    write_text_atomic(out / f"{name}.md", _markdown(title, summary, lat, files, per_frame))
    return write_json_atomic(out / f"{name}.json", report, sort_keys=False)


def _markdown(title: str, s: dict[str, Any], lat: dict[str, dict[str, float | None]], files: dict[str, Path],
              per_frame: dict[str, Any]) -> str:
    rows = [("frames", s["frames"]), ("fixes (not skipped)", s["fixes"]), ("accepted", s["accepted"]),
            ("verified", s["verified"]), ("skipped", ", ".join(f"{k} {v}" for k, v in s["skipped"].items()) or "-"),
            ("rejected", ", ".join(f"{k} {v}" for k, v in s["rejected"].items()) or "-")]
    for key, label in (("raw_error_m", "error, raw match"), ("accepted_error_m", "error, accepted"),
                       ("verified_error_m", "error, verified")):
        e = s.get("truth", {}).get(key)
        if e and e["n"]:
            rows.append((f"{label} median / p90 / max", f"{e['median']} / {e['p90']} / {e['max']} m (n={e['n']})"))
    ap = per_frame["autopilot"]
    rows.append(("sent to the autopilot (position)", f"{ap['sent']} of {ap['frames']} frames; longest without: "
                                                    f"{ap['longest_without_position_s']} s (autopilot.csv)"))
    acc = per_frame.get("accuracy")
    if acc and acc["n"]:
        rows.append(("error within 1x / 2x claimed accuracy", f"{acc['within_1x']} / {acc['within_2x']} of {acc['n']}"))
    ev = per_frame.get("evidence")
    if ev:
        rows.append(("registration evidence", f"{ev['images']} images in {ev['dir']}; frames shown: "
                                              f"{', '.join(map(str, ev['shown'])) or '-'}"))
    for st, v in lat.items():
        rows.append((f"latency {st} p50 / p99", f"{v['p50']:.1f} / {v['p99']:.1f} ms"))
    md = [f"# skyloc report: {title}", "", "| | |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows] + [""]
    md += [f"![{k}]({p.name})" for k, p in files.items() if p.suffix == ".png"]
    md += ["", "Tracks: " + ", ".join(p.name for k, p in files.items() if p.suffix in (".geojson", ".gpx", ".kml")),
           ""]
    return "\n".join(md)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("fixes", help="JSON lines file written by `skyloc run --out`")
    p.add_argument("--out", required=True, help="folder for the report files (created)")
    p.add_argument("--map", default=None, help="map to draw under the track (anything `skyloc tiles --map` takes)")
    p.add_argument("--truth", default=None, help="truth.csv (frame, center_lat, center_lon[, lat, lon]): error plots")
    p.add_argument("--title", default=None, help="title on the pictures (default: the fixes file's name)")
    p.add_argument("--evidence", default=None, metavar="DIR",
                   help="the folder `skyloc run --evidence DIR` wrote: a sheet of per-frame registration evidence")


def main(args: argparse.Namespace) -> int:
    import sys

    path = write_report(args.fixes, args.out, args.map, args.truth, args.title, evidence_dir=args.evidence)
    print(f"skyloc report: wrote {path.parent} ({', '.join(json.loads(path.read_text())['files'].values())}, "
          f"report.json, report.md)", file=sys.stderr)
    return 0
