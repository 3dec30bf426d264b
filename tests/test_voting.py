"""Translation voting in large windows of map keypoints (runtime/register/voting.py): the locally
mutual pairs against a brute-force definition, the vote finding a planted place among clutter,
and, on real imagery, a small frame found in a window many times its size (where one mutual
nearest-neighbour match over the whole window finds nothing) while a wrong map stays unverified."""
from __future__ import annotations

import math

import numpy as np
import pytest

from skyloc.core import geo
from skyloc.runtime.localize.rectify import GroundPatch
from skyloc.runtime.register import voting
from skyloc.runtime.register.registry import make_registrar
from real_data import AERO, TURKU, open_real_map


def _unit(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("rows", [8192, 97])  # one block, and cells cut by block edges
def test_local_mutual_pairs_match_brute_force(monkeypatch, rows):
    rng = np.random.default_rng(3)
    d1, d2 = _unit(rng, 40), _unit(rng, 700)
    xy2 = rng.uniform(0, 300, 700) + 1j * rng.uniform(0, 200, 700)
    cell = 37.0
    monkeypatch.setattr(voting, "ROWS", rows)
    i1, i2, cos = voting.local_mutual_pairs(d1, d2, xy2, cell, 0.1)
    S = d2 @ d1.T
    cx = np.floor((xy2.real - xy2.real.min()) / cell)
    cy = np.floor((xy2.imag - xy2.imag.min()) / cell)
    want = []
    for j in range(len(d2)):
        i = int(S[j].argmax())
        near = (np.abs(cx - cx[j]) <= 1) & (np.abs(cy - cy[j]) <= 1)
        if S[j, i] > 0.1 and S[j, i] >= S[near, i].max():
            want.append((i, j))
    assert sorted(zip(i1.tolist(), i2.tolist())) == sorted(want)
    assert np.allclose(cos, S[i2, i1])
    assert len(want) > 20  # the case is not empty


def test_cell_size_bounds_the_cell_count_of_any_window():
    assert voting.cell_size(40.0, 1000.0, 800.0) == 40.0  # 25 x 20 cells: as asked
    for side in (3e4, 3e5):  # a whole map of 225 km^2 / 22500 km^2 at 0.5 m/px
        c = voting.cell_size(40.0, side, side)
        assert (side / c) ** 2 <= voting.MAX_CELLS + 1e-6 and c > 40.0
    rng = np.random.default_rng(4)
    d1, d2 = _unit(rng, 8), _unit(rng, 300)
    xy2 = rng.uniform(0, 3e4, 300) + 1j * rng.uniform(0, 3e4, 300)
    i1, i2, _ = voting.local_mutual_pairs(d1, d2, xy2, 40.0, 0.0)  # 750 x 750 cells asked: runs coarser
    assert len(i1) == len(i2) > 0


def test_vote_places_finds_a_planted_place_among_clutter():
    rng = np.random.default_rng(5)
    centre, q0, true = complex(50, 40), 1.6, complex(612.0, 233.0)
    src_t = rng.uniform(0, 100, 40) + 1j * rng.uniform(0, 80, 40)
    turn = np.exp(1j * math.radians(7.0))  # a residual turn between the voted ones (5 deg apart)
    dst_t = true + q0 * turn * (src_t - centre) + rng.normal(0, 0.7, 40) + 1j * rng.normal(0, 0.7, 40)
    src_n = rng.uniform(0, 100, 3000) + 1j * rng.uniform(0, 80, 3000)
    dst_n = rng.uniform(0, 1000, 3000) + 1j * rng.uniform(0, 800, 3000)
    src, dst = np.r_[src_t, src_n], np.r_[dst_t, dst_n]
    places = voting.vote_places(src, dst, q0, centre, np.arange(-15.0, 15.1, 5.0), (800, 1000), 5.0, 3, 30.0)
    assert len(places) == 3
    assert abs(places[0][0] - true) < 3.0, places
    assert places[0][1] > 2 * places[1][1]
    assert all(abs(a[0] - b[0]) >= 30.0 for k, a in enumerate(places) for b in places[k + 1:])
    assert voting.vote_places(src[:0], dst[:0], q0, centre, np.zeros(1), (800, 1000), 5.0, 3, 30.0) == []


@pytest.fixture(scope="module")
def reg(xfeat_onnx):
    return make_registrar("xfeat", onnx=str(xfeat_onnx))


def _small_patch(gmap, lat: float, lon: float, up: float, seed: int) -> GroundPatch:
    """A 76 m heading-up patch (a 640 px frame at 80 m with a 60 deg lens) as the flights' appearance
    model sees it: another season (colour, vegetation, shadows moved, haze) and sensor."""
    from skyloc.synth.appearance import SeasonMap, apply_sensor, draw_appearance

    rng = np.random.default_rng(seed)
    p = draw_appearance("full", rng)
    # the frame's own pixels (0.25 m/px), which the registrar brings to its 0.5 m/px
    img, valid = SeasonMap(gmap, p).read_crop(lat, lon, 76.0, 304, yaw_deg=up)
    return GroundPatch(apply_sensor(img, p, rng), valid, 0.25, None, (0.0, 0.0))


@pytest.mark.parametrize("where,east,north,up", [("aerovloc", 130.0, -40.0, 75.0), ("turku", -120.0, 60.0, 200.0)])
def test_small_frame_found_in_a_window_many_times_its_size(reg, where, east, north, up):
    """A 76 m patch in a 600 m window of map keypoints (the start prior's scan), heading unknown."""
    gmap = open_real_map({"turku": TURKU, "aerovloc": AERO / "map"}[where])
    g = gmap.grid(400.0, 50.0, min_valid=0.6)  # Turku: 200 m tiles with gaps between them
    lat0, lon0 = float(g[len(g) // 2][0]), float(g[len(g) // 2][1])
    # the patch on data, at the data square nearest to (east, north) off the window's centre
    on = gmap.grid(80.0, 10.0)
    e, n = geo.latlon_to_local_m(on[:, 0], on[:, 1], lat0, lon0)
    k = int(np.argmin(np.hypot(e - east, n - north)))
    (plat, plon), east, north = on[k], float(e[k]), float(n[k])
    assert abs(east) < 150 and abs(north) < 150
    patch = _small_patch(gmap, plat, plon, up, seed=1)
    big, bvalid = gmap.read_crop(lat0, lon0, 600.0, 1200)  # the start prior's scan: 300 m radius
    kp = reg.extractor.extract(big, bvalid, max_kpts=65536)
    r = reg.register_keypoints(patch, kp, 0.5, (1200, 1200), None, 180.0, 0.03)
    assert r.verified, r
    assert math.hypot(r.east_m - east, r.north_m - north) < 1.5, r
    assert abs((r.heading_deg - up + 180) % 360 - 180) < 2.0, r


def test_small_frame_on_a_wrong_map_is_not_verified(reg):
    """Turku patches against the aerovloc map's stored features (a wrong place everywhere)."""
    turku, aero = open_real_map(TURKU), open_real_map(AERO / "map")
    g = aero.grid(400.0, 50.0)
    alat, alon = float(g[len(g) // 2][0]), float(g[len(g) // 2][1])
    big, bvalid = aero.read_crop(alat, alon, 400.0, 800)
    kp = reg.extractor.extract(big, bvalid, max_kpts=65536)
    for k, (lat, lon) in enumerate(turku.grid(80.0, 150.0)[:6]):
        r = reg.register_keypoints(_small_patch(turku, float(lat), float(lon), 40.0 * k, k), kp, 0.5,
                                   (800, 800), None, 180.0, 0.03)
        assert not r.verified, r
        assert r.accuracy_m == float("inf")
