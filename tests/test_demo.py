"""The shortened demo (`skyloc demo --quick` settings) runs every stage and reports: a flight with
the heading unknown to the run, the altitude wandering and the camera tilted, localized by
retrieval + map registration."""
from __future__ import annotations

import csv
import json
import math

import cv2
import numpy as np


def _haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6378137.0 * math.asin(math.sqrt(a))


def test_quick_demo_writes_report_and_localizes(demo_run) -> None:
    out = demo_run["out"]
    report = json.loads(demo_run["report"].read_text())
    for name in ("report.md", "trajectory.png", "retrieval.png", "fixes.jsonl", "model.onnx", "tiles.npz",
                 "int8/model.int8-ort.onnx", "int8/model.int8-trt.onnx", "flight/flight.mp4", "flight/truth.csv",
                 "flight/flight.json"):
        assert (out / name).is_file(), name
    for png in ("trajectory.png", "retrieval.png"):
        img = cv2.imread(str(out / png))
        assert img is not None and img.shape[0] > 100 and img.std() > 10  # a real picture, not blank

    # recompute the numbers from the raw files, independently of the report code
    with open(out / "flight" / "truth.csv", newline="") as f:
        truth = {int(r["frame"]): r for r in csv.DictReader(f)}
    alts = [float(r["altitude_m"]) for r in truth.values()]
    assert max(alts) - min(alts) > 10.0 and max(float(r["tilt_deg"]) for r in truth.values()) > 2.0  # flown the new way
    fixes = [json.loads(l) for l in (out / "fixes.jsonl").read_text().splitlines()]
    assert len(fixes) == len(truth) == report["summary"]["frames"]
    located = [x for x in fixes if "raw_lat" in x]
    err = {x["frame"]: _haversine(float(truth[x["frame"]]["lat"]), float(truth[x["frame"]]["lon"]),
                                  x["raw_lat"], x["raw_lon"]) for x in located}
    verified = [x for x in located if x["verified"]]
    s = report["summary"]
    assert s["verified_rate"] == round(len(verified) / len(fixes), 3) >= 0.8
    assert s["verified_median_error_m"] == round(float(np.median([err[x["frame"]] for x in verified])), 1) <= 5.0
    # integrity: no accepted fix far off; only verified, accepted fixes were sent as a 3D fix
    for x in located:
        if x["accepted"]:
            assert _haversine(float(truth[x["frame"]]["lat"]), float(truth[x["frame"]]["lon"]), x["lat"], x["lon"]) <= 50
        assert x["send_3d"] == (x["verified"] and x["accepted"])
    # the heading was searched, not given: registration recovered it
    assert all(x["heading_source"] in ("rotation-search", "registration") for x in located)
    calib = np.mean([err[x["frame"]] <= 2 * x["raw_accuracy_m"] for x in verified])
    assert s["accuracy_calibration"] == round(float(calib), 3) >= 0.9
    assert report["precision"] == "int8-ort" and "onnxruntime" in report["backend"]
    assert {"rectify", "infer", "retrieve", "register", "total"} <= set(report["latency_ms"])
    assert set(report["stage_seconds"]) == {"map", "dataset", "train", "export", "int8", "tiles", "flight", "run"}
    md = (out / "report.md").read_text()
    assert "verified-fix rate" in md and "accuracy calibration" in md and "latency register" in md


def test_demo_report_shows_the_runs_evidence_and_timeline(demo_run) -> None:
    out = demo_run["out"]
    fixes = [json.loads(l) for l in (out / "fixes.jsonl").read_text().splitlines()]
    positioned = [x for x in fixes if "skipped" not in x]
    assert sorted(p.name for p in (out / "evidence").iterdir()) == [f"frame-{x['frame']:06d}.png" for x in positioned]
    run_report = json.loads((out / "run-report.json").read_text())
    assert run_report["evidence"]["images"] == len(positioned)
    assert run_report["autopilot"]["sent"] == sum(x["verified"] and x["accepted"] for x in positioned)
    md = (out / "report.md").read_text()
    for png in ("evidence.png", "timeline.png", "accuracy.png"):
        assert f"]({png})" in md and cv2.imread(str(out / png)) is not None, png


def test_demo_rerun_would_reuse_the_model_trained_on_the_same_settings(demo_run, tmp_path) -> None:
    """The demo's training run records its key; the same settings over a freshly generated world (the
    world a re-run makes) give that key, so a re-run into the folder skips training; the world's
    bytes and every setting change it."""
    import dataclasses

    from skyloc.pipelines.demo import reusable_checkpoint, training_key, training_settings
    from skyloc.synth.world import make_world

    cfg, out = demo_run["config"], demo_run["out"]
    world = make_world(tmp_path / "world", seed=cfg.seed, size_m=cfg.world_size_m, mpp=1.0)
    key = training_key(world, *training_settings(cfg))
    ckpt = reusable_checkpoint(out / "run", key)
    assert ckpt is not None and ckpt.parent == out / "run" and ckpt.suffix == ".pt"
    assert json.loads((out / "report.json").read_text())["model_reused"] is False  # the fixture trained
    for change in ({"epochs": cfg.epochs + 1}, {"locations": cfg.locations - 1}, {"seed": cfg.seed + 1}):
        other = training_key(world, *training_settings(dataclasses.replace(cfg, **change)))
        assert other != key and reusable_checkpoint(out / "run", other) is None, change
    png = world.parent / "map.png"  # make_world returns the corners CSV; the picture lies beside it
    png.write_bytes(png.read_bytes() + b"another world")
    assert training_key(world, *training_settings(cfg)) != key
