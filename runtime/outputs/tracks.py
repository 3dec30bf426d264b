"""A run's fixes as GeoJSON, GPX 1.1 and KML 2.2 tracks (QGIS, Mission Planner, Google Earth).

Each file holds the accepted track (the positions that were sent) as a line, and every fix as a
point with its status (accepted / verified / rejected) and frame, so rejected matches can be
inspected too. Coordinates are written with Python's shortest round-trip float text, so a
reader gets back exactly the numbers of the fix record. Every file is written atomically.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from skyloc.core.atomic import write_text_atomic

GPX_NS = "http://www.topografix.com/GPX/1/1"
KML_NS = "http://www.opengis.net/kml/2.2"


@dataclass(frozen=True)
class TrackPoint:
    frame: int
    time_s: float
    lat: float
    lon: float
    status: str  # verified | accepted | rejected
    reason: str | None = None
    accuracy_m: float | None = None
    error_m: float | None = None  # vs truth, when the report had it
    unix_s: float | None = None  # absolute UTC capture time, when the source knew it


def track_points(records: Iterable[dict[str, Any]]) -> list[TrackPoint]:
    """One point per record that holds a position (skipped frames have none)."""
    pts = []
    for r in records:
        lat, lon = r.get("lat"), r.get("lon")
        if r.get("skipped") is not None or lat is None or lon is None:
            continue
        if not (math.isfinite(lat) and math.isfinite(lon)):
            continue
        accepted = bool(r.get("accepted"))
        status = "rejected" if not accepted else ("verified" if r.get("verified") else "accepted")
        pts.append(TrackPoint(int(r["frame"]), float(r["time_s"]), float(lat), float(lon), status,
                              r.get("reason"), r.get("accuracy_m"), r.get("report_error_m"), r.get("capture_unix_s")))
    return pts


def _num(x: float) -> str:
    return repr(float(x))


def _props(p: TrackPoint) -> dict[str, Any]:
    d: dict[str, Any] = {"frame": p.frame, "time_s": p.time_s, "status": p.status}
    for k in ("reason", "accuracy_m", "error_m", "unix_s"):
        v = getattr(p, k)
        if v is not None:
            d[k] = v
    return d


def geojson_track(points: Sequence[TrackPoint], name: str = "skyloc") -> dict[str, Any]:
    accepted = [p for p in points if p.status != "rejected"]
    features: list[dict[str, Any]] = []
    if len(accepted) >= 2:
        features.append({"type": "Feature", "properties": {"name": f"{name} accepted track", "kind": "track",
                                                           "frames": [p.frame for p in accepted]},
                         "geometry": {"type": "LineString", "coordinates": [[p.lon, p.lat] for p in accepted]}})
    for p in points:
        features.append({"type": "Feature", "properties": {"kind": "fix", **_props(p)},
                         "geometry": {"type": "Point", "coordinates": [p.lon, p.lat]}})
    return {"type": "FeatureCollection", "name": name, "features": features}


def write_geojson(points: Sequence[TrackPoint], path: str | os.PathLike, name: str = "skyloc") -> Path:
    # RFC 7946: WGS84 lon, lat order; json.dumps writes floats as their shortest round-trip text
    text = json.dumps(geojson_track(points, name), indent=1, allow_nan=False)
    return write_text_atomic(path, text + "\n")


def _xml_text(root: ET.Element) -> str:
    ET.indent(root, space=" ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_gpx(points: Sequence[TrackPoint], path: str | os.PathLike, name: str = "skyloc") -> Path:
    """GPX 1.1: a waypoint per fix (type = status) and a track of the accepted ones.

    <time> (UTC) only for fixes whose record has `capture_unix_s`: `time_s` is on the source's
    own clock, not UTC; it goes in each point's <desc>.
    """
    ET.register_namespace("", GPX_NS)
    q = lambda tag: f"{{{GPX_NS}}}{tag}"  # noqa: E731
    root = ET.Element(q("gpx"), {"version": "1.1", "creator": "skyloc"})
    meta = ET.SubElement(root, q("metadata"))
    ET.SubElement(meta, q("name")).text = name
    for p in points:
        w = ET.SubElement(root, q("wpt"), {"lat": _num(p.lat), "lon": _num(p.lon)})
        _gpx_time(w, q, p)
        ET.SubElement(w, q("name")).text = f"frame {p.frame}"
        ET.SubElement(w, q("desc")).text = _desc(p)
        ET.SubElement(w, q("type")).text = p.status
    trk = ET.SubElement(root, q("trk"))
    ET.SubElement(trk, q("name")).text = f"{name} accepted track"
    seg = ET.SubElement(trk, q("trkseg"))
    for p in points:
        if p.status != "rejected":
            t = ET.SubElement(seg, q("trkpt"), {"lat": _num(p.lat), "lon": _num(p.lon)})
            _gpx_time(t, q, p)
            ET.SubElement(t, q("name")).text = f"frame {p.frame}"
    return write_text_atomic(path, _xml_text(root))


def _gpx_time(el: ET.Element, q: Any, p: TrackPoint) -> None:
    # GPX 1.1 puts <time> right after <ele>; we write no <ele>, so first
    if p.unix_s is not None and math.isfinite(p.unix_s):
        t = datetime.datetime.fromtimestamp(p.unix_s, tz=datetime.timezone.utc)
        ET.SubElement(el, q("time")).text = t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _desc(p: TrackPoint) -> str:
    parts = [f"t={p.time_s:g} s", p.status]
    if p.reason:
        parts.append(f"reason {p.reason}")
    if p.accuracy_m is not None:
        parts.append(f"accuracy {p.accuracy_m:g} m")
    if p.error_m is not None:
        parts.append(f"error {p.error_m:.1f} m")
    return ", ".join(parts)


_KML_COLOURS = {"verified": "ffffff00", "accepted": "ff00ff00", "rejected": "ff0000ff"}  # aabbggrr


def write_kml(points: Sequence[TrackPoint], path: str | os.PathLike, name: str = "skyloc") -> Path:
    """KML 2.2: the accepted track as a LineString and a folder of points per status."""
    ET.register_namespace("", KML_NS)
    q = lambda tag: f"{{{KML_NS}}}{tag}"  # noqa: E731
    root = ET.Element(q("kml"))
    doc = ET.SubElement(root, q("Document"))
    ET.SubElement(doc, q("name")).text = name
    for status, colour in _KML_COLOURS.items():
        st = ET.SubElement(doc, q("Style"), {"id": status})
        ic = ET.SubElement(st, q("IconStyle"))
        ET.SubElement(ic, q("color")).text = colour
        ET.SubElement(ic, q("scale")).text = "0.6"
    st = ET.SubElement(doc, q("Style"), {"id": "track"})
    ls = ET.SubElement(st, q("LineStyle"))
    ET.SubElement(ls, q("color")).text = "ff00ff00"
    ET.SubElement(ls, q("width")).text = "3"
    accepted = [p for p in points if p.status != "rejected"]
    if len(accepted) >= 2:
        pm = ET.SubElement(doc, q("Placemark"))
        ET.SubElement(pm, q("name")).text = f"{name} accepted track"
        ET.SubElement(pm, q("styleUrl")).text = "#track"
        line = ET.SubElement(pm, q("LineString"))
        ET.SubElement(line, q("tessellate")).text = "1"
        ET.SubElement(line, q("coordinates")).text = " ".join(f"{_num(p.lon)},{_num(p.lat)}" for p in accepted)
    for status in _KML_COLOURS:
        chosen = [p for p in points if p.status == status]
        if not chosen:
            continue
        folder = ET.SubElement(doc, q("Folder"))
        ET.SubElement(folder, q("name")).text = f"{status} ({len(chosen)})"
        for p in chosen:
            pm = ET.SubElement(folder, q("Placemark"))
            ET.SubElement(pm, q("name")).text = f"frame {p.frame}"
            ET.SubElement(pm, q("description")).text = _desc(p)
            ET.SubElement(pm, q("styleUrl")).text = f"#{status}"
            pt = ET.SubElement(pm, q("Point"))
            ET.SubElement(pt, q("coordinates")).text = f"{_num(p.lon)},{_num(p.lat)}"
    return write_text_atomic(path, _xml_text(root))


def write_tracks(records: Iterable[dict[str, Any]], out_dir: str | os.PathLike, stem: str = "track",
                 name: str = "skyloc") -> dict[str, Path]:
    """GeoJSON, GPX and KML of the records into out_dir; returns {format: path}."""
    out = Path(out_dir)
    pts = track_points(records)
    return {"geojson": write_geojson(pts, out / f"{stem}.geojson", name),
            "gpx": write_gpx(pts, out / f"{stem}.gpx", name),
            "kml": write_kml(pts, out / f"{stem}.kml", name)}
