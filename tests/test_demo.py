"""The shortened demo (`skyloc demo --quick` settings) runs every stage and reports."""
from __future__ import annotations

import csv
import json
import math

import cv2
import numpy as np

# The quick demo trains for under a minute on a CPU: it must put the median fix within this
# many metres of the ground truth (one tile stride is 40 m; tiles are ~95 m wide).
MEDIAN_ERROR_BOUND_M = 40.0


def _haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6378137.0 * math.asin(math.sqrt(a))


def test_quick_demo_writes_report_and_localizes(demo_run) -> None:
    out = demo_run["out"]
    report = json.loads(demo_run["report"].read_text())
    for name in ("report.md", "trajectory.png", "retrieval.png", "fixes.jsonl", "model.onnx", "tiles.npz",
                 "int8/model.int8-ort.onnx", "int8/model.int8-trt.onnx", "flight/flight.mp4", "flight/truth.csv"):
        assert (out / name).is_file(), name
    for png in ("trajectory.png", "retrieval.png"):
        img = cv2.imread(str(out / png))
        assert img is not None and img.shape[0] > 100 and img.std() > 10  # a real picture, not blank

    # recompute the error from the raw files, independently of the report code
    with open(out / "flight" / "truth.csv", newline="") as f:
        truth = {int(r["frame"]): (float(r["center_lat"]), float(r["center_lon"])) for r in csv.DictReader(f)}
    fixes = [json.loads(l) for l in (out / "fixes.jsonl").read_text().splitlines()]
    assert len(fixes) == len(truth) == report["summary"]["frames"]
    errors = [_haversine(*truth[x["frame"]], x["raw_lat"], x["raw_lon"]) for x in fixes if "raw_lat" in x]
    median = float(np.median(errors))
    assert report["summary"]["median_error_m"] == round(median, 1)
    assert median < MEDIAN_ERROR_BOUND_M, report["summary"]
    assert report["precision"] == "int8-ort" and "onnxruntime" in report["backend"]
    assert 0 < report["summary"]["fix_rate"] <= 1
    assert set(report["stage_seconds"]) == {"map", "dataset", "train", "export", "int8", "tiles", "flight", "run"}
    md = (out / "report.md").read_text()
    assert "median error" in md and "correct-tile rate" in md
