"""A deadline inside one registrar call (register(..., deadline=...)): a long search (heading
unknown, scale searched) ends within the deadline plus one hypothesis' time with its best so far,
never verified, reason "deadline"; a deadline it never reaches changes nothing. Real Turku map."""
from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from real_data import TURKU, open_real_map
from skyloc.runtime.register.base import DEADLINE_REASON
from skyloc.runtime.register.registry import make_registrar
from test_learned_registrar import _case as _learned_case
from test_register import _case

from skyloc.core.errors import SkylocError

# a 300 m crop (300 working px) registers at one level, a 400 m one coarse-to-fine (register/ncc.py)
CROPS = [300.0, 400.0]
SLACK_S = 0.25  # scheduling on a shared CPU


def _timed(fn):
    t = time.monotonic()
    out = fn()
    return out, time.monotonic() - t


@pytest.mark.parametrize("crop_m", CROPS)
def test_ncc_deadline_cuts_a_long_scan_to_its_best_so_far_unverified(crop_m):
    gmap = open_real_map(TURKU)
    patch, mrgb, mpp, mvalid = _case(gmap, 10.0, 20.0, 133.0, 1.12, seed=4, crop_m=crop_m)
    ncc = make_registrar("ncc")

    def run(deadline_s: float | None):
        dl = None if deadline_s is None else time.monotonic() + deadline_s
        # heading unknown (the whole circle) and the scale searched +-30 %: the no-altitude scan
        return ncc.register(patch, mrgb, mpp, None, 180.0, 0.3, map_valid=mvalid, deadline=dl)

    full, t_full = _timed(lambda: run(None))
    assert full.verified and math.hypot(full.east_m - 10.0, full.north_m - 20.0) < 1.5, full
    # a deadline already past: exactly one hypothesis runs (setup + one correlation + the result)
    one, t_one = _timed(lambda: run(-1.0))
    assert not one.verified and one.reason.startswith(f"{DEADLINE_REASON}: search stopped after 1 hypotheses"), one
    assert math.isinf(one.accuracy_m)
    d = 0.1 * t_full
    assert t_full > 3 * (d + t_one + SLACK_S), "the search is too quick to show the deadline"
    cut, t_cut = _timed(lambda: run(d))
    assert t_cut <= d + t_one + SLACK_S, (t_cut, d, t_one)
    assert not cut.verified and cut.reason.startswith(DEADLINE_REASON) and math.isinf(cut.accuracy_m), cut
    assert math.isfinite(cut.east_m) and math.isfinite(cut.north_m)  # the best so far, not a blank
    # a deadline the search never reaches: the same result as none, field for field
    assert run(1e6) == full


def test_ncc_deadline_on_a_narrow_search_is_never_verified_on_a_partial_margin():
    gmap = open_real_map(TURKU)
    patch, mrgb, mpp, mvalid = _case(gmap, 23.4, -17.8, 37.0, 1.04, seed=3)
    ncc = make_registrar("ncc")
    full = ncc.register(patch, mrgb, mpp, 41.0, 6.0, 0.06, map_valid=mvalid)
    assert full.verified, full
    # the right place is found within the first few hypotheses, but its peak / second was read over
    # fewer alternatives than the gate was calibrated on: never verified
    cut = ncc.register(patch, mrgb, mpp, 41.0, 6.0, 0.06, map_valid=mvalid, deadline=time.monotonic() - 1)
    assert not cut.verified and cut.reason.startswith(DEADLINE_REASON), cut
    assert ncc.register(patch, mrgb, mpp, 41.0, 6.0, 0.06, map_valid=mvalid, deadline=time.monotonic() + 1e6) == full


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "soon", True])
def test_a_deadline_that_is_not_a_finite_time_is_refused(bad):
    gmap = open_real_map(TURKU)
    patch, mrgb, mpp, mvalid = _case(gmap, 0.0, 0.0, 0.0, 1.0, seed=1)
    for name in ("ncc", "sift"):
        with pytest.raises(SkylocError, match="deadline"):
            make_registrar(name).register(patch, mrgb, mpp, 0.0, 5.0, 0.05, map_valid=mvalid, deadline=bad)


def test_learned_deadline_between_rotations(xfeat_onnx: Path):
    gmap = open_real_map(TURKU)
    patch, mrgb, mpp, mvalid = _learned_case(gmap, 12.0, -9.0, 200.0, 1.0, seed=2, heading_up=True)
    reg = make_registrar("xfeat", onnx=str(xfeat_onnx))
    full = reg.register(patch, mrgb, mpp, None, 180.0, 0.05, map_valid=mvalid)  # 12 rotations
    cut = reg.register(patch, mrgb, mpp, None, 180.0, 0.05, map_valid=mvalid, deadline=time.monotonic() - 1)
    assert not cut.verified and cut.reason.startswith(f"{DEADLINE_REASON}: search stopped after 1 hypotheses"), cut
    assert reg.register(patch, mrgb, mpp, None, 180.0, 0.05, map_valid=mvalid,
                        deadline=time.monotonic() + 1e6) == full


def test_run_register_stage_passes_its_deadline_into_the_registrar(tmp_path: Path):
    """`skyloc run` on frames with no pose (telemetry on another clock: no altitude, no heading)
    and a 200 m start prior: the prior scan searches every heading and scale (~20 s a frame here
    unbounded). With --register-deadline-s 0.5 the registrar call itself stops there."""
    import csv
    import json

    from runtime_core_helpers import make_flight_case

    from skyloc.cli import main as skyloc

    c = make_flight_case(tmp_path, seconds=1.0, fps=2.0, seed=7)
    with open(c["truth"], newline="") as f:
        rows = list(csv.DictReader(f))
    shifted = tmp_path / "shifted.csv"
    with open(shifted, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "time_s": f"{float(r['time_s']) + 500.0:.3f}"} for r in rows)
    out = tmp_path / "f.jsonl"
    deadline_s = 0.5
    assert skyloc(["run", "--model", str(c["model"]), "--tiles", str(c["tiles"]), "--source", str(c["video"]),
                   "--camera", str(c["camera"]), "--blank-cos", "0.99", "--out", str(out), "--telemetry", str(shifted),
                   "--no-heading", "--imagery", str(c["map"]), "--start", f"{rows[0]['lat']},{rows[0]['lon']},200",
                   "--max-frames", "1", "--register-deadline-s", str(deadline_s)]) == 0
    rec = json.loads(out.read_text().splitlines()[0])
    reg = rec["registration"]
    assert reg["candidate"] == "prior-scan" and reg["tried"] == 1, reg
    assert reg["reason"].startswith(f"{DEADLINE_REASON}: search stopped") and not rec["verified"], reg
    assert rec["latency_ms"]["register"] <= 1000 * (deadline_s + SLACK_S), rec["latency_ms"]
