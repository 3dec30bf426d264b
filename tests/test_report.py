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
                        "--tile-m", "60", "--stride-m", "20", "--no-progress"]) == 0
    ts = TileSet.load(tiles)
    gmap = open_map(mp)
    frames = tmp / "frames"
    frames.mkdir()
    # frames at tile centres along a row (exact matches), then one noise frame (a wrong match)
    row = ts.centers[np.argsort(ts.centers[:, 1])]
    row = row[np.abs(row[:, 0] - np.median(row[:, 0])) < 1e-7][:8]
    truth_rows = []
    for i, (lat, lon) in enumerate(row):
        crop, _ = gmap.read_crop(float(lat), float(lon), 60.0, 64)
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
                        "--out", str(fixes), "--max-speed", "25", "--no-register"]) == 0  # retrieval only: fast
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
    assert len(records) == real_run["n"] + 2 and len(pos) == real_run["n"] + 1
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
        ["accepted" if r["accepted"] else "rejected" for r in pos]

    kml = ET.parse(out / "track.kml").getroot()
    assert kml.tag == f"{KML}kml"
    coords = [c.text for c in kml.iter(f"{KML}coordinates")]
    track = [tuple(map(float, xy.split(","))) for xy in coords[0].split()]
    assert track == [(r["lon"], r["lat"]) for r in acc]
    pts = sorted(tuple(map(float, c.split(","))) for c in coords[1:])
    assert pts == sorted((r["lon"], r["lat"]) for r in pos)

    rep = json.loads((out / "report.json").read_text())
    s = rep["summary"]
    assert s["frames"] == len(records) and s["accepted"] == len(acc) and s["skipped"] == {"corrupt": 1}
    # error vs truth recomputed here from the raw files (the truth's aircraft and centre columns are equal here)
    truth = {int(r["frame"]): r for r in csv.DictReader(open(real_run["truth"]))}
    errs = [_haversine(float(truth[r["frame"]]["center_lat"]), float(truth[r["frame"]]["center_lon"]),
                       r["lat"], r["lon"]) for r in acc]
    assert s["truth"]["accepted_error_m"]["median"] == pytest.approx(float(np.median(errs)), abs=0.02)
    assert s["truth"]["accepted_error_m"]["n"] == len(acc)
    assert set(rep["latency_ms"]) >= {"grab", "infer", "search", "total"}
    totals = [r["latency_ms"]["total"] for r in records]
    assert rep["latency_ms"]["total"]["max"] == pytest.approx(max(totals), abs=1e-3)
    assert "track.gpx" in (out / "report.md").read_text()


def test_report_without_map_or_truth(real_run, tmp_path):
    path = write_report(real_run["fixes"], tmp_path / "r")
    files = json.loads(path.read_text())["files"]
    assert set(files) == {"geojson", "gpx", "kml", "trajectory", "latency"}  # no truth: no error plot
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
