"""skyloc.core.geo: lat/lon <-> local metres <-> corner-georeferenced pixels, against hand computations."""
from __future__ import annotations

import math

import numpy as np
import pytest

from skyloc.core import geo


def test_haversine_known_distances():
    # One degree of latitude on the R = 6378137 m sphere, and a quarter of the equator.
    assert geo.haversine_m(10.0, 20.0, 11.0, 20.0) == pytest.approx(math.pi * 6378137.0 / 180, rel=1e-12)
    assert geo.haversine_m(0.0, 0.0, 0.0, 90.0) == pytest.approx(math.pi / 2 * 6378137.0, rel=1e-12)
    d = geo.haversine_m(np.array([60.0, 60.0]), np.array([22.0, 22.0]), np.array([60.0, 60.001]), np.array([22.001, 22.0]))
    assert d.shape == (2,)


def test_local_metres_match_great_circle_over_a_few_km():
    rng = np.random.default_rng(0)
    lat0, lon0 = 60.4, 22.46
    e = rng.uniform(-2000, 2000, 50)
    n = rng.uniform(-2000, 2000, 50)
    lat, lon = geo.local_m_to_latlon(e, n, lat0, lon0)
    d = geo.haversine_m(lat0, lon0, lat, lon)
    # Equirectangular about the origin: well under 0.1 % of the distance within 2 km.
    assert np.all(np.abs(d - np.hypot(e, n)) < 1e-3 * np.hypot(e, n) + 0.01)
    e2, n2 = geo.latlon_to_local_m(lat, lon, lat0, lon0)
    np.testing.assert_allclose(e2, e, atol=1e-6)
    np.testing.assert_allclose(n2, n, atol=1e-6)


def test_local_metres_hand_computed():
    # 0.001 deg of longitude at 60 N is R * cos(60) * 0.001 * pi / 180 metres east.
    e, n = geo.latlon_to_local_m(60.0, 22.001, 60.0, 22.0)
    assert e == pytest.approx(6378137.0 * 0.5 * 0.001 * math.pi / 180, rel=1e-9)
    assert n == pytest.approx(0.0, abs=1e-9)
    assert isinstance(e, float)


def test_offset_latlon_moves_by_the_requested_metres():
    lat, lon = geo.offset_latlon(46.9, 7.3, 30.0, 40.0)
    assert geo.haversine_m(46.9, 7.3, lat, lon) == pytest.approx(50.0, rel=1e-4)
    lat2, lon2 = geo.offset_latlon(46.9, 7.3, 0.0, -100.0)
    assert lon2 == pytest.approx(7.3) and lat2 < 46.9


def test_corner_pixel_conversions_hand_computed():
    tl_lat, tl_lon, br_lat, br_lon = 60.403962, 22.460441, 60.402409, 22.464059
    w, h = 1469, 1274
    # Outer corners map to the CSV corners; the image centre to their mean.
    lat, lon = geo.corners_pixel_to_latlon(0, 0, w, h, tl_lat, tl_lon, br_lat, br_lon)
    assert (lat, lon) == pytest.approx((tl_lat, tl_lon))
    lat, lon = geo.corners_pixel_to_latlon(w, h, w, h, tl_lat, tl_lon, br_lat, br_lon)
    assert (lat, lon) == pytest.approx((br_lat, br_lon))
    lat, lon = geo.corners_pixel_to_latlon(w / 2, h / 2, w, h, tl_lat, tl_lon, br_lat, br_lon)
    assert (lat, lon) == pytest.approx(((tl_lat + br_lat) / 2, (tl_lon + br_lon) / 2))
    # Pixel (col 10, row 20) centre, by hand.
    lat, lon = geo.corners_pixel_to_latlon(10.5, 20.5, w, h, tl_lat, tl_lon, br_lat, br_lon)
    assert lat == pytest.approx(tl_lat + 20.5 / h * (br_lat - tl_lat), abs=1e-12)
    assert lon == pytest.approx(tl_lon + 10.5 / w * (br_lon - tl_lon), abs=1e-12)
    x, y = geo.corners_latlon_to_pixel(lat, lon, w, h, tl_lat, tl_lon, br_lat, br_lon)
    assert (x, y) == pytest.approx((10.5, 20.5), abs=1e-6)


def test_corners_metres_per_pixel_and_centre_roundtrip():
    tl = geo.corners_for_centre(46.9, 7.3, 800.0, 600.0)
    ex, ny = geo.corners_metres_per_pixel(400, 300, *tl)
    assert ex == pytest.approx(2.0, rel=1e-3) and ny == pytest.approx(2.0, rel=1e-6)
    # The rectangle's east-west side measured on the sphere at mid latitude is 800 m.
    assert geo.haversine_m(46.9, tl[1], 46.9, tl[3]) == pytest.approx(800.0, rel=1e-4)
    m_lat, m_lon = geo.metres_per_degree(0.0)
    assert m_lat == pytest.approx(m_lon) and m_lat == pytest.approx(111319.49, rel=1e-6)
