"""skyloc.runtime.localize.filter: accuracy-aware speed gate, inverse-variance smoothing, verified-first
trust, tentative tracks, re-initialisation and distinct-place confidence."""
from __future__ import annotations

import math

import numpy as np
import pytest

from skyloc.runtime.localize.filter import FixCandidate, TemporalFilter, distinct_places, place_margin

LAT0, LON0 = 60.45, 22.27
R = 6378137.0


def at(east: float, north: float) -> tuple[float, float]:
    """Hand-written local metres -> lat/lon (independent of runtime.geo)."""
    return (LAT0 + math.degrees(north / R), LON0 + math.degrees(east / (R * math.cos(math.radians(LAT0)))))


def dist(a: tuple[float, float], b: tuple[float, float]) -> float:
    dn = math.radians(b[0] - a[0]) * R
    de = math.radians(b[1] - a[1]) * R * math.cos(math.radians(LAT0))
    return math.hypot(de, dn)


def C(e: float, n: float, acc: float = 5.0, verified: bool = True, **kw) -> FixCandidate:
    return FixCandidate(*at(e, n), accuracy_m=acc, verified=verified, **kw)


def test_first_fix_initialises():
    f = TemporalFilter(max_speed_mps=20.0)
    out = f.update(C(0, 0, confidence=0.3), 0.0)
    assert out.accepted and out.reason == "init"
    assert (out.lat, out.lon) == at(0, 0) and out.confidence == 0.3 and out.accuracy_m == 5.0


def test_jump_rejected_then_track_continues():
    f = TemporalFilter(max_speed_mps=20.0, gate_sigmas=0.0)
    f.update(C(0, 0), 0.0)
    far = f.update(C(2000, 0), 1.0)  # 2 km in 1 s
    assert not far.accepted and far.reason == "speed"
    assert far.speed_mps == pytest.approx(2000.0, rel=1e-3)
    ok = f.update(C(0, 30), 2.0)  # 30 m in 2 s from the last accepted fix
    assert ok.accepted and ok.reason is None
    assert ok.speed_mps == pytest.approx(15.0, rel=1e-3)


def test_gate_allows_for_both_accuracies():
    # 40 m in 0.1 s is 400 m/s, but two 10 m (1-sigma) fixes may honestly be 3 x (10 + 10) apart
    for acc, accepted in ((10.0, True), (2.0, False)):
        f = TemporalFilter(max_speed_mps=10.0, gate_sigmas=3.0)
        f.update(C(0, 0, acc), 0.0)
        assert f.update(C(40, 0, acc), 0.1).accepted is accepted


def test_smoothing_weights_by_inverse_variance():
    """Two fixes at the same instant fuse as the inverse-variance mean (hand-computed)."""
    f = TemporalFilter(max_speed_mps=50.0, gate_sigmas=10.0)
    f.update(C(0, 0, acc=2.0), 0.0)
    out = f.update(C(10, 0, acc=4.0), 0.0)  # dt = 0: no motion, no process noise
    w1, w2 = 1 / 2.0 ** 2, 1 / 4.0 ** 2
    want_e = (0 * w1 + 10 * w2) / (w1 + w2)  # 2 m
    assert dist((out.lat, out.lon), at(want_e, 0)) < 1e-3
    assert out.accuracy_m == pytest.approx(math.sqrt(1 / (w1 + w2)), rel=1e-6)
    # a vague fix barely moves a sharp track; a sharp one moves a vague track almost all the way
    g = TemporalFilter(max_speed_mps=50.0, gate_sigmas=10.0)
    g.update(C(0, 0, acc=50.0, verified=False), 0.0)
    sharp = g.update(C(10, 0, acc=1.0), 0.0)
    assert dist((sharp.lat, sharp.lon), at(10, 0)) < 0.1


def test_reinitialises_after_n_consistent_rejections():
    f = TemporalFilter(max_speed_mps=10.0, max_rejections=3)
    f.update(C(0, 0), 0.0)  # a wrong first fix, say
    outs = [f.update(C(5000, 5000), t) for t in (1.0, 2.0, 3.0)]
    assert [o.accepted for o in outs] == [False, False, True]
    assert [o.reason for o in outs] == ["speed", "speed", "reinit"]
    assert [o.rejections for o in outs[:2]] == [1, 2]
    assert f.update(C(5010, 5000), 4.0).accepted  # now tracks the new place


def test_verified_fix_replaces_a_retrieval_only_track():
    f = TemporalFilter(max_speed_mps=10.0, max_rejections=5)
    for i in range(5):
        f.update(C(0, 10 * i, acc=30, verified=False), float(i))
    out = f.update(C(3000, 0, acc=1.0), 5.0)
    assert out.accepted and out.reason == "reinit" and out.verified


def test_unverified_fixes_never_reinitialise_a_verified_track():
    f = TemporalFilter(max_speed_mps=10.0, max_rejections=2)
    f.update(C(0, 0, acc=1.0), 0.0)
    for i in range(20):  # a consistent look-alike streak, retrieval only
        out = f.update(C(4000, 4000, acc=30, verified=False), 1.0 + i)
        assert not out.accepted and out.reason == "speed"
    assert f.last[:2] == pytest.approx(at(0, 0))
    # ...while a consistent verified streak does
    outs = [f.update(C(4000, 4000, acc=1.0), 30.0 + i) for i in range(3)]
    assert [o.reason for o in outs] == ["speed", "reinit", None] and outs[-1].accepted


def test_tentative_track_is_not_accepted_until_confirmed():
    f = TemporalFilter(max_speed_mps=10.0, confirm=2)
    first = f.update(C(0, 0), 0.0)
    assert not first.accepted and first.reason == "init"
    # a disagreeing fix starts the tentative track over instead of being rejected
    other = f.update(C(900, 0), 1.0)
    assert not other.accepted and other.reason == "init"
    agree = f.update(C(905, 0), 2.0)
    assert agree.accepted and agree.reason is None


@pytest.mark.parametrize("bad", [dict(lat=math.nan), dict(lon=math.inf), dict(accuracy_m=math.nan),
                                 dict(accuracy_m=0.0)])
def test_non_finite_candidates_never_touch_the_track(bad):
    f = TemporalFilter(max_speed_mps=10.0)
    f.update(C(0, 0), 0.0)
    c = C(1, 0)
    for k, v in bad.items():
        setattr(c, k, v)
    out = f.update(c, 1.0)
    assert not out.accepted and out.reason == "non-finite"
    assert f.last[:2] == pytest.approx(at(0, 0))


def test_nan_settings_are_refused():
    for kw in (dict(max_speed_mps=math.nan), dict(accel_mps2=0.0), dict(gate_sigmas=math.nan),
               dict(noise_m=-1.0), dict(min_confidence=math.nan)):
        with pytest.raises(ValueError):
            TemporalFilter(**kw)


def test_low_confidence_rejected_without_touching_the_track():
    f = TemporalFilter(max_speed_mps=10.0, min_confidence=0.05, max_rejections=1)
    f.update(C(0, 0, confidence=0.2), 0.0)
    out = f.update(C(9000, 0, confidence=0.01), 1.0)
    assert not out.accepted and out.reason == "low-confidence"
    assert f.last[:2] == pytest.approx(at(0, 0))


def test_smoothing_reduces_noise_on_a_straight_track():
    rng = np.random.default_rng(0)
    f = TemporalFilter(max_speed_mps=40.0, accel_mps2=0.5)
    raw_err, filt_err, within = [], [], []
    for i in range(200):
        truth = at(8.0 * i, 4.0 * i)  # ~9 m/s, 1 Hz
        noisy = at(8.0 * i + rng.normal(0, 15), 4.0 * i + rng.normal(0, 15))
        out = f.update(FixCandidate(*noisy, accuracy_m=15.0 * math.sqrt(2)), float(i))
        assert out.accepted
        if i >= 20:  # after the track has settled
            raw_err.append(dist(truth, noisy))
            filt_err.append(dist(truth, (out.lat, out.lon)))
            within.append(filt_err[-1] <= 2 * out.accuracy_m)
    assert np.sqrt(np.mean(np.square(filt_err))) < 0.6 * np.sqrt(np.mean(np.square(raw_err)))
    assert np.mean(within) >= 0.85  # the filtered accuracy is honest
    v = f.velocity_ne()
    assert v is not None and v[0] == pytest.approx(4.0, abs=1.0) and v[1] == pytest.approx(8.0, abs=1.0)


def test_search_radius_grows_with_time():
    f = TemporalFilter(max_speed_mps=20.0)
    assert f.search_radius_m(0.0, 100.0) is None
    f.update(C(0, 0), 10.0)
    assert f.search_radius_m(12.0, 100.0) == pytest.approx(140.0)


def test_place_margin_uses_the_best_distinct_place():
    centers = np.array([at(0, 0), at(10, 0), at(500, 0), at(900, 0), at(20, 5)])
    scores = np.array([0.9, 0.89, 0.7, 0.6], dtype=np.float32)
    idx = np.array([0, 1, 2, 3])
    assert place_margin(scores, idx, centers, min_sep_m=100.0) == pytest.approx(0.9 - 0.7, abs=1e-6)
    near = np.array([0, 1, 4])
    assert place_margin(np.array([0.9, 0.85, 0.8]), near, centers, 100.0) == pytest.approx(0.1)
    assert place_margin(np.array([0.9, 0.5, -1.0]), np.array([0, 2, -1]), centers, 100.0) == pytest.approx(0.4)
    assert place_margin(np.array([0.0]), np.array([-1]), centers, 100.0) == 0.0


def test_distinct_places_keeps_one_hit_per_place():
    centers = np.array([at(0, 0), at(10, 0), at(500, 0), at(505, 0), at(900, 0)])
    scores = np.array([0.9, 0.89, 0.7, 0.69, 0.6, -np.inf])
    idx = np.array([0, 1, 2, 3, 4, -1])
    assert distinct_places(scores, idx, centers, 100.0, limit=5) == [0, 2, 4]
    assert distinct_places(scores, idx, centers, 100.0, limit=2) == [0, 2]


def test_established_track_needs_a_longer_challenger():
    f = TemporalFilter(max_speed_mps=10.0, max_rejections=3, max_support=6)
    for i in range(10):
        assert f.update(C(5.0 * i, 0), float(i)).accepted
    outs = [f.update(C(3000, 3000), 10.0 + i) for i in range(6)]
    assert [o.accepted for o in outs] == [False] * 5 + [True]
    assert outs[-1].reason == "reinit" and [o.rejections for o in outs[:5]] == [1, 2, 3, 4, 5]


def test_scattered_outliers_never_reinitialise():
    f = TemporalFilter(max_speed_mps=10.0, max_rejections=2)
    f.update(C(0, 0), 0.0)
    for i in range(10):
        out = f.update(C(2000 + 3000 * (i % 2), 1000 * i), 1.0 + i)
        assert not out.accepted and out.rejections == 1
    assert f.update(C(20, 0), 12.0).accepted
