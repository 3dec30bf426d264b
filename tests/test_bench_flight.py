"""`skyloc bench flight`: the per-run metrics against a hand computation, a CI-sized flight
through `skyloc run` (tiny ONNX model, procedural world) and the real-photo measurement."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from skyloc.benchmarks.flight import DATA, flight_goals, flight_metrics, flight_rows, photo_rows

from runtime_core_helpers import make_tiny_model


def _rec(err, ver, acc, raw_acc=2.0, ferr=None, skipped=False, lat=None):
    if skipped:
        return {"frame": 0, "skipped": "blank", "latency_ms": {"quality": 1.0}}
    return {"truth_error_m": err, "verified": ver, "accepted": acc, "raw_accuracy_m": raw_acc,
            "truth_filtered_error_m": err if ferr is None else ferr,
            "latency_ms": lat or {"infer": 10.0, "register": 5.0}}


def test_flight_metrics_by_hand():
    recs = [_rec(1.0, True, True), _rec(3.0, True, True, raw_acc=1.0), _rec(9.0, True, False),
            _rec(40.0, False, True, ferr=60.0), _rec(0, False, False, skipped=True)]
    m = flight_metrics(recs)
    assert m["frames"] == 5 and m["skipped"] == 1 and m["verified"] == 3
    assert m["verified_rate"] == pytest.approx(3 / 4)
    assert m["verified_median_m"] == pytest.approx(3.0)
    assert m["verified_p95_m"] == pytest.approx(3.0 + 0.9 * 6.0)  # numpy linear: 3 + (9-3)*0.9
    assert m["accepted"] == 3 and m["accepted_max_m"] == pytest.approx(60.0)
    assert m["within_2acc"] == pytest.approx(1 / 3)  # 1 <= 4 yes; 3 <= 2 no; 9 <= 4 no
    assert m["latency_p50_ms"] == pytest.approx(15.0) and m["register_p50_ms"] == pytest.approx(5.0)
    goals = {g.name: g for g in flight_goals([{"map": "turku", "heading": "unknown", "registration": "on", **m}],
                                             [], [])}
    assert goals["pipeline: accepted fix error"].met is False
    assert goals["pipeline: verified median error"].met is True
    assert goals["pipeline: verified-fix rate"].met is False  # 75 % < 80 %
    assert goals["registration stage: simulated flights"].met is None  # not run: says so


def test_ci_sized_flight_runs_through_skyloc_run(tmp_path: Path):
    model = make_tiny_model(tmp_path / "tiny.onnx", size=32, dim=16)
    rows = flight_rows(model, [("procedural", None)], [80.0], tmp_path / "work", seconds=3.0, fps=1.0,
                       width=320, height=240, headings=("unknown",), registration=(True,), progress=False,
                       world_m=500.0)
    assert len(rows) == 1, rows
    r = rows[0]
    assert r["status"] == "rc 0", r
    out = tmp_path / "work" / "procedural-80" / "fixes-unknown-reg.jsonl"
    recs = [json.loads(l) for l in out.read_text().splitlines() if l.strip()]
    assert r["frames"] == len(recs) == 3
    assert r == {**r, **flight_metrics(recs)}
    ts_meta = json.loads(json.dumps(r))  # plain numbers, CSV-able
    fov = min(60.0, 2 * math.degrees(math.atan(50.0 / 80.0)))  # the lens keeps ~100 m of ground
    assert ts_meta["fov_deg"] == pytest.approx(fov, abs=0.05)
    assert ts_meta["tile_m"] == pytest.approx(round(0.55 * 2 * 80 * math.tan(math.radians(fov / 2)) * 240 / 320))
    assert ts_meta["speed_mps"] == 8.0  # the 500 m world holds the first try
    # the run had the take-off prior: 300 m radius, centred 150 m off the first true position
    start = json.loads((out.parent / "fixes-unknown-reg.jsonl.config.json").read_text())["options"]["start"]
    import csv

    with open(tmp_path / "work" / "procedural-80" / "flight" / "truth.csv", newline="") as f:
        first = next(csv.DictReader(f))
    assert start[2] == 300.0
    assert _haversine(start[0], start[1], float(first["lat"]), float(first["lon"])) == pytest.approx(150.0, abs=0.5)


def _haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    r = 6378137.0
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * r * math.asin(math.sqrt(a))


def test_a_map_too_small_for_the_first_flight_gets_a_slower_one(tmp_path: Path):
    from skyloc.benchmarks.flight_setup import FLIGHT_FITS, fit_flight
    from skyloc.synth.world import make_world

    world = make_world(tmp_path / "world", seed=0, size_m=300.0, mpp=0.5)
    video, row = fit_flight(world, tmp_path / "flight", 80.0, 10.0, 1.0, 5.0, 320, 240, 60.0, 0, 100.0)
    assert video.exists()
    assert row["speed_mps"] < FLIGHT_FITS[0][0] or row["fov_deg"] < 64.0


def test_photo_rows_measure_the_real_pair():
    if not (DATA / "aerovloc" / "map").exists():
        pytest.skip(f"{DATA / 'aerovloc'} not present")
    rows = photo_rows(cases=[("ncc", {}, "known", 0.0, 1)], offsets=[(150.0, 150.0)], progress=False)
    assert len(rows) == 1
    r = rows[0]
    assert r["verified"] and r["error_m"] < 10.0, r
    assert r["window_m"] > 600 and r["peak"] > r["second"]


def test_registration_stage_flight_heading_unknown_meets_the_goal(tmp_path: Path):
    """CI-sized: frames of a tilted, rolling, turning flight over the procedural world, rectified
    with the flight's camera + telemetry, heading unknown (estimate up to 22.5 deg off), place given
    up to one stride off: registered to metres, with honest accuracy."""
    from skyloc.benchmarks.flight_registration import registration_flight_rows

    rows = registration_flight_rows([("procedural", None)], [80.0], tmp_path, seconds=5.0, fps=1.0, width=320,
                                    height=240, headings=("unknown",), progress=False, world_m=600.0)
    assert len(rows) == 1 and rows[0]["status"] == "ok", rows
    r = rows[0]
    assert r["frames"] == 5
    assert r["verified_rate"] >= 0.8, r
    assert r["verified_median_m"] <= 5.0 and r["verified_max_m"] <= 15.0, r
    assert r["within_2acc"] >= 0.8, r


def test_photo_run_goals_and_priors_by_hand():
    """The headline goal: the real photo through `skyloc run` verified within 3 m in each of
    heading known / unknown x prior 300 m / none (GSD known); GSD unknown is reported only."""
    from skyloc.benchmarks.flight import photo_run_goals
    from skyloc.benchmarks.flight_photo import photo_run_argv
    from skyloc.core.geo import haversine_m

    def row(h, g, p, ver, err):
        return {"heading": h, "gsd": g, "prior_m": p, "verified": ver, "error_m": err}

    good = [row(h, "known", p, True, 1.0) for h in ("known", "unknown") for p in (300.0, 1000.0, "none")]
    goals = photo_run_goals(good + [row("known", "unknown", "none", False, 80.0)])
    assert [g.met for g in goals] == [True, None] and goals[0].measured.startswith("4/4")
    bad = [dict(r) for r in good]
    bad[0]["error_m"] = 3.5  # verified but 3.5 m off: misses the goal
    assert photo_run_goals(bad)[0].met is False
    bad[0].update(error_m=1.0, verified=False)
    assert photo_run_goals(bad)[0].met is False
    assert photo_run_goals(good[2:3] + good[5:6])[0].measured.startswith("2/2")  # 1000 m rows are not the goal's
    case = {"model": Path("m.onnx"), "tiles": Path("t.npz"), "photos": Path("p"), "lat": 55.54, "lon": 38.25}
    argv = photo_run_argv(case, "unknown", "known", 300.0, Path("o.jsonl"))
    lat, lon, r = (float(v) for v in argv[argv.index("--start") + 1].split(","))
    assert r == 300.0 and haversine_m(lat, lon, 55.54, 38.25) == pytest.approx(210.0, abs=0.5)
    assert "--yaw" not in argv and argv[argv.index("--gsd") + 1] == "0.065"
    argv = photo_run_argv(case, "known", "unknown", None, Path("o.jsonl"))
    assert "--start" not in argv and "--gsd" not in argv and argv[argv.index("--yaw") + 1] == "0"
    flags = ("--xfeat-glue", "g.onnx", "--register-deadline-s", "60")
    assert photo_run_argv(case, "known", "unknown", None, Path("o.jsonl"), flags)[-4:] == list(flags)


def test_registration_label_names_the_matcher_and_glue(tmp_path):
    import json

    from skyloc.benchmarks.flight import registration_label

    m = tmp_path / "d.onnx"
    m.with_suffix(".json").write_text(json.dumps({"kind": "disk"}))
    assert registration_label(None) == "ncc" and registration_label(m) == "disk"
    assert registration_label(m, ["--xfeat-glue", "/x/disk-lightglue.onnx"]) == "disk+disk-lightglue"
    assert registration_label(tmp_path / "missing.onnx") == "learned"


def test_wrong_map_goal_counts_every_verified_frame():
    from skyloc.benchmarks.flight_wrong_map import wrong_map_goals

    row = {"flown_over": "turku", "registered_against": "aerovloc", "altitude_m": 80.0, "status": "rc 0",
           "frames": 20, "registered": 20, "verified": 0, "accepted": 0, "sent_3d": 0, "max_inliers": 17}
    refused = {**row, "status": "rc 2", "frames": 0, "registered": 0, "max_inliers": 0}
    (ok,) = wrong_map_goals([row, refused])
    assert ok.met is True and "0 of 20" in ok.measured and "17 inliers" in ok.measured
    (bad,) = wrong_map_goals([row, {**row, "verified": 1, "max_inliers": 30}])
    assert bad.met is False and "1 of 40" in bad.measured
    assert wrong_map_goals([refused]) == []  # nothing ran: no goal claimed
