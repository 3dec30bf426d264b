"""`skyloc report` on a real run's fixes: PNGs, GeoJSON, GPX and KML are written, they parse, and
their coordinates are the fixes'; the fix schema validates what the loop writes."""
from __future__ import annotations

import csv
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from runtime_core_helpers import make_map, make_tiny_model

from skyloc.cli import main as skyloc_main
from skyloc.core.errors import SkylocError
from skyloc.runtime.outputs.schema import FIELDS, SCHEMA_VERSION, schema_markdown, validate_record
from skyloc.runtime.report.build import load_fixes, write_report

FOOT_M = 60.0 * math.sqrt(2.0)  # a frame's ground side: the 60 m tiles fit inside it at any heading
GPX = "{http://www.topografix.com/GPX/1/1}"
KML = "{http://www.opengis.net/kml/2.2}"


def _haversine(lat1, lon1, lat2, lon2) -> float:
    # independent of skyloc.core.geo: spherical law of haversines, mean Earth radius
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6371008.8 * math.asin(math.sqrt(a))


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> dict[str, Path]:
    """A tiny model, a map, its tile set, frames cut from the map along a line, and `skyloc run`."""
    from skyloc.runtime.maps.open import open_map
    from skyloc.runtime.maps.tileset import TileSet

    tmp = tmp_path_factory.mktemp("report")
    model = make_tiny_model(tmp / "m.onnx")
    mp = make_map(tmp / "map", width_px=360, height_px=300)
    tiles = tmp / "tiles.npz"
    assert skyloc_main(["tiles", "--model", str(model), "--map", str(mp), "--out", str(tiles),
                        "--tile-m", "60", "--stride-m", "20", "--scales", "1", "--no-progress"]) == 0
    ts = TileSet.load(tiles)
    gmap = open_map(mp)
    frames = tmp / "frames"
    frames.mkdir()
    # frames at tile centres along a row (exact matches), then one noise frame (a wrong match)
    row = ts.centers[np.argsort(ts.centers[:, 1])]
    row = row[np.abs(row[:, 0] - np.median(row[:, 0])) < 1e-7][:8]
    truth_rows = []
    for i, (lat, lon) in enumerate(row):
        crop, _ = gmap.read_crop(float(lat), float(lon), FOOT_M, 64)
        cv2.imwrite(str(frames / f"{i:03d}.png"), crop[:, :, ::-1])
        truth_rows.append([i, f"{i:.4f}", f"{lat:.8f}", f"{lon:.8f}", f"{lat:.8f}", f"{lon:.8f}"])
    n = len(row)
    noise = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(frames / f"{n:03d}.png"), noise)
    truth_rows.append([n, f"{n:.4f}", *[f"{row[-1][0]:.8f}", f"{row[-1][1]:.8f}"] * 2])
    (frames / f"{n + 1:03d}.png").write_bytes(b"not an image")  # a skipped (corrupt) frame
    truth = tmp / "truth.csv"
    with open(truth, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frame", "time_s", "lat", "lon", "center_lat", "center_lon"])
        w.writerows(truth_rows)
    fixes = tmp / "fixes.jsonl"
    assert skyloc_main(["run", "--model", str(model), "--tiles", str(tiles), "--source", str(frames),
                        "--out", str(fixes), "--max-speed", "25", "--imagery", str(mp), "--altitude", "100",
                        # FOOT_M seen from 100 m, north-up: registration verifies (retrieval-only is never accepted)
                        "--hfov", f"{2 * math.degrees(math.atan(FOOT_M / 200.0)):.4f}", "--yaw", "0"]) == 0
    return {"fixes": fixes, "map": mp, "truth": truth, "tmp": tmp, "n": n}


def _positioned(fixes: Path) -> list[dict]:
    return [r for r in load_fixes(fixes) if r.get("skipped") is None]


def test_report_writes_files_that_parse_with_the_fixes_coordinates(real_run, tmp_path):
    out = tmp_path / "rep"
    assert skyloc_main(["report", str(real_run["fixes"]), "--map", str(real_run["map"]),
                        "--truth", str(real_run["truth"]), "--out", str(out)]) == 0
    records = [json.loads(s) for s in real_run["fixes"].read_text().splitlines() if s.strip()]
    pos = [r for r in records if "skipped" not in r]
    acc = [r for r in pos if r["accepted"]]
    # the noise frame: a wrong match, or skipped before retrieval (blank embedding)
    assert len(records) == real_run["n"] + 2 and len(pos) >= real_run["n"]
    assert len(acc) >= 2 and any(r.get("skipped") == "corrupt" for r in records)
    for png in ("trajectory.png", "error.png", "latency.png"):
        img = cv2.imread(str(out / png))
        assert img is not None and img.shape[0] > 150 and img.shape[1] > 150, png
        assert img.std() > 5, f"{png} is blank"

    gj = json.loads((out / "track.geojson").read_text())
    assert gj["type"] == "FeatureCollection"
    points = [f for f in gj["features"] if f["geometry"]["type"] == "Point"]
    assert [p["geometry"]["coordinates"] for p in points] == [[r["lon"], r["lat"]] for r in pos]
    assert [p["properties"]["frame"] for p in points] == [r["frame"] for r in pos]
    line = [f for f in gj["features"] if f["geometry"]["type"] == "LineString"]
    assert line[0]["geometry"]["coordinates"] == [[r["lon"], r["lat"]] for r in acc]

    gpx = ET.parse(out / "track.gpx").getroot()
    assert gpx.tag == f"{GPX}gpx" and gpx.get("version") == "1.1"
    wpts = [(float(w.get("lat")), float(w.get("lon"))) for w in gpx.iter(f"{GPX}wpt")]
    assert wpts == [(r["lat"], r["lon"]) for r in pos]
    trk = [(float(t.get("lat")), float(t.get("lon"))) for t in gpx.iter(f"{GPX}trkpt")]
    assert trk == [(r["lat"], r["lon"]) for r in acc]
    assert [w.find(f"{GPX}type").text for w in gpx.iter(f"{GPX}wpt")] == \
        [("verified" if r["verified"] else "accepted") if r["accepted"] else "rejected" for r in pos]

    kml = ET.parse(out / "track.kml").getroot()
    assert kml.tag == f"{KML}kml"
    coords = [c.text for c in kml.iter(f"{KML}coordinates")]
    track = [tuple(map(float, xy.split(","))) for xy in coords[0].split()]
    assert track == [(r["lon"], r["lat"]) for r in acc]
    pts = sorted(tuple(map(float, c.split(","))) for c in coords[1:])
    assert pts == sorted((r["lon"], r["lat"]) for r in pos)

    rep = json.loads((out / "report.json").read_text())
    s = rep["summary"]
    skipped = {k: sum(r.get("skipped") == k for r in records) for k in {r.get("skipped") for r in records} - {None}}
    assert s["frames"] == len(records) and s["accepted"] == len(acc) and s["skipped"] == skipped
    assert skipped.get("corrupt") == 1
    # error vs truth recomputed here from the raw files (the truth's aircraft and centre columns are equal here)
    truth = {int(r["frame"]): r for r in csv.DictReader(open(real_run["truth"]))}
    errs = [_haversine(float(truth[r["frame"]]["center_lat"]), float(truth[r["frame"]]["center_lon"]),
                       r["lat"], r["lon"]) for r in acc]
    assert s["truth"]["accepted_error_m"]["median"] == pytest.approx(float(np.median(errs)), abs=0.02)
    assert s["truth"]["accepted_error_m"]["n"] == len(acc)
    assert set(rep["latency_ms"]) >= {"grab", "infer", "retrieve", "total"}
    totals = [r["latency_ms"]["total"] for r in records]
    assert rep["latency_ms"]["total"]["max"] == pytest.approx(max(totals), abs=1e-3)
    assert "track.gpx" in (out / "report.md").read_text()


def test_report_without_map_or_truth(real_run, tmp_path):
    path = write_report(real_run["fixes"], tmp_path / "r")
    files = json.loads(path.read_text())["files"]
    # no truth: no error or accuracy plot; no --evidence: no evidence sheet
    assert set(files) == {"geojson", "gpx", "kml", "trajectory", "latency", "timeline", "window", "autopilot",
                          "autopilot_csv"}
    assert cv2.imread(str(tmp_path / "r" / "trajectory.png")) is not None


def test_cut_last_line_is_dropped_other_bad_lines_are_errors(real_run, tmp_path):
    text = real_run["fixes"].read_text()
    cut = tmp_path / "cut.jsonl"
    cut.write_text(text + text.splitlines()[0][:25])  # a run killed mid-write
    assert len(load_fixes(cut)) == len(text.splitlines())
    bad = tmp_path / "bad.jsonl"
    lines = text.splitlines()
    bad.write_text("\n".join(lines[:2] + ["{oops"] + lines[2:]) + "\n")
    with pytest.raises(SkylocError, match="line 3"):
        load_fixes(bad)
    rec = json.loads(lines[0])
    rec["lat"] = float("nan")
    nan = tmp_path / "nan.jsonl"
    nan.write_text(json.dumps(rec) + "\n")
    with pytest.raises(SkylocError, match="lat"):
        load_fixes(nan)


def test_schema_accepts_loop_records_and_refuses_bad_ones(real_run):
    for r in load_fixes(real_run["fixes"]):  # v1 records, as the loop writes them now
        validate_record(r)
    good = {"schema": SCHEMA_VERSION, "frame": 3, "time_s": 0.3, "source": "cam", "latency_ms": {"total": 12.5},
            "lat": 60.1, "lon": 22.2, "raw_lat": 60.1, "raw_lon": 22.2, "accepted": True, "score": 0.8,
            "confidence": 0.1, "tile": 7, "verified": True, "accuracy_m": 4.0, "heading_deg": 270.0,
            "ground_lat": 60.1001, "ground_lon": 22.2, "scale_level": 1.0, "reason": None}
    assert validate_record(good, strict=True) == good
    for change, what in [({"lat": 91.0}, "lat"), ({"lat": float("nan")}, "finite"), ({"frame": -1}, "frame"),
                         ({"accepted": 1}, "accepted"), ({"schema": "skyloc.fix/99"}, "schema"),
                         ({"latency_ms": {"total": -1}}, "latency_ms"), ({"accuracy_m": -2.0}, "accuracy_m"),
                         ({"lat": None}, "missing lat"), ({"tile": -3}, "tile"), ({"registration": 3}, "registration"), ({"heading_deg": 361.0}, "heading_deg")]:
        with pytest.raises(SkylocError, match=what):
            validate_record({**good, **change})
    del good["frame"]
    with pytest.raises(SkylocError, match="frame"):
        validate_record(good)
    with pytest.raises(SkylocError, match="unknown"):
        validate_record({"schema": SCHEMA_VERSION, "frame": 0, "time_s": 0.0, "source": "x", "latency_ms": {},
                         "skipped": "corrupt", "bogus": 1}, strict=True)


def test_schema_markdown_lists_every_field():
    md = schema_markdown()
    assert SCHEMA_VERSION in md
    for f in FIELDS:
        assert f"| `{f.name}` |" in md


def test_readme_documents_the_current_schema():
    """The README's fix-record table is the schema's own table: a field added to the schema and not
    documented (or documented differently) fails here."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    md = schema_markdown()
    table = md[md.index("| field"):].strip()
    assert table in readme
    assert f"schema `{SCHEMA_VERSION}`" in readme


def test_gpx_time_only_from_the_absolute_capture_time(tmp_path):
    import datetime

    from skyloc.runtime.outputs.tracks import write_tracks

    base = {"schema": SCHEMA_VERSION, "source": "cam", "latency_ms": {"total": 1.0}, "raw_lat": 0.0, "raw_lon": 0.0}
    recs = [{**base, "frame": 0, "time_s": 5.0, "lat": 60.25, "lon": 22.5, "accepted": True, "verified": True,
             "capture_unix_s": 1767225600.25},  # 2026-01-01T00:00:00.25Z
            {**base, "frame": 1, "time_s": 6.0, "lat": 60.2501, "lon": 22.5001, "accepted": True}]
    for r in recs:
        validate_record(r, strict=True)
    paths = write_tracks(recs, tmp_path)
    gpx = ET.parse(paths["gpx"]).getroot()
    times = [(w.find(f"{GPX}time").text if w.find(f"{GPX}time") is not None else None) for w in gpx.iter(f"{GPX}wpt")]
    assert times == ["2026-01-01T00:00:00.250Z", None]
    assert [w.find(f"{GPX}type").text for w in gpx.iter(f"{GPX}wpt")] == ["verified", "accepted"]
    kml = ET.parse(paths["kml"]).getroot()
    folders = {f.find(f"{KML}name").text: [c.text for c in f.iter(f"{KML}coordinates")] for f in kml.iter(f"{KML}Folder")}
    assert folders == {"verified (1)": ["22.5,60.25"], "accepted (1)": ["22.5001,60.2501"]}
    got = datetime.datetime.strptime(times[0], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    assert got.timestamp() == pytest.approx(1767225600.25, abs=1e-3)
    # a single accepted fix has no line, but every format still holds its point
    one = write_tracks(recs[:1], tmp_path / "one")
    assert [f["geometry"]["type"] for f in json.loads(one["geojson"].read_text())["features"]] == ["Point"]


# --- per-frame pictures: timeline, search windows, accuracy, autopilot, registration evidence ----------


def _expected_state(r: dict) -> str:
    # written out from the schema's meaning, not from runtime/report/frames.py
    if r.get("skipped") is not None:
        return "skipped"
    if r.get("verified") is True and r.get("accepted") is True:
        return "sent"
    return "accepted" if r["accepted"] else ("verified" if r.get("verified") else "unverified")


def _reason(r: dict) -> str | None:
    if r.get("skipped") is not None:
        return f"skipped: {r['skipped']}"
    return f"filter: {r['reason']}" if r.get("reason") else None


@pytest.fixture(scope="module")
def flight_run(tmp_path_factory) -> dict:
    """A short simulated flight (heading unknown, camera tilted, altitude wandering) run with map
    registration and --evidence, then `skyloc report --evidence`."""
    from runtime_core_helpers import make_flight_case

    tmp = tmp_path_factory.mktemp("evidence")
    case = make_flight_case(tmp / "case", seconds=5.0, fps=2.0, seed=3)
    rows = list(csv.DictReader(open(case["truth"], newline="")))
    fixes, ev, rep = tmp / "fixes.jsonl", tmp / "evidence", tmp / "rep"
    args = ["run", "--model", str(case["model"]), "--tiles", str(case["tiles"]), "--source", str(case["video"]),
            "--camera", str(case["camera"]), "--telemetry", str(case["truth"]), "--no-heading",
            "--start", f"{rows[0]['lat']},{rows[0]['lon']},150", "--blank-cos", "0.99", "--imagery", str(case["map"]),
            "--out", str(fixes), "--evidence", str(ev)]
    assert skyloc_main(args) == 0
    assert skyloc_main(["report", str(fixes), "--map", str(case["map"]), "--truth", str(case["truth"]),
                        "--evidence", str(ev), "--out", str(rep)]) == 0
    records = [json.loads(s) for s in fixes.read_text().splitlines() if s.strip()]
    return {"case": case, "args": args, "fixes": fixes, "evidence": ev, "rep": rep, "records": records,
            "truth": {int(r["frame"]): r for r in rows}, "tmp": tmp}


def test_evidence_one_image_per_fix_bordered_in_its_state_colour(flight_run):
    from skyloc.runtime.report.frames import FrameState
    from skyloc.runtime.report.pictures import STATE_COLOURS

    pos = [r for r in flight_run["records"] if r.get("skipped") is None]
    names = sorted(p.name for p in flight_run["evidence"].iterdir())
    assert names == [f"frame-{r['frame']:06d}.png" for r in pos]
    states = {_expected_state(r) for r in pos}
    assert "sent" in states  # the flight localizes: most frames are sent
    for r in pos:
        img = cv2.imread(str(flight_run["evidence"] / f"frame-{r['frame']:06d}.png"))
        assert img.shape[0] > 160 and img.shape[1] > 4 * 160
        want = STATE_COLOURS[FrameState(_expected_state(r))]
        assert tuple(int(v) for v in img[1, img.shape[1] // 2]) == want, r["frame"]
        assert tuple(int(v) for v in img[img.shape[0] // 2, 1]) == want, r["frame"]
    rep = json.loads((flight_run["rep"] / "report.json").read_text())
    ev = rep["evidence"]
    assert ev["images"] == len(pos) and set(ev["shown"]) <= {r["frame"] for r in pos}
    by_frame = {r["frame"]: r for r in pos}
    assert {_expected_state(by_frame[f]) for f in ev["shown"]} == states  # every state that occurred is shown
    sheet = cv2.imread(str(flight_run["rep"] / "evidence.png"))
    heights = [cv2.imread(str(flight_run["evidence"] / f"frame-{f:06d}.png")).shape[0] + 6 for f in ev["shown"]]
    assert sheet.shape[0] == sum(heights)
    # the sheet's rows are the shown frames' own images, in frame order
    top = cv2.imread(str(flight_run["evidence"] / f"frame-{ev['shown'][0]:06d}.png"))
    np.testing.assert_array_equal(sheet[:top.shape[0], :top.shape[1]], top)


def test_match_surface_peaks_at_the_true_shift(tmp_path):
    """The evidence's match surface on a map crop against itself: the peak is at the centre when the
    patch is cut at the claimed place, and moves by exactly the shift (east / north) otherwise."""
    from skyloc.runtime.maps.open import open_map
    from skyloc.runtime.report.evidence import match_surface, surface_peak
    from skyloc.core import geo

    gmap = open_map(make_map(tmp_path / "map", width_px=300, height_px=300))
    lat0, lon0 = 60.40, 22.46
    side, px = 48.0, 48  # 1 m / px
    big, _ = gmap.read_crop(lat0, lon0, 2 * side, 2 * px)
    for east, north in ((0.0, 0.0), (6.0, 0.0), (0.0, -9.0), (-5.0, 4.0)):
        la, lo = geo.offset_latlon(lat0, lon0, east, north)
        patch, _ = gmap.read_crop(float(la), float(lo), side, px)
        res = match_surface(patch, np.ones((px, px), bool), big)
        assert res.shape == (px + 1, px + 1)
        peak = surface_peak(res, 1.0)
        assert peak["peak"] > 0.95
        assert peak["east_m"] == pytest.approx(east, abs=1.01) and peak["north_m"] == pytest.approx(north, abs=1.01)
    flat = match_surface(np.full((px, px, 3), 90, np.uint8), np.ones((px, px), bool), big)
    assert surface_peak(flat, 1.0) is None  # a featureless patch has no peak to show


def test_evidence_folder_of_an_earlier_run_is_refused(flight_run, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in flight_run["evidence"].iterdir()}
    args = list(flight_run["args"])
    args[args.index("--out") + 1] = str(tmp_path / "again.jsonl")
    assert skyloc_main(args) == 2
    assert not (tmp_path / "again.jsonl").exists()  # refused before any output was opened
    assert {p.name: p.stat().st_mtime_ns for p in flight_run["evidence"].iterdir()} == before
    # --overwrite replaces the earlier run's images: none of them is left to pass for this run's
    import shutil

    ev = shutil.copytree(flight_run["evidence"], tmp_path / "ev")
    args[args.index("--evidence") + 1] = str(ev)
    assert skyloc_main(args + ["--overwrite", "--max-frames", "2"]) == 0
    recs = [json.loads(s) for s in (tmp_path / "again.jsonl").read_text().splitlines()]
    assert sorted(p.name for p in ev.iterdir()) == [f"frame-{r['frame']:06d}.png" for r in recs
                                                    if r.get("skipped") is None]
    assert len(recs) == 2


def test_timeline_columns_show_each_frames_state_and_reason(real_run, tmp_path):
    from skyloc.runtime.report.frames import FrameState
    from skyloc.runtime.report.pictures import REASON_COLOUR, STATE_COLOURS, timeline_layout

    out = tmp_path / "rep"
    write_report(real_run["fixes"], out, real_run["map"], real_run["truth"])
    records = [json.loads(s) for s in real_run["fixes"].read_text().splitlines() if s.strip()]
    img = cv2.imread(str(out / "timeline.png"))
    lay = timeline_layout(records)
    reasons = list(dict.fromkeys(x for x in map(_reason, records) if x))
    assert lay["rows"] == ["state"] + reasons and "skipped: corrupt" in reasons
    for x, r in zip(lay["x"], records):
        assert tuple(int(v) for v in img[lay["y"]["state"], x]) == STATE_COLOURS[FrameState(_expected_state(r))]
        for label in reasons:
            marked = tuple(int(v) for v in img[lay["y"][label], x]) == REASON_COLOUR
            assert marked == (_reason(r) == label), (r["frame"], label)
    rep = json.loads((out / "report.json").read_text())
    assert rep["frames"]["states"] == {s: sum(_expected_state(r) == s for r in records)
                                       for s in ("sent", "accepted", "verified", "unverified", "skipped")}
    assert rep["frames"]["reasons"] == {k: sum(_reason(r) == k for r in records) for k in reasons}


def test_autopilot_csv_and_accuracy_match_the_records(flight_run):
    records, truth = flight_run["records"], flight_run["truth"]
    rows = list(csv.DictReader(open(flight_run["rep"] / "autopilot.csv", newline="")))
    assert [int(r["frame"]) for r in rows] == [r["frame"] for r in records]
    for row, r in zip(rows, records):
        sent = r.get("skipped") is None and r["verified"] is True and r["accepted"] is True
        assert row["sent"] == str(sent) and row["state"] == _expected_state(r)
        if sent:
            assert (float(row["lat"]), float(row["lon"])) == (r["lat"], r["lon"])
            assert float(row["horiz_accuracy_m"]) == r["accuracy_m"]
            assert float(row["yaw_deg"]) == pytest.approx(r["heading_deg"] % 360.0)  # measured by registration
        else:
            assert row["lat"] == row["lon"] == row["horiz_accuracy_m"] == ""
    rep = json.loads((flight_run["rep"] / "report.json").read_text())
    assert rep["autopilot"]["sent"] == sum(r["sent"] == "True" for r in rows) >= len(records) // 2
    # error against claimed accuracy, recomputed from truth.csv (aircraft position)
    pairs = [(_haversine(float(truth[r["frame"]]["lat"]), float(truth[r["frame"]]["lon"]), r["lat"], r["lon"]),
              r["accuracy_m"]) for r in records if r.get("skipped") is None and r.get("accuracy_m")]
    acc = rep["accuracy"]
    assert acc["n"] == len(pairs)
    assert acc["within_2x"] == sum(e <= 2 * a for e, a in pairs)
    assert acc["within_1x"] == sum(e <= a for e, a in pairs)
    # the start prior comes from the run's resolved config beside the fixes; it was the window until the first fix
    first = truth[min(truth)]
    assert rep["windows"]["start"] == pytest.approx([float(first["lat"]), float(first["lon"]), 150.0])
    assert rep["windows"]["prior"] == 1 + next(i for i, r in enumerate(records) if r.get("verified"))
    for name in ("accuracy.png", "autopilot.png", "window.png", "timeline.png"):
        img = cv2.imread(str(flight_run["rep"] / name))
        assert img is not None and img.std() > 5, name
    md = (flight_run["rep"] / "report.md").read_text()
    assert f"{rep['autopilot']['sent']} of {len(records)} frames" in md and "![evidence](evidence.png)" in md


def test_search_windows_drawn_where_the_filter_centred_them(tmp_path):
    """Hand-made records: a start prior, an init fix, then track windows around the last fix taken."""
    from skyloc.runtime.report.frames import search_windows
    from skyloc.runtime.report.pictures import window_png
    from skyloc.core import geo

    base = {"schema": SCHEMA_VERSION, "source": "cam", "latency_ms": {"total": 1.0}}
    fix = dict(base, accepted=True, verified=True, score=0.9, confidence=0.1, tile=0)
    lat0, lon0 = 60.40, 22.46
    p1 = geo.offset_latlon(lat0, lon0, 30.0, 0.0)
    p2 = geo.offset_latlon(lat0, lon0, 60.0, 10.0)
    recs = [dict(base, frame=0, time_s=0.0, skipped="no-match"),
            dict(fix, frame=1, time_s=1.0, lat=float(p1[0]), lon=float(p1[1]), accepted=False, reason="init",
                 window_m=200.0),
            dict(fix, frame=2, time_s=2.0, lat=float(p2[0]), lon=float(p2[1]), window_m=80.0),
            dict(fix, frame=3, time_s=3.0, lat=float(p2[0]), lon=float(p2[1]), window_m=50.0)]
    for r in recs:
        validate_record(r)
    wins = search_windows(recs, (lat0, lon0, 200.0))
    assert [(w["frame"], w["kind"], w["radius_m"]) for w in wins] == [(1, "prior", 200.0), (2, "track", 80.0),
                                                                       (3, "track", 50.0)]
    assert (wins[1]["lat"], wins[1]["lon"]) == (float(p1[0]), float(p1[1]))  # around the init fix
    assert (wins[2]["lat"], wins[2]["lon"]) == (float(p2[0]), float(p2[1]))  # around the accepted one
    assert search_windows(recs, None)[0]["frame"] == 2  # prior centre unknown: not drawn
    path, view = window_png(tmp_path / "w.png", recs, wins)
    img = cv2.imread(str(path))
    for w, colour in ((wins[0], (255, 255, 255)), (wins[2], (0, 230, 255))):
        c = view.px(w["lat"], w["lon"])
        x, y = int(round(c[0] + w["radius_m"] / view.mpp)), int(round(c[1]))  # the circle's east point
        near = img[y - 2:y + 3, x - 2:x + 3].reshape(-1, 3)
        assert any(tuple(int(v) for v in p) == colour for p in near), (w, near)
