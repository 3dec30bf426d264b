"""Tile sets: build / save / load round trip, tamper and truncation detection, model checks,
sharding + merge == unsharded, footprints vs haversine, and the `skyloc tiles` CLI."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from skyloc.core import geo
from skyloc.runtime.backends import open_backend
from skyloc.cli import main as skyloc
from skyloc.core.errors import SkylocError
from skyloc.runtime.maps.open import open_map
from skyloc.core.preprocess import to_model_input
from skyloc.core.sidecar import read_model_sidecar
from skyloc.runtime.maps.tileset import TileSet, save_tileset
from skyloc.runtime.maps.tileset_build import build_tileset, merge_tilesets
from runtime_core_helpers import make_map, make_tiny_model, tiny_reference

TILE_M, STRIDE_M, SCALES = 100.0, 25.0, (1.0, 1.5)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("tiles")
    model = make_tiny_model(d / "model.onnx", size=32, dim=16)
    png = make_map(d / "map", width_px=480, height_px=400)
    be = open_backend(model, "onnxruntime")
    gmap = open_map(png)
    full = build_tileset(be, gmap, d / "full.npz", tile_m=TILE_M, stride_m=STRIDE_M, scales=SCALES,
                         batch=40, progress=False)
    return {"dir": d, "model": model, "png": png, "be": be, "map": gmap, "full": full}


def test_build_round_trip_and_content(env: dict) -> None:
    ts = TileSet.load(env["full"], expect_model=read_model_sidecar(env["model"]))
    gmap = env["map"]
    grid = [gmap.grid(TILE_M * s, STRIDE_M) for s in SCALES]
    np.testing.assert_array_equal(ts.centers, np.concatenate(grid))
    np.testing.assert_array_equal(ts.scale, np.concatenate([np.full(len(g), s) for g, s in zip(grid, SCALES)]))
    assert len(ts) > 100 and ts.dim == 16 and ts.embeddings.dtype == np.float32
    m = ts.meta
    assert (m["model_id"], m["variant"], m["precision"], m["tile_m"], m["stride_m"], m["scales"]) == \
        ("tiny-model-0", "global", "fp32", TILE_M, STRIDE_M, list(SCALES))
    assert m["count"] == len(ts) and m["shard"] == "0/1" and m["map"]["source"].endswith("map.csv")
    # Embeddings equal the numpy twin of the model applied to the map crops.
    for i in (0, len(ts) // 2, len(ts) - 1):
        side = TILE_M * float(ts.scale[i])
        rgb, _ = gmap.read_crop(ts.centers[i, 0], ts.centers[i, 1], side, 32)
        ref = tiny_reference(to_model_input([rgb], env["be"].contract, bgr=False))[0]
        np.testing.assert_allclose(ts.embeddings[i], ref, atol=1e-5)
    # No scratch files left behind.
    assert not [p for p in env["dir"].iterdir() if p.name.startswith(".")]
    # Save again -> identical arrays, same checksum.
    again = save_tileset(ts, env["dir"] / "again.npz")
    ts2 = TileSet.load(again)
    assert ts2.checksum == ts.checksum
    for a in ("embeddings", "centers", "footprints", "scale"):
        np.testing.assert_array_equal(getattr(ts2, a), getattr(ts, a))
    with np.load(again, allow_pickle=False) as z:  # plain arrays + a JSON string, no objects
        assert z["meta"].dtype.kind == "U" and json.loads(str(z["meta"][()]))["format"] == "skyloc-tiles/1"


def test_footprints_match_tile_size(env: dict) -> None:
    ts = TileSet.load(env["full"])
    f = ts.footprints
    side = TILE_M * ts.scale.astype(np.float64)
    for a, b in ((0, 1), (1, 2), (2, 3), (3, 0)):  # TL-TR, TR-BR, BR-BL, BL-TL
        d = geo.haversine_m(f[:, a, 0], f[:, a, 1], f[:, b, 0], f[:, b, 1])
        np.testing.assert_allclose(d, side, rtol=1e-3)
    diag = geo.haversine_m(f[:, 0, 0], f[:, 0, 1], f[:, 2, 0], f[:, 2, 1])
    np.testing.assert_allclose(diag, side * np.sqrt(2), rtol=1e-3)
    assert (f[:, 0, 0] > f[:, 2, 0]).all() and (f[:, 0, 1] < f[:, 2, 1]).all()  # TL is north-west of BR
    np.testing.assert_allclose(f.mean(axis=1), ts.centers, atol=1e-7)


def test_checksum_catches_flipped_byte_and_truncation(env: dict, tmp_path: Path) -> None:
    raw = env["full"].read_bytes()
    ts = TileSet.load(env["full"])
    pos = raw.find(ts.embeddings[len(ts) // 2].tobytes())
    assert pos > 0
    flipped = bytearray(raw)
    flipped[pos + 5] ^= 0x01
    (tmp_path / "flip.npz").write_bytes(bytes(flipped))
    with pytest.raises(SkylocError, match="truncated or damaged"):
        TileSet.load(tmp_path / "flip.npz")
    for cut in (len(raw) // 2, len(raw) - 10):
        (tmp_path / "cut.npz").write_bytes(raw[:cut])
        with pytest.raises(SkylocError, match="truncated or damaged"):
            TileSet.load(tmp_path / "cut.npz")


def test_checksum_catches_rewritten_content(env: dict, tmp_path: Path) -> None:
    ts = TileSet.load(env["full"])
    meta = json.dumps(ts.meta)
    emb = ts.embeddings.copy()
    emb[3, 2] += 1e-3
    # A well-formed file whose content no longer matches its recorded checksum.
    with open(tmp_path / "edit.npz", "wb") as f:
        np.savez(f, embeddings=emb, centers=ts.centers, footprints=ts.footprints, scale=ts.scale, meta=np.array(meta))
    with pytest.raises(SkylocError, match="checksum"):
        TileSet.load(tmp_path / "edit.npz")
    forged = dict(ts.meta, model_id="someone-else")  # metadata edited by hand
    with open(tmp_path / "forged.npz", "wb") as f:
        np.savez(f, embeddings=ts.embeddings, centers=ts.centers, footprints=ts.footprints, scale=ts.scale,
                 meta=np.array(json.dumps(forged)))
    with pytest.raises(SkylocError, match="checksum"):
        TileSet.load(tmp_path / "forged.npz")


def test_other_model_or_variant_refused(env: dict, tmp_path: Path) -> None:
    sc = read_model_sidecar(env["model"])
    TileSet.load(env["full"], expect_model=sc)
    other = read_model_sidecar(make_tiny_model(tmp_path / "other.onnx", seed=3, model_id="tiny-model-1"))
    with pytest.raises(SkylocError, match="rebuild with `skyloc tiles --model MODEL --map .*map.csv --out"):
        TileSet.load(env["full"], expect_model=other)
    with pytest.raises(SkylocError, match=r"\(full\)"):
        TileSet.load(env["full"], expect_model=dataclasses.replace(sc, variant="full"))


def test_shards_merge_to_unsharded(env: dict, tmp_path: Path) -> None:
    full = TileSet.load(env["full"])
    parts = [build_tileset(env["be"], env["map"], tmp_path / f"p{k}.npz", tile_m=TILE_M, stride_m=STRIDE_M,
                           scales=SCALES, batch=64, shard=f"{k}/2", progress=False) for k in (0, 1)]
    sizes = [len(TileSet.load(p)) for p in parts]
    assert sum(sizes) == len(full) and min(sizes) > 0
    merged = TileSet.load(merge_tilesets(parts[::-1], tmp_path / "merged.npz"))
    np.testing.assert_array_equal(merged.centers, full.centers)
    np.testing.assert_array_equal(merged.footprints, full.footprints)
    np.testing.assert_array_equal(merged.scale, full.scale)
    np.testing.assert_allclose(merged.embeddings, full.embeddings, atol=1e-6)
    assert merged.meta["shard"] == "0/1" and merged.meta["count"] == len(full)
    with pytest.raises(SkylocError, match="missing shard.*1/2"):
        merge_tilesets(parts[:1], tmp_path / "bad.npz")
    with pytest.raises(SkylocError, match="given twice"):
        merge_tilesets([parts[0], parts[0], parts[1]], tmp_path / "bad.npz")
    odd = build_tileset(env["be"], env["map"], tmp_path / "odd.npz", tile_m=TILE_M, stride_m=50.0,
                        scales=SCALES, shard="1/2", progress=False)
    with pytest.raises(SkylocError, match="stride_m"):
        merge_tilesets([parts[0], odd], tmp_path / "bad.npz")


def test_many_shards_with_empty_ones(env: dict, tmp_path: Path) -> None:
    png = make_map(tmp_path / "small", width_px=150, height_px=150, seed=4)
    gmap = open_map(png)
    whole = build_tileset(env["be"], gmap, tmp_path / "whole.npz", tile_m=100, stride_m=50, progress=False)
    n_tiles = len(TileSet.load(whole))
    n = n_tiles + 2  # more shards than tiles: some are empty
    parts = [build_tileset(env["be"], gmap, tmp_path / f"s{k}.npz", tile_m=100, stride_m=50, shard=(k, n),
                           progress=False) for k in range(n)]
    assert sorted(len(TileSet.load(p)) for p in parts)[:2] == [0, 0]
    merged = TileSet.load(merge_tilesets(parts, tmp_path / "m.npz"))
    np.testing.assert_array_equal(merged.centers, TileSet.load(whole).centers)


def test_cli_build_shard_merge_and_errors(env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    common = ["--model", str(env["model"]), "--map", str(env["png"]), "--tile-m", "100", "--stride-m", "50",
              "--no-progress", "--providers", "cpu"]
    for k in (0, 1):
        assert skyloc(["tiles", *common, "--out", str(tmp_path / f"c{k}.npz"), "--shard", f"{k}/2"]) == 0
    out = tmp_path / "c.npz"
    assert skyloc(["tiles", "merge", str(tmp_path / "c1.npz"), str(tmp_path / "c0.npz"), "--out", str(out),
                   "--index", "flat"]) == 0
    assert (tmp_path / "c.faiss-flat.index").is_file()
    assert skyloc(["tiles", *common, "--out", str(tmp_path / "d.npz")]) == 0
    np.testing.assert_array_equal(TileSet.load(out).centers, TileSet.load(tmp_path / "d.npz").centers)
    assert "wrote" in capsys.readouterr().err
    assert skyloc(["tiles", "--map", str(env["png"]), "--out", str(tmp_path / "x.npz")]) == 2
    assert "--model" in capsys.readouterr().err
    assert skyloc(["tiles", *common, "--out", str(tmp_path / "x.npz"), "--shard", "2/2"]) == 2
    assert skyloc(["tiles", *common, "--out", str(tmp_path / "x.npz"), "--tile-m", "5000"]) == 2
    assert "no 5000" in capsys.readouterr().err


def test_real_map_with_holes(env: dict, tmp_path: Path) -> None:
    turku = Path(__file__).parents[1] / ".." / "shared" / "data" / "turku-satellite"
    if not (turku / "map.csv").is_file():
        pytest.skip(f"{turku} not found: real satellite tiles are not available here")
    gmap = open_map(turku)
    out = build_tileset(env["be"], gmap, tmp_path / "turku.npz", tile_m=150, stride_m=75, progress=False)
    ts = TileSet.load(out)
    assert len(ts) > 5
    # Only the valid area is cut: every tile's corners and centre have map data (tiles 07, 09, 10
    # are holes), and the tile set stays inside the map bounds.
    pts = np.concatenate([ts.footprints, ts.centers[:, None]], axis=1)
    inset = pts + (ts.centers[:, None] - pts) * 0.02  # a hair inside each edge
    assert gmap.is_valid(inset[..., 0], inset[..., 1]).all()
    lat_min, lon_min, lat_max, lon_max = gmap.bounds_latlon()
    assert (ts.footprints[..., 0] >= lat_min - 1e-9).all() and (ts.footprints[..., 1] <= lon_max + 1e-9).all()
    full_grid = gmap.grid(150, 75, min_valid=0.0)
    assert len(ts) < len(full_grid)  # holes removed some grid cells


def test_grid_estimate_bounds_the_real_grid(env: dict) -> None:
    from skyloc.runtime.maps.tileset_checks import estimate_grid

    gmap = env["map"]
    for tile_m, stride_m, scales in ((100.0, 25.0, (1.0,)), (100.0, 25.0, SCALES), (60.0, 7.0, (1.0, 2.0))):
        real = sum(len(gmap.grid(tile_m * s, stride_m, min_valid=0.0)) for s in scales)
        est = estimate_grid(gmap, tile_m, stride_m, scales)
        assert real <= est <= real * 1.15 + 2, (tile_m, stride_m, scales, real, est)


def test_cli_overwrite_replaces_only_when_asked(env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    common = ["--model", str(env["model"]), "--map", str(env["png"]), "--stride-m", "50", "--no-progress",
              "--providers", "cpu"]
    out = tmp_path / "t.npz"
    assert skyloc(["tiles", *common, "--tile-m", "100", "--out", str(out)]) == 0
    first = out.read_bytes()
    assert skyloc(["tiles", *common, "--tile-m", "120", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == first
    assert skyloc(["tiles", *common, "--tile-m", "120", "--out", str(out), "--overwrite"]) == 0
    assert TileSet.load(out).meta["tile_m"] == 120.0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch left
