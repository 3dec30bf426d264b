"""skyloc.runtime.filter: speed gate, re-initialisation, smoothing, distinct-place confidence."""
from __future__ import annotations

import math

import numpy as np
import pytest

from skyloc.runtime.filter import FixCandidate, TemporalFilter, place_margin

LAT0, LON0 = 60.45, 22.27
R = 6378137.0


def at(east: float, north: float) -> tuple[float, float]:
    """Hand-written local metres -> lat/lon (independent of runtime.geo)."""
    return (LAT0 + math.degrees(north / R), LON0 + math.degrees(east / (R * math.cos(math.radians(LAT0)))))


def dist(a: tuple[float, float], b: tuple[float, float]) -> float:
    dn = math.radians(b[0] - a[0]) * R
    de = math.radians(b[1] - a[1]) * R * math.cos(math.radians(LAT0))
    return math.hypot(de, dn)


def test_first_fix_initialises():
    f = TemporalFilter(max_speed_mps=20.0)
    out = f.update(FixCandidate(*at(0, 0), confidence=0.3), 0.0)
    assert out.accepted and out.reason == "init"
    assert (out.lat, out.lon) == at(0, 0) and out.confidence == 0.3


def test_jump_rejected_then_track_continues():
    f = TemporalFilter(max_speed_mps=20.0, alpha=1.0)
    f.update(FixCandidate(*at(0, 0)), 0.0)
    far = f.update(FixCandidate(*at(2000, 0)), 1.0)  # 2 km in 1 s
    assert not far.accepted and far.reason == "speed"
    assert far.speed_mps == pytest.approx(2000.0, rel=1e-3)
    ok = f.update(FixCandidate(*at(0, 30)), 2.0)  # 30 m in 2 s from the last accepted fix
    assert ok.accepted and ok.reason is None
    assert ok.speed_mps == pytest.approx(15.0, rel=1e-3)


def test_reinitialises_after_n_consecutive_rejections():
    f = TemporalFilter(max_speed_mps=10.0, max_rejections=3)
    f.update(FixCandidate(*at(0, 0)), 0.0)  # a wrong first fix, say
    outs = [f.update(FixCandidate(*at(5000, 5000)), t) for t in (1.0, 2.0, 3.0)]
    assert [o.accepted for o in outs] == [False, False, True]
    assert [o.reason for o in outs] == ["speed", "speed", "reinit"]
    assert [o.rejections for o in outs[:2]] == [1, 2]
    nxt = f.update(FixCandidate(*at(5010, 5000)), 4.0)  # now tracks the new place
    assert nxt.accepted


def test_noise_allowance():
    strict = TemporalFilter(max_speed_mps=10.0)
    loose = TemporalFilter(max_speed_mps=10.0, noise_m=50.0)
    for f in (strict, loose):
        f.update(FixCandidate(*at(0, 0)), 0.0)
    assert not strict.update(FixCandidate(*at(40, 0)), 0.1).accepted  # 400 m/s
    assert loose.update(FixCandidate(*at(40, 0)), 0.1).accepted  # within retrieval noise


def test_low_confidence_rejected_without_touching_the_track():
    f = TemporalFilter(max_speed_mps=10.0, min_confidence=0.05, max_rejections=1)
    f.update(FixCandidate(*at(0, 0), confidence=0.2), 0.0)
    out = f.update(FixCandidate(*at(9000, 0), confidence=0.01), 1.0)
    assert not out.accepted and out.reason == "low-confidence"
    assert f.last[:2] == pytest.approx(at(0, 0))


def test_alpha_one_is_no_smoothing():
    f = TemporalFilter(max_speed_mps=50.0, alpha=1.0, beta=0.0)
    for i in range(5):
        p = at(10.0 * i, 3.0 * i)
        out = f.update(FixCandidate(*p), float(i))
        assert (out.lat, out.lon) == pytest.approx(p, abs=1e-10)


def test_smoothing_reduces_noise_on_a_straight_track():
    rng = np.random.default_rng(0)
    f = TemporalFilter(max_speed_mps=40.0, alpha=0.4, beta=0.05, noise_m=60.0)
    raw_err, filt_err = [], []
    for i in range(200):
        truth = at(8.0 * i, 4.0 * i)  # ~9 m/s, 1 Hz
        noisy = at(8.0 * i + rng.normal(0, 15), 4.0 * i + rng.normal(0, 15))
        out = f.update(FixCandidate(*noisy), float(i))
        assert out.accepted
        if i >= 20:  # after the track has settled
            raw_err.append(dist(truth, noisy))
            filt_err.append(dist(truth, (out.lat, out.lon)))
    assert np.sqrt(np.mean(np.square(filt_err))) < 0.8 * np.sqrt(np.mean(np.square(raw_err)))


def test_search_radius_grows_with_time():
    f = TemporalFilter(max_speed_mps=20.0)
    assert f.search_radius_m(0.0, 100.0) is None
    f.update(FixCandidate(*at(0, 0)), 10.0)
    assert f.search_radius_m(12.0, 100.0) == pytest.approx(140.0)


def test_place_margin_uses_the_best_distinct_place():
    centers = np.array([at(0, 0), at(10, 0), at(500, 0), at(900, 0), at(20, 5)])
    # hits: best tile 0, tile 1 (10 m away, same place), tile 2 (500 m, distinct), tile 3
    scores = np.array([0.9, 0.89, 0.7, 0.6], dtype=np.float32)
    idx = np.array([0, 1, 2, 3])
    assert place_margin(scores, idx, centers, min_sep_m=100.0) == pytest.approx(0.9 - 0.7, abs=1e-6)
    # every hit at the same place: lower bound best - last
    near = np.array([0, 1, 4])
    assert place_margin(np.array([0.9, 0.85, 0.8]), near, centers, 100.0) == pytest.approx(0.1)
    # missing entries are ignored; nothing at all -> 0
    assert place_margin(np.array([0.9, 0.5, -1.0]), np.array([0, 2, -1]), centers, 100.0) == pytest.approx(0.4)
    assert place_margin(np.array([0.0]), np.array([-1]), centers, 100.0) == 0.0


def test_established_track_needs_a_longer_challenger():
    f = TemporalFilter(max_speed_mps=10.0, max_rejections=3, max_support=6)
    for i in range(10):  # 10 accepted fixes: support capped at 6
        assert f.update(FixCandidate(*at(5.0 * i, 0)), float(i)).accepted
    outs = [f.update(FixCandidate(*at(3000, 3000)), 10.0 + i) for i in range(6)]
    assert [o.accepted for o in outs] == [False] * 5 + [True]
    assert outs[-1].reason == "reinit" and [o.rejections for o in outs[:5]] == [1, 2, 3, 4, 5]


def test_scattered_outliers_never_reinitialise():
    f = TemporalFilter(max_speed_mps=10.0, max_rejections=2)
    f.update(FixCandidate(*at(0, 0)), 0.0)
    for i in range(10):  # far away and far from each other: no consistent challenger
        out = f.update(FixCandidate(*at(2000 + 3000 * (i % 2), 1000 * i)), 1.0 + i)
        assert not out.accepted and out.rejections == 1
    assert f.update(FixCandidate(*at(20, 0)), 12.0).accepted


def test_an_accepted_fix_breaks_the_streak():
    f = TemporalFilter(max_speed_mps=10.0, max_rejections=3)
    f.update(FixCandidate(*at(0, 0)), 0.0)
    f.update(FixCandidate(*at(4000, 0)), 1.0)
    f.update(FixCandidate(*at(4000, 0)), 2.0)
    assert f.update(FixCandidate(*at(10, 0)), 3.0).accepted
    assert f.update(FixCandidate(*at(4000, 0)), 4.0).rejections == 1
