"""skyloc.synth.world: seeded, read back through open_map, distinctive enough to tell places apart."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from skyloc.core import geo
from skyloc.core.errors import SkylocError
from skyloc.runtime.maps.mosaic import TiledMap
from skyloc.runtime.maps.open import open_map
from skyloc.synth.world import WorldConfig, generate_world, make_world, world_corners


def test_same_seed_same_bytes_and_readable(tmp_path):
    a = make_world(tmp_path / "a", seed=5, size_m=500.0, mpp=1.0)
    b = make_world(tmp_path / "b", seed=5, size_m=500.0, mpp=1.0)
    c = make_world(tmp_path / "c", seed=6, size_m=500.0, mpp=1.0)
    assert a.name == "map.csv" and (a.parent / "map.png").is_file()
    assert (a.parent / "map.png").read_bytes() == (b.parent / "map.png").read_bytes()
    assert a.read_bytes() == b.read_bytes()
    assert (a.parent / "map.png").read_bytes() != (c.parent / "map.png").read_bytes()
    m = open_map(a.parent)
    assert m.metres_per_pixel == pytest.approx(1.0, rel=1e-3)
    lat_min, lon_min, lat_max, lon_max = m.bounds_latlon()
    assert geo.haversine_m(lat_min, lon_min, lat_max, lon_min) == pytest.approx(500.0, rel=1e-3)
    assert geo.haversine_m(lat_min, lon_min, lat_min, lon_max) == pytest.approx(500.0, rel=2e-3)
    png = cv2.imread(str(a.parent / "map.png"))
    assert png.shape == (500, 500, 3)
    assert len(m.grid(100.0, 100.0)) == 25  # no holes anywhere


def test_world_has_varied_content():
    img = generate_world(WorldConfig(size_m=800.0, mpp=1.0, seed=1)).astype(int)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    grey = (np.abs(r - g) < 12) & (np.abs(g - b) < 12) & (r > 60) & (r < 140)  # asphalt / flat roofs
    green = (g > r + 10) & (g > b + 10)  # vegetation
    warm = (r > g + 25) & (r > b + 40)  # tiled roofs, tracks, ploughed soil
    for name, frac in (("grey", grey.mean()), ("green", green.mean()), ("warm", warm.mean())):
        assert frac > 0.01, name


def test_places_can_be_told_apart():
    """A nearest-neighbour match of raw thumbnails finds the right place for a shifted, turned view."""
    cfg = WorldConfig(size_m=700.0, mpp=1.0, seed=2)
    img = generate_world(cfg)
    m = TiledMap.from_array(img, *world_corners(cfg))
    rng = np.random.default_rng(0)
    centres = rng.uniform(-260, 260, (40, 2))

    def thumb(e, n, yaw):
        lat, lon = geo.local_m_to_latlon(e, n, cfg.lat, cfg.lon)
        rgb, valid = m.read_crop(lat, lon, 80.0, 24, yaw_deg=yaw)
        assert valid.all()
        return cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), 1.0).ravel()
    gallery = np.stack([thumb(e, n, 0.0) for e, n in centres])
    hits = 0
    for i, (e, n) in enumerate(centres):
        q = thumb(e + 3.0, n - 2.0, 4.0)
        hits += int(np.argmin(((gallery - q) ** 2).sum(1)) == i)
    assert hits >= 36  # of 40


def test_bad_world_size():
    with pytest.raises(SkylocError, match="64 pixels"):
        generate_world(WorldConfig(size_m=50.0, mpp=1.0))
