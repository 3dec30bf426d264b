"""skyloc.runtime.maps.base: tiled PNG mosaics with a corners CSV, GeoTIFF in any CRS, crops, grids, no-data."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from skyloc.core import geo
from skyloc.core.errors import SkylocError
from skyloc.runtime.maps.mosaic import TiledMap, image_size, read_corners_csv, write_corners_csv
from skyloc.runtime.maps.open import open_map

TURKU = Path(__file__).parents[1] / ".." / "shared" / "data" / "turku-satellite"
R = 6378137.0


def turku_rows() -> list[tuple[str, float, float, float, float]]:
    """map.csv parsed by plain string handling (independent of runtime.maps)."""
    if not (TURKU / "map.csv").is_file():
        pytest.skip(f"{TURKU} not found: the shared Turku tiles are not on this machine")
    rows = []
    for line in (TURKU / "map.csv").read_text().splitlines()[1:]:
        if line.strip():
            parts = [p.strip().strip('"') for p in line.split(",")]
            rows.append((parts[0], *map(float, parts[1:5])))
    return rows


def smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    g = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3)).astype(np.float32)
    return np.clip(cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


def write_png(path: Path, rgb: np.ndarray) -> None:
    conv = cv2.COLOR_RGBA2BGRA if rgb.shape[2] == 4 else cv2.COLOR_RGB2BGR
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, conv))


# --- the real Turku tiles -----------------------------------------------------------------------


def test_turku_known_pixel_matches_csv_corners():
    rows = turku_rows()
    m = open_map(TURKU)
    assert sorted(m.missing) == ["sat_map_07.png", "sat_map_09.png", "sat_map_10.png"]
    present = [r for r in rows if (TURKU / r[0]).is_file()]
    assert m.bounds_latlon() == pytest.approx((min(r[3] for r in present), min(r[2] for r in present),
                                               max(r[1] for r in present), max(r[4] for r in present)))
    name, tl_lat, tl_lon, br_lat, br_lon = next(r for r in rows if r[0] == "sat_map_13.png")
    img = cv2.imread(str(TURKU / name), cv2.IMREAD_UNCHANGED)
    h, w = img.shape[:2]
    for col, row in ((700, 300), (5, 7), (w - 9, h - 4)):
        # Centre of the pixel, by linear interpolation between the CSV's outer corners.
        lat = tl_lat + (row + 0.5) / h * (br_lat - tl_lat)
        lon = tl_lon + (col + 0.5) / w * (br_lon - tl_lon)
        rgb, valid = m.sample(np.array([lat]), np.array([lon]), footprint_m=0.0)
        assert valid.all()
        np.testing.assert_array_equal(rgb[0], img[row, col, 2::-1])  # BGRA -> RGB, alpha ignored
    # The map's reported resolution is the tiles' (about 0.137 m / pixel).
    ex = (br_lon - tl_lon) * R * math.cos(math.radians((tl_lat + br_lat) / 2)) * math.pi / 180 / w
    assert m.metres_per_pixel == pytest.approx(ex, rel=0.05)


def test_turku_holes_are_invalid_and_grid_never_draws_from_them():
    rows = turku_rows()
    m = open_map(TURKU)
    present = [r for r in rows if (TURKU / r[0]).is_file()]
    holes = [r for r in rows if not (TURKU / r[0]).is_file()]
    assert len(present) == 12 and len(holes) == 3
    for _, a, b, c, d in holes:
        assert not m.is_valid(np.array([(a + c) / 2]), np.array([(b + d) / 2]))[0]
    for _, a, b, c, d in present:
        assert m.is_valid(np.array([(a + c) / 2]), np.array([(b + d) / 2]))[0]

    def in_present_tile(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        ok = np.zeros(lat.shape, bool)
        for _, a, b, c, d in present:
            ok |= (lat <= a) & (lat >= c) & (lon >= b) & (lon <= d)
        return ok

    tile_m = 60.0
    centres = m.grid(tile_m, 30.0)
    assert len(centres) > 50
    g = np.linspace(-tile_m / 2, tile_m / 2, 31)
    ee, nn = np.meshgrid(g, g)
    for lat, lon in centres:
        la, lo = geo.local_m_to_latlon(ee, nn, lat, lon)
        assert in_present_tile(la, lo).all(), (lat, lon)
    # Holes do remove squares: a looser threshold keeps more of them.
    assert len(m.grid(tile_m, 30.0, min_valid=0.3)) > len(centres)
    # Row-major north -> south, west -> east.
    lats = centres[:, 0]
    assert np.all(np.diff(lats) <= 1e-12)


# --- tiles written here -------------------------------------------------------------------------


def make_mosaic(tmp: Path, img: np.ndarray, corners: tuple[float, float, float, float], n: int = 2) -> Path:
    """Split img into n x n PNG tiles with their own corners (linear in lat/lon) + map.csv."""
    tl_lat, tl_lon, br_lat, br_lon = corners
    h, w = img.shape[:2]
    rows = []
    for i in range(n):
        for j in range(n):
            r0, r1, c0, c1 = h * i // n, h * (i + 1) // n, w * j // n, w * (j + 1) // n
            name = f"t_{i}{j}.png"
            write_png(tmp / name, img[r0:r1, c0:c1])
            rows.append((name, tl_lat + r0 / h * (br_lat - tl_lat), tl_lon + c0 / w * (br_lon - tl_lon),
                         tl_lat + r1 / h * (br_lat - tl_lat), tl_lon + c1 / w * (br_lon - tl_lon)))
    return write_corners_csv(tmp / "map.csv", rows)


def test_mosaic_equals_single_image_and_missing_tile_is_a_hole(tmp_path):
    rng = np.random.default_rng(1)
    img = smooth_image(rng, 160, 200)
    corners = geo.corners_for_centre(46.9, 7.3, 400.0, 320.0)
    (tmp_path / "one").mkdir()
    write_png(tmp_path / "one" / "whole.png", img)
    write_corners_csv(tmp_path / "one" / "whole.csv", [("whole.png", *corners)])
    single = open_map(tmp_path / "one" / "whole.png")
    (tmp_path / "four").mkdir()
    mosaic = open_map(make_mosaic(tmp_path / "four", img, corners))
    x = rng.uniform(0, 200, 2000)
    y = rng.uniform(0, 160, 2000)
    away = (np.abs(x - 100) > 1) & (np.abs(y - 80) > 1)  # seams: each tile clamps at its own border
    lat, lon = geo.corners_pixel_to_latlon(x, y, 200, 160, *corners)
    a, va = single.sample(lat, lon, footprint_m=0.0)
    b, vb = mosaic.sample(lat, lon, footprint_m=0.0)
    assert va.all() and vb.all()
    assert np.abs(a[away].astype(int) - b[away].astype(int)).max() <= 1
    # Pixel centres sample exactly the pixel.
    lat, lon = geo.corners_pixel_to_latlon(np.array([30.5, 150.5]), np.array([20.5, 140.5]), 200, 160, *corners)
    c, _ = mosaic.sample(lat, lon, footprint_m=0.0)
    np.testing.assert_array_equal(c, img[[20, 140], [30, 150]])

    (tmp_path / "four" / "t_01.png").unlink()  # the north-east tile
    holed = open_map(tmp_path / "four")
    assert holed.missing == ["t_01.png"]
    rgb, valid = holed.sample(lat, lon, footprint_m=0.0)
    assert valid.tolist() == [True, True]
    lat_ne, lon_ne = geo.corners_pixel_to_latlon(np.array([150.5]), np.array([20.5]), 200, 160, *corners)
    rgb, valid = holed.sample(lat_ne, lon_ne)
    assert not valid[0] and rgb.sum() == 0


def test_transparent_pixels_are_no_data_and_never_bleed(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = (20, 160, 40)
    rgba[..., 3] = 255
    rgba[16:48, 16:48] = (255, 0, 0, 0)  # transparent red: must never show up
    write_png(tmp_path / "t.png", rgba)
    corners = geo.corners_for_centre(10.0, 20.0, 64.0, 64.0)
    write_corners_csv(tmp_path / "t.csv", [("t.png", *corners)])
    m = open_map(tmp_path / "t.png")
    x, y = np.meshgrid(np.linspace(0.2, 63.8, 80), np.linspace(0.2, 63.8, 80))
    lat, lon = geo.corners_pixel_to_latlon(x, y, 64, 64, *corners)
    for fp in (0.0, 3.0, 9.0):  # native and coarse pyramid levels
        rgb, valid = m.sample(lat, lon, footprint_m=fp)
        inner = (x > 18) & (x < 46) & (y > 18) & (y < 46)
        outer = (x < 14) | (x > 50) | (y < 14) | (y > 50)
        assert not valid[inner].any() and valid[outer].all()
        assert rgb[valid][:, 0].max() <= 25, fp  # no red from the transparent pixels
        assert (rgb[~valid] == 0).all()


def test_mipmapping_averages_fine_detail(tmp_path):
    checker = (np.indices((256, 256)).sum(0) % 2 * 255).astype(np.uint8)
    m = TiledMap.from_array(np.repeat(checker[..., None], 3, 2), *geo.corners_for_centre(0.0, 0.0, 256.0, 256.0))
    assert m.metres_per_pixel == pytest.approx(1.0, rel=1e-3)
    rgb, valid = m.read_crop(0.0, 0.0, 200.0, 25)  # 8 m per output pixel: 8x8 checker cells each
    assert valid.all()
    assert abs(rgb.mean() - 127.5) < 3 and rgb.std() < 6
    fine, _ = m.read_crop(0.0, 0.0, 20.0, 20)  # native resolution: the checker survives
    assert fine.std() > 100


def test_read_crop_yaw_and_scale():
    img = np.zeros((200, 200, 3), np.uint8)
    img[:] = 40
    img[90:110, 120:140] = (250, 250, 250)  # 20 m white square, 30 m east of the centre
    m = TiledMap.from_array(img, *geo.corners_for_centre(46.0, 7.0, 200.0, 200.0))
    north_up, _ = m.read_crop(46.0, 7.0, 100.0, 100)
    white = np.argwhere(north_up[..., 0] > 200)
    assert white[:, 1].min() == pytest.approx(70, abs=1) and white[:, 1].max() == pytest.approx(89, abs=1)
    assert white[:, 0].min() == pytest.approx(40, abs=1) and white[:, 0].max() == pytest.approx(59, abs=1)
    east_up, _ = m.read_crop(46.0, 7.0, 100.0, 100, yaw_deg=90.0)
    # Facing east, the square is straight ahead (above the centre): a 90 deg anticlockwise turn.
    np.testing.assert_allclose(east_up.astype(int), np.rot90(north_up, 1).astype(int), atol=2)


# --- GeoTIFF ------------------------------------------------------------------------------------


def test_geotiff_web_mercator_against_hand_formulas(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import Affine

    rng = np.random.default_rng(2)
    img = smooth_image(rng, 48, 64)
    img[img == 0] = 1
    img[:8, :8] = 0  # nodata corner
    x0, y0, px = 2.5e6, 8.5e6, 2.0
    path = tmp_path / "m.tif"
    with rasterio.open(path, "w", driver="GTiff", width=64, height=48, count=3, dtype="uint8",
                       crs="EPSG:3857", transform=Affine(px, 0, x0, 0, -px, y0), nodata=0) as ds:
        ds.write(np.moveaxis(img, 2, 0))
    m = open_map(path)
    cols = np.array([10, 40, 63, 3])
    rows = np.array([12, 30, 47, 3])
    X = x0 + (cols + 0.5) * px
    Y = y0 - (rows + 0.5) * px
    lon = np.degrees(X / R)
    lat = np.degrees(2 * np.arctan(np.exp(Y / R)) - np.pi / 2)
    rgb, valid = m.sample(lat, lon, footprint_m=0.0)
    assert valid.tolist() == [True, True, True, False]
    np.testing.assert_allclose(rgb[:3].astype(int), img[rows[:3], cols[:3]].astype(int), atol=1)
    # 2 Mercator metres per pixel are 2 cos(lat) ground metres.
    assert m.metres_per_pixel == pytest.approx(2 * math.cos(math.radians(lat[1])), rel=0.01)
    la0, lo0, la1, lo1 = m.bounds_latlon()
    assert la0 < lat.min() and la1 > lat.max() and lo0 < lon.min() and lo1 > lon.max()
    assert m.describe()["type"] == "geotiff"


def test_geotiff_wgs84_matches_png_with_same_corners(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import Affine

    rng = np.random.default_rng(3)
    img = smooth_image(rng, 120, 160)
    tl_lat, tl_lon, br_lat, br_lon = geo.corners_for_centre(60.4, 22.46, 320.0, 240.0)
    with rasterio.open(tmp_path / "m.tif", "w", driver="GTiff", width=160, height=120, count=3, dtype="uint8",
                       crs="EPSG:4326", transform=Affine((br_lon - tl_lon) / 160, 0, tl_lon, 0, (br_lat - tl_lat) / 120, tl_lat)) as ds:
        ds.write(np.moveaxis(img, 2, 0))
    write_png(tmp_path / "m.png", img)
    write_corners_csv(tmp_path / "m.csv", [("m.png", tl_lat, tl_lon, br_lat, br_lon)])
    tif, png = open_map(tmp_path / "m.tif"), open_map(tmp_path / "m.png")
    lat = rng.uniform(br_lat, tl_lat, (30, 30))
    lon = rng.uniform(tl_lon, br_lon, (30, 30))
    a, va = tif.sample(lat, lon, footprint_m=0.0)
    b, vb = png.sample(lat, lon, footprint_m=0.0)
    assert va.all() and vb.all()
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    ca, _ = tif.read_crop(60.4, 22.46, 200.0, 32, yaw_deg=30.0)  # coarse levels agree too
    cb, _ = png.read_crop(60.4, 22.46, 200.0, 32, yaw_deg=30.0)
    assert np.abs(ca.astype(int) - cb.astype(int)).mean() < 4


# --- files and errors ---------------------------------------------------------------------------


def test_corners_csv_roundtrip_and_image_size(tmp_path):
    rows = [("a.png", 60.5, 22.4, 60.4, 22.5), ("sub/b.jpg", 1.25, -3.5, 1.0, -3.25)]
    p = write_corners_csv(tmp_path / "map.csv", rows)
    assert p.read_text().splitlines()[0].replace(" ", "") == "Filename,Top_left_lat,Top_left_lon,Bottom_right_lat,Bottom_right_long"
    assert read_corners_csv(p) == [(n, *map(pytest.approx, v)) for n, *v in rows]
    img = np.zeros((37, 53, 3), np.uint8)
    for ext in (".png", ".jpg"):
        cv2.imwrite(str(tmp_path / f"x{ext}"), img)
        assert image_size(tmp_path / f"x{ext}") == (53, 37)


def test_open_map_errors(tmp_path):
    with pytest.raises(SkylocError, match="not found"):
        open_map(tmp_path / "nope.tif")
    (tmp_path / "x.bmp").write_bytes(b"BM")
    with pytest.raises(SkylocError, match="unknown type"):
        open_map(tmp_path / "x.bmp")
    with pytest.raises(SkylocError, match="no map.csv"):
        open_map(tmp_path)
    (tmp_path / "bad.csv").write_text("Filename,a,b,c,d\n\"x.png\", 1, 2, oops, 4\n")
    with pytest.raises(SkylocError, match="line 2"):
        open_map(tmp_path / "bad.csv")
    (tmp_path / "gone.csv").write_text("\"missing.png\", 1.0, 2.0, 0.5, 2.5\n")
    with pytest.raises(SkylocError, match="none of its tile images"):
        open_map(tmp_path / "gone.csv")
    (tmp_path / "flip.csv").write_text("\"missing.png\", 0.5, 2.0, 1.0, 2.5\n")
    with pytest.raises(SkylocError, match="north-west"):
        open_map(tmp_path / "flip.csv")
    (tmp_path / "junk.tif").write_bytes(b"not a tiff")
    with pytest.raises(SkylocError, match="GeoTIFF"):
        open_map(tmp_path / "junk.tif")


def test_turku_missing_tiles_share_of_area():
    """The share of the map's area whose tile image is absent, by haversine areas of the CSV rows."""
    rows = turku_rows()
    m = open_map(TURKU)

    def area(r):
        _, tl_lat, tl_lon, br_lat, br_lon = r
        return geo.haversine_m(tl_lat, tl_lon, br_lat, tl_lon) * geo.haversine_m(tl_lat, tl_lon, tl_lat, br_lon)

    missing = sum(area(r) for r in rows if not (TURKU / r[0]).is_file())
    assert m.missing_share == pytest.approx(missing / sum(area(r) for r in rows), rel=1e-3)
    assert m.describe()["missing_share"] == pytest.approx(m.missing_share, abs=1e-6) and 0 < m.missing_share < 0.5


@pytest.mark.parametrize("row, message", [
    ('"t.png", 60.41, 187.0, 60.40, 187.01', "out of range"),
    ('"t.png", nan, 22.46, 60.40, 22.47', "finite"),
    ('"t.png", 60.40, 22.46, 60.41, 22.47', "north-west"),
    ('"t.png", 91.0, 22.46, 60.40, 22.47', "out of range"),
    ('"../t.png", 60.41, 22.46, 60.40, 22.47', "outside the CSV's folder"),
    ('"/etc/hostname", 60.41, 22.46, 60.40, 22.47', "outside the CSV's folder"),
    ('"a/../../t.png", 60.41, 22.46, 60.40, 22.47', "outside the CSV's folder"),
])
def test_bad_corners_csv_refused(tmp_path: Path, row: str, message: str):
    sub = tmp_path / "map"
    sub.mkdir()
    write_png(tmp_path / "t.png", smooth_image(np.random.default_rng(0), 32, 32))
    write_png(sub / "t.png", smooth_image(np.random.default_rng(0), 32, 32))
    (sub / "map.csv").write_text(",".join(CSV_HEADER_) + "\n" + row + "\n")
    with pytest.raises(SkylocError, match=message):
        open_map(sub)


def test_subfolder_paths_in_corners_csv_allowed(tmp_path: Path):
    (tmp_path / "tiles").mkdir()
    write_png(tmp_path / "tiles" / "t.png", smooth_image(np.random.default_rng(0), 32, 32))
    (tmp_path / "map.csv").write_text(",".join(CSV_HEADER_) + '\n"tiles/./t.png", 60.41, 22.46, 60.40, 22.47\n')
    m = open_map(tmp_path)
    assert [t.path for t in m.tiles] == [tmp_path / "tiles" / "t.png"] and m.missing_share == 0.0


def test_geotiff_without_geotransform_refused(tmp_path: Path):
    rasterio = pytest.importorskip("rasterio")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(tmp_path / "n.tif", "w", driver="GTiff", width=16, height=16, count=3, dtype="uint8",
                           crs="EPSG:4326") as ds:
            ds.write(np.zeros((3, 16, 16), np.uint8))
    with pytest.raises(SkylocError, match="no geotransform"):
        open_map(tmp_path / "n.tif")


CSV_HEADER_ = ["Filename", "Top_left_lat", "Top_left_lon", "Bottom_right_lat", "Bottom_right_long"]
