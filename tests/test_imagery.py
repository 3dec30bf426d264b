"""Map imagery onboard: packing (JPEG/PNG tiles + corners CSV), reading it back at the right
place, sha256 refusal, atomic replacement, the tile-set record and `skyloc tiles --pack-imagery`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from skyloc.core import geo
from skyloc.core.errors import SkylocError
from skyloc.runtime.maps.imagery import MapImagery, imagery_record, imagery_sha256, pack_imagery
from skyloc.runtime.maps.open import open_map

from runtime_core_helpers import make_map, make_tiny_model


@pytest.fixture()
def src_map(tmp_path: Path) -> Path:
    return make_map(tmp_path / "src", width_px=300, height_px=260, m_per_px=0.5, seed=3)


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def test_packed_imagery_reads_back_at_the_same_place(src_map: Path, tmp_path: Path):
    gmap = open_map(src_map)
    out = pack_imagery(gmap, gmap.bounds_latlon(), tmp_path / "packed", mpp=0.5, tile_px=64)
    files = sorted(p.name for p in out.iterdir())
    assert "map.csv" in files and any(f.endswith(".jpg") for f in files)
    packed = MapImagery(out)
    lat_min, lon_min, lat_max, lon_max = gmap.bounds_latlon()
    lat, lon = 0.5 * (lat_min + lat_max), 0.5 * (lon_min + lon_max)
    ref, rv = gmap.read_crop(lat, lon, 60.0, 120)
    got, gv = packed.crop(lat, lon, 60.0, 0.5)
    assert got.shape == ref.shape and gv.all() and rv.all()
    aligned = _mad(got, ref)
    # one metre off must look clearly worse than aligned: the packed tiles are georeferenced right
    slat, slon = geo.offset_latlon(lat, lon, 1.0, 0.0)
    shifted = _mad(packed.crop(slat, slon, 60.0, 0.5)[0], ref)
    assert aligned < 6.0 and shifted > 2 * aligned, (aligned, shifted)  # JPEG q90 on a noise texture
    for de, dn in ((0.25, 0), (-0.25, 0), (0, 0.25), (0, -0.25)):  # and no sub-pixel bias either
        slat, slon = geo.offset_latlon(lat, lon, de, dn)
        assert _mad(packed.crop(slat, slon, 60.0, 0.5)[0], ref) > aligned, (de, dn)


def test_partly_off_map_tiles_keep_their_no_data(src_map: Path, tmp_path: Path):
    gmap = open_map(src_map)
    lat_min, lon_min, lat_max, lon_max = gmap.bounds_latlon()
    # tiles of 64 px x 0.5 m do not divide the 150 m x 130 m map: the last row / column is partial
    out = pack_imagery(gmap, (lat_min - 0.01, lon_min - 0.01, lat_max + 0.01, lon_max + 0.01), tmp_path / "p",
                       mpp=0.5, tile_px=64)
    assert any(p.suffix == ".png" for p in out.iterdir())
    m = MapImagery(out)
    elat, elon = geo.offset_latlon(lat_min, lon_max, 0.0, 0.0)  # the south-east corner of the map
    rgb, valid = m.crop(elat, elon, 20.0, 0.5)
    assert 0.15 < valid.mean() < 0.35  # about a quarter of the square is on the map
    assert (rgb[~valid] == 0).all()


def test_checksum_mismatch_is_refused(src_map: Path, tmp_path: Path):
    gmap = open_map(src_map)
    out = pack_imagery(gmap, gmap.bounds_latlon(), tmp_path / "packed", mpp=0.5, tile_px=128)
    sha = imagery_sha256(out)
    MapImagery(out, sha)  # the recorded checksum opens
    tile = next(p for p in sorted(out.iterdir()) if p.suffix == ".jpg")
    data = bytearray(tile.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tile.write_bytes(bytes(data))
    with pytest.raises(SkylocError, match="sha256"):
        MapImagery(out, sha)


def test_for_tileset_record_resolution(src_map: Path, tmp_path: Path):
    assert MapImagery.for_tileset(tmp_path / "t.npz", {"format": "x"}) is None  # retrieval only
    out_ts = tmp_path / "set" / "tiles.npz"
    out_ts.parent.mkdir()
    rec = imagery_record(src_map, out_ts, pack=True, mpp=0.5)
    assert rec["packed"] and rec["path"] == "tiles.imagery" and len(rec["sha256"]) == 64
    assert rec["mpp"] == pytest.approx(0.5, rel=0.01)
    # the folder moves to another machine: the relative record still resolves
    moved = tmp_path / "moved"
    (out_ts.parent).rename(moved)
    img = MapImagery.for_tileset(moved / "tiles.npz", {"imagery": rec})
    assert img is not None and img.path == moved / "tiles.imagery"
    # an unpacked record points at the source with its sha256
    rec2 = imagery_record(src_map, tmp_path / "other.npz", pack=False)
    assert Path(rec2["path"]).is_absolute() and not rec2["packed"]
    assert MapImagery.for_tileset(tmp_path / "other.npz", {"imagery": rec2}).sha256 == rec2["sha256"]
    with pytest.raises(SkylocError, match="not found"):
        MapImagery.for_tileset(tmp_path / "x.npz", {"imagery": {**rec, "path": "nowhere.imagery"}})
    # an existing packed folder is not replaced without overwrite
    with pytest.raises(SkylocError, match="--overwrite"):
        imagery_record(src_map, moved / "tiles.npz", pack=True)


def test_failed_pack_leaves_the_previous_folder(src_map: Path, tmp_path: Path):
    gmap = open_map(src_map)
    out = pack_imagery(gmap, gmap.bounds_latlon(), tmp_path / "packed", mpp=0.5, tile_px=128)
    before = imagery_sha256(out)
    with pytest.raises(SkylocError, match="do not overlap"):
        pack_imagery(gmap, (10.0, 10.0, 10.1, 10.1), out, mpp=0.5)
    with pytest.raises(SkylocError, match="mpp"):
        pack_imagery(gmap, gmap.bounds_latlon(), out, mpp=float("nan"))
    assert imagery_sha256(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no scratch left


def test_crop_validates_inputs(src_map: Path):
    m = MapImagery(src_map)
    for bad in [(float("nan"), 22.46, 50.0, 1.0), (60.4, 22.46, -5.0, 1.0), (60.4, 22.46, 50.0, float("inf"))]:
        with pytest.raises(SkylocError):
            m.crop(*bad)


def test_tiles_cli_pack_imagery_records_it(src_map: Path, tmp_path: Path):
    from skyloc.cli import main
    from skyloc.runtime.maps.tileset import TileSet

    model = make_tiny_model(tmp_path / "tiny.onnx", size=32, dim=16)
    out = tmp_path / "ts" / "tiles.npz"
    rc = main(["tiles", "--model", str(model), "--map", str(src_map), "--out", str(out), "--tile-m", "40",
               "--stride-m", "40", "--scales", "1", "--no-progress", "--pack-imagery", "--imagery-mpp", "1.0"])
    assert rc == 0
    ts = TileSet.load(out)
    rec = ts.meta["imagery"]
    assert rec["packed"] and rec["path"] == "tiles.imagery" and rec["mpp"] == pytest.approx(1.0, rel=0.01)
    img = MapImagery.for_tileset(out, ts.meta)
    assert img is not None and img.sha256 == rec["sha256"]
    lat, lon = (float(v) for v in ts.centers[0])
    rgb, valid = img.crop(lat, lon, 40.0, 1.0)
    ref, _ = open_map(src_map).read_crop(lat, lon, 40.0, 40)
    assert valid.all() and _mad(rgb, ref) < 6.0
    json.dumps(ts.meta)  # the record is plain JSON


def _claim_size(png: Path, width: int, height: int) -> None:
    """Rewrite a PNG's IHDR size (CRC fixed, so only the size is a lie), the way a damaged or hostile file would."""
    import struct
    import zlib

    b = bytearray(png.read_bytes())
    assert b[12:16] == b"IHDR"
    b[16:24] = struct.pack(">II", width, height)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    png.write_bytes(bytes(b))


def test_a_tile_claiming_more_pixels_than_opencv_decodes_is_refused_at_open(src_map: Path, monkeypatch):
    """Refused when the imagery opens (`skyloc run` start, exit 2), naming the file, rather than on
    every frame's crop; OpenCV's own limit is the bound (its env setting moves both)."""
    import cv2

    assert MapImagery(src_map).mpp > 0  # the genuine 300 x 260 map opens
    monkeypatch.setenv("OPENCV_IO_MAX_IMAGE_PIXELS", str(300 * 260 - 1))
    with pytest.raises(SkylocError, match=r"map\.png.*300 x 260"):
        MapImagery(src_map)
    monkeypatch.delenv("OPENCV_IO_MAX_IMAGE_PIXELS")
    _claim_size(src_map, 200000, 200000)
    with pytest.raises(cv2.error):  # what every crop met before: OpenCV refuses the header itself
        cv2.imread(str(src_map), cv2.IMREAD_UNCHANGED)
    with pytest.raises(SkylocError, match=r"map imagery tile .*map\.png.*200000 x 200000.*replace the file"):
        MapImagery(src_map)
