"""`skyloc bench learned-gate`: the gate choice and the wrong-place geometry against brute force,
and the re-scoring path end to end (no imagery needed)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from skyloc.benchmarks.learned_gate import CROP_M, Query, _wrong_centre, bench_learned_gate, choose_gate, passes
from skyloc.core import geo


def _rows(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(300):
        wrong = k % 3 != 0
        inl = int(rng.integers(2, 14)) if wrong else int(rng.integers(8, 200))
        rows.append({"kind": "wrong" if wrong else "right", "inliers": inl, "second": int(rng.integers(0, 12)),
                     "geometry_ok": True, "error_m": float(rng.uniform(0, 3)), "accuracy_m": 1.0})
    return rows


def test_choose_gate_refuses_every_wrong_place_and_counts_like_brute_force():
    rows = _rows()
    for g in choose_gate(rows):
        m, floor = g["margin"], g["min_inliers"]
        wrong_max = max(r["inliers"] for r in rows if r["kind"] == "wrong" and r["inliers"] >= m * r["second"])
        assert floor == max(8, math.ceil(1.5 * (wrong_max + 1)))
        assert g["wrong_verified"] == 0
        ok = [r for r in rows if r["kind"] == "right" and r["inliers"] >= floor and r["inliers"] >= m * r["second"]]
        assert g["right_verified"] == len(ok)
        assert g["within_2acc_pct"] == round(100 * sum(r["error_m"] <= 2.0 for r in ok) / max(len(ok), 1), 1)
    assert not passes({"geometry_ok": False, "inliers": 500, "second": 0}, 10, 2.0)


def test_inlier_ratio_removes_chance_fits_from_the_gate():
    """A wrong place whose many inliers are a small share of many putative matches (chance agreements)
    neither raises the floor nor passes once the ratio is asked for; a right one keeps passing."""
    rows = _rows() + [{"kind": "wrong", "inliers": 30, "second": 5, "matches": 500, "geometry_ok": True,
                       "error_m": 300.0, "accuracy_m": 1.0}]
    plain = {g["margin"]: g for g in choose_gate(rows)}
    ratio = {g["margin"]: g for g in choose_gate(rows, 0.08)}
    assert plain[2.0]["worst_wrong_inliers"] == 30 and ratio[2.0]["worst_wrong_inliers"] < 14
    assert ratio[2.0]["wrong_verified"] == 0 and ratio[2.0]["min_inlier_ratio"] == 0.08
    assert not passes(rows[-1], 24, 2.5, 0.08) and passes(rows[-1], 24, 2.5, 0.0)
    assert passes({"geometry_ok": True, "inliers": 30, "second": 5, "matches": 300}, 24, 2.5, 0.08)


def test_wrong_place_crops_hold_none_of_the_query_ground():
    rng = np.random.default_rng(1)
    lat0, lon0 = 60.4, 22.46
    q = Query("turku", np.zeros((2, 2, 3), np.uint8), np.ones((2, 2), bool), 0.5, lat0, lon0, 0.0, 1.0, 110.0)
    for _ in range(100):
        lat, lon, d = _wrong_centre(q, rng)
        assert 150 <= d <= 500
        ce, cn = geo.latlon_to_local_m(lat, lon, lat0, lon0)
        a = rng.uniform(0, 2 * np.pi, 2000)
        rad = q.radius_m * np.sqrt(rng.uniform(0, 1, 2000))  # points of the query's ground disk
        inside = (np.abs(rad * np.sin(a) - ce) <= CROP_M / 2) & (np.abs(rad * np.cos(a) - cn) <= CROP_M / 2)
        assert not inside.any()


def test_rescore_writes_results_from_earlier_trials(tmp_path: Path):
    from skyloc.benchmarks.report import write_csv

    rows = [{**r, "query": "turku", "map": "turku", "heading": "unknown", "crop_dist_m": 300.0,
             "heading_err_deg": 1.0, "scale_err": 0.0, "seconds": 1.0, "reason": ""} for r in _rows()]
    trials = write_csv(tmp_path / "old.csv", rows, list(rows[0]))
    paths = bench_learned_gate(rescore=trials, results_dir=tmp_path / "out", command="skyloc bench learned-gate",
                               progress=False)
    md = paths["md"].read_text()
    assert "Gate per margin" in md and "skyloc bench learned-gate" in md
    assert paths["csv"].read_text().count("\n") == len(rows) + 1
