"""Map features offline (runtime/maps/map_features.py, `skyloc tiles --matcher`): the stored
keypoints sit where the extractor finds them on the imagery itself, the store and the tile set
refuse a changed file, another matcher or other imagery, and writes are all-or-nothing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from skyloc.core import geo
from skyloc.core.errors import SkylocError
from skyloc.runtime.maps.imagery import MapImagery
from skyloc.runtime.maps.map_features import MapFeatures, build_map_features, features_path_for

from runtime_core_helpers import make_map, make_tiny_model

AEROVLOC_MAP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "aerovloc" / "map"


@pytest.fixture(scope="module")
def extractor(xfeat_onnx):
    from skyloc.runtime.register.extractor import open_extractor

    return open_extractor(xfeat_onnx)


@pytest.fixture()
def small_map(tmp_path: Path) -> MapImagery:
    return MapImagery(make_map(tmp_path / "map", width_px=700, height_px=560, m_per_px=0.5, seed=5))


def _nearest(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    j = d.argmin(axis=1)
    return d[np.arange(len(a)), j], j


def test_stored_keypoints_are_where_the_extractor_finds_them_on_the_imagery(extractor, tmp_path):
    """Independent reference: extract a crop of the real map directly and compare with the store's
    window over the same ground (a georeferencing slip of one pixel would show)."""
    if not AEROVLOC_MAP.exists():
        pytest.skip(f"real map {AEROVLOC_MAP} not present")
    img = MapImagery(AEROVLOC_MAP)
    path = build_map_features(extractor, img, tmp_path / "f.npz", 0.5, img.sha256, block_px=512, overlap_px=64)
    mf = MapFeatures(path, fingerprint=extractor.fingerprint, imagery_sha256=img.sha256)
    lat0, lon0 = mf.centre
    found = 0
    for de, dn in ((-150.0, 40.0), (0.0, 0.0), (180.0, -60.0)):  # straddling block seams too
        lat, lon = geo.offset_latlon(lat0, lon0, de, dn)
        rgb, valid = img.crop(float(lat), float(lon), 160.0, 0.5)
        direct = extractor.extract(rgb, valid, max_kpts=300)
        stored = mf.window(float(lat), float(lon), 80.0)
        assert mf.window_shape(80.0) == rgb.shape[:2]
        inner = np.all((direct.xy > 24) & (direct.xy < 296), axis=1)  # away from the crop's own border
        d, j = _nearest(direct.xy[inner], stored.xy)
        close = d < 1.5
        cos = np.sum(direct.desc[inner][close] * stored.desc[j[close]], axis=1)
        assert close.mean() > 0.5, (de, dn, close.mean())
        assert np.median(cos) > 0.9, (de, dn, np.median(cos))
        # the same keypoints one metre off do not line up: the agreement above is the georeference
        d_off, _ = _nearest(direct.xy[inner] + np.array([2.0, 0.0], np.float32), stored.xy)
        assert (d_off < 1.0).mean() < 0.5 * close.mean()
        found += int(close.sum())
    assert found > 150
    assert mf.desc.dtype == np.float16 and mf.latlon.dtype == np.float64
    n = np.linalg.norm(mf.desc.astype(np.float32), axis=1)
    assert np.allclose(n, 1.0, atol=5e-3)


def test_window_pixels_follow_the_crop_convention(extractor, small_map, tmp_path):
    path = build_map_features(extractor, small_map, tmp_path / "f.npz", 0.5, small_map.sha256)
    mf = MapFeatures(path)
    lat, lon = mf.centre
    kp = mf.window(lat, lon, 60.0, 40.0)
    assert mf.window_shape(60.0, 40.0) == (160, 240) and len(kp) > 20
    assert (kp.xy[:, 0] >= 0).all() and (kp.xy[:, 0] < 240).all() and (kp.xy[:, 1] < 160).all()
    # back to lat/lon: the pixel -> metre convention of GeoMap.read_crop (centre of pixel i at i + 0.5)
    e = (kp.xy[:, 0].astype(np.float64) - 120.0) * mf.mpp
    n = (80.0 - kp.xy[:, 1].astype(np.float64)) * mf.mpp
    la, lo = geo.local_m_to_latlon(e, n, lat, lon)
    d, _ = _nearest(np.stack([la, lo], 1) * 1e5, mf.latlon * 1e5)
    assert d.max() < 1e-3  # every windowed keypoint is a stored one, to float32 pixel precision


def test_a_changed_store_another_matcher_or_other_imagery_is_refused(extractor, small_map, tmp_path):
    path = build_map_features(extractor, small_map, tmp_path / "f.npz", 0.5, small_map.sha256)
    rec = MapFeatures(path).record(relative_to=tmp_path, matcher="m.onnx")
    assert rec["path"] == "f.npz" and rec["fingerprint"] == extractor.fingerprint
    meta = {"map_features": rec, "imagery": {"sha256": small_map.sha256}}
    assert len(MapFeatures.for_tileset(tmp_path / "t.npz", meta)) > 0
    with pytest.raises(SkylocError, match="matcher"):
        MapFeatures.for_tileset(tmp_path / "t.npz", meta, fingerprint="0" * 64)
    with pytest.raises(SkylocError, match="imagery"):
        MapFeatures.for_tileset(tmp_path / "t.npz", {**meta, "imagery": {"sha256": "f" * 64}})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SkylocError, match="sha256"):
        MapFeatures.for_tileset(tmp_path / "t.npz", meta)
    with pytest.raises(SkylocError, match="damaged|checksum|inconsistent"):
        MapFeatures(path)  # without the tile set's sha256 its own array checksum still catches it
    assert MapFeatures.for_tileset(tmp_path / "t.npz", {"format": "x"}) is None


def test_a_failed_build_leaves_the_previous_store_untouched(extractor, small_map, tmp_path):
    out = build_map_features(extractor, small_map, tmp_path / "f.npz", 0.5)
    before = out.read_bytes()
    blank = MapImagery(make_map(tmp_path / "blank", width_px=200, height_px=200, m_per_px=0.5))
    import cv2

    cv2.imwrite(str(blank.path), np.full((200, 200, 3), 90, np.uint8))  # a featureless map
    with pytest.raises(SkylocError, match="no keypoint"):
        build_map_features(extractor, MapImagery(blank.path), out, 0.5)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no scratch left
    with pytest.raises(SkylocError, match="block"):
        build_map_features(extractor, small_map, tmp_path / "g.npz", 0.5, block_px=100, overlap_px=40)


def test_skyloc_tiles_matcher_records_the_store_in_the_tile_set(xfeat_onnx, tmp_path):
    from skyloc.cli import main as skyloc
    from skyloc.runtime.maps.tileset import TileSet

    src = make_map(tmp_path / "src", width_px=600, height_px=500, m_per_px=0.5, seed=2)
    model = make_tiny_model(tmp_path / "tiny.onnx", size=32, dim=16)
    out = tmp_path / "set" / "tiles.npz"
    args = ["tiles", "--model", str(model), "--map", str(src), "--out", str(out), "--tile-m", "100",
            "--stride-m", "50", "--no-progress", "--pack-imagery", "--matcher", str(xfeat_onnx)]
    assert skyloc(args) == 0
    ts = TileSet.load(out)
    rec = ts.meta["map_features"]
    fpath = features_path_for(out)
    assert fpath.is_file() and rec["path"] == fpath.name and rec["mpp"] == pytest.approx(0.5, rel=1e-3)
    from skyloc.runtime.register.extractor import open_extractor

    assert rec["fingerprint"] == open_extractor(xfeat_onnx).fingerprint
    mf = MapFeatures.for_tileset(out, ts.meta)
    assert len(mf) == rec["count"] > 100 and mf.meta["imagery_sha256"] == ts.meta["imagery"]["sha256"]
    before = fpath.read_bytes()
    assert skyloc(args) == 2  # existing outputs: refused without --overwrite, nothing touched
    assert fpath.read_bytes() == before
    cfg = json.loads((out.with_name(out.name + ".config.json")).read_text())
    assert cfg["options"]["matcher"] == str(xfeat_onnx)  # the resolved config records it (--config reads it back)
