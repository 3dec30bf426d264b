"""`skyloc tiles`: embed a map into a tile set; `skyloc tiles merge`: join sharded parts.

    skyloc tiles --model model.onnx --map map.tif --out tiles.npz --tile-m 150 --stride-m 30
    skyloc tiles ... --shard 3/8          # part 3 of 8 (any scheduler can run the parts)
    skyloc tiles merge tiles-*.npz --out tiles.npz --index hnsw
    skyloc tiles ... --overwrite          # replace an existing --out (only once the new one is complete)
    skyloc tiles ... --matcher xfeat.onnx # + the map's learned features (<out stem>.features.npz)
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from skyloc.core.config import options_from_args, write_resolved_config
from skyloc.core.errors import SkylocError
from skyloc.core.options import HelpFormatter, add_options, check_options, opt
from skyloc.runtime.maps.map_features import BLOCK_KPTS, BLOCK_PX, FEATURES_MPP
from skyloc.runtime.maps.tileset import STRIDE_M, TILE_M

LOG_LEVEL = "INFO"  # skyloc/cli.py's default for this command: the build reports its progress
INDEX_KINDS = ("none", "flat", "hnsw", "ivfpq")


@dataclass
class TilesOptions:
    """`skyloc tiles` options: the one place of their defaults, help and checks (flags derive from it)."""

    model: str | None = opt(None, "exported model.onnx or built model.engine (with its .json sidecar)")
    map: str | None = opt(None, "GeoTIFF, corners CSV, folder with map.csv, or PNG/JPG with <stem>.csv")
    out: str | None = opt(None, "tile set to write (.npz)")
    tile_m: float = opt(TILE_M, "tile side on the ground, metres", gt=0)
    stride_m: float = opt(STRIDE_M, "distance between tile centres, metres", gt=0)
    # several levels by default: a frame registers against the largest tile it covers, so one tile set
    # serves frames covering 0.45-1x tile_m and more (a 320x240 60-deg frame at 120 m covers 73-104 m,
    # by heading, of the default 150 m); a single level skips every lower frame as no-coverage
    scales: tuple[float, ...] = opt((0.45, 0.7, 1.0), "comma-separated tile size multipliers (scale levels)", gt=0)
    min_valid: float = opt(1.0, "minimum fraction of map data in a tile", gt=0, le=1)
    batch: int = opt(32, "tiles per inference batch", ge=1)
    backend: str = opt("auto", "inference backend", choices=("auto", "onnxruntime", "tensorrt"))
    providers: str | None = opt(None, "onnxruntime execution providers to force, e.g. cpu or cuda,cpu")
    shard: str = opt("0/1", "K/N: embed only part K of N of the grid")
    progress: bool = opt(True, "show a progress bar")
    index: str = opt("none", "also build a faiss index beside the tile set (reused by `skyloc run`)",
                     choices=INDEX_KINDS)
    overwrite: bool = opt(False, "replace an existing --out (only once the new tile set is complete)")
    pack_imagery: bool = opt(False, "pack the map imagery beside the tile set (<out stem>.imagery/, JPEG "
                             "tiles + map.csv) for onboard registration; otherwise the map source is "
                             "recorded by path + sha256")
    imagery_mpp: float = opt(0.5, "metres per pixel of the packed imagery (never finer than the map)", gt=0)
    matcher: str | None = opt(None, "matcher ONNX (`skyloc export matcher`): also extract the map's keypoints + "
                                    "descriptors once into <out stem>.features.npz, so `skyloc run` registers with "
                                    "the learned registrar and extracts only the frame", metavar="M.onnx")
    features_mpp: float = opt(FEATURES_MPP, "metres per pixel the map features are extracted at (the learned registrar's "
                                   "working resolution; never finer than the imagery)", gt=0, le=10)
    features_block: int = opt(BLOCK_PX, "map features are extracted in blocks of this many pixels a side (64 px of "
                                    "overlap each side)", ge=256, le=4096)
    features_kpts: int = opt(BLOCK_KPTS, "keypoints kept per block at most (1024 px blocks hold ~17-18k; aerovloc photo "
                                   "vs its map: 4096 -> ~21 inliers, 8192 -> ~41, 16384 -> ~65; a small frame "
                                   "needs the dense store)",
                             ge=64, le=65536)

    def __post_init__(self) -> None:
        self.scales = tuple(self.scales)
        check_options(self)
        if not self.scales:
            raise SkylocError("tiles: --scales needs at least one positive multiplier, e.g. 1.0")


def resolved_config_path(out: str | Path) -> Path:
    """Where `skyloc tiles` records the options it used: `<out name>.config.json` beside the tile set
    (area.npz -> area.npz.config.json: never the name `skyloc run --out area.jsonl` writes)."""
    out = Path(out)
    return out.with_name(out.name + ".config.json")


def _add_index(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", choices=INDEX_KINDS, default="none",
                   help="also build a faiss index beside the tile set (reused by `skyloc run`)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, TilesOptions)
    sub = parser.add_subparsers(dest="tiles_cmd", metavar="{merge}")
    m = sub.add_parser("merge", help="join shards 0/N..N-1/N into one tile set",
                       formatter_class=HelpFormatter)
    m.add_argument("parts", nargs="+", help="the shard files")
    m.add_argument("--out", required=True, help="merged tile set to write")
    m.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _add_index(m)


def _build_index(out: Path, kind: str) -> None:
    if kind == "none":
        return
    from skyloc.runtime.localize.retrieval_faiss import FaissMatcher
    from skyloc.runtime.maps.tileset import TileSet

    m = FaissMatcher(TileSet.load(out), kind)
    print(f"faiss {kind} index: {m.index_path} ({'reused' if m.reused else 'built'})", file=sys.stderr)


def extract_map_features(matcher: str | Path, out: str | Path, imagery: dict, mpp: float = FEATURES_MPP,
                         block_px: int = BLOCK_PX, max_kpts: int = BLOCK_KPTS, overwrite: bool = False,
                         progress: bool = True) -> dict:
    """Extract the recorded imagery's features with the matcher into <out stem>.features.npz (before
    the tile set `out`, which records its path, sha256 and the matcher's fingerprint); returns that
    record (`build_tileset(..., map_features=)`)."""
    from skyloc.runtime.maps.imagery import MapImagery
    from skyloc.runtime.maps.map_features import (
        MapFeatures,
        build_map_features,
        features_path_for,
    )
    from skyloc.runtime.register.extractor import open_extractor

    out = Path(out)
    fpath = features_path_for(out)
    if fpath.exists() and not overwrite:
        raise SkylocError(f"{fpath} exists; pass --overwrite to replace it (only once the new one is complete) "
                          f"or choose another --out")
    ext = open_extractor(matcher)
    img = MapImagery.for_tileset(out, {"imagery": imagery})
    assert img is not None  # imagery_record always gives a record
    build_map_features(ext, img, fpath, max(float(mpp), img.mpp), img.sha256, block_px=block_px,
                       max_kpts=max_kpts, progress=progress)
    feats = MapFeatures(fpath, fingerprint=ext.fingerprint, imagery_sha256=img.sha256)
    print(f"map features {fpath}: {len(feats)} keypoints at {feats.mpp:g} m/px ({feats.kind})", file=sys.stderr)
    return feats.record(relative_to=out.parent, matcher=str(matcher))


def main(args: argparse.Namespace) -> int:
    from skyloc.runtime.maps.tileset import TileSet
    from skyloc.runtime.maps.tileset_build import build_tileset, merge_tilesets

    if args.tiles_cmd == "merge":
        out = merge_tilesets(args.parts, args.out, overwrite=args.overwrite)
        index = args.index
    else:
        opts = options_from_args(TilesOptions, args, section="tiles")
        missing = [f"--{n}" for n in ("model", "map", "out") if not getattr(opts, n)]
        if missing:
            raise SkylocError(f"missing {', '.join(missing)} (or use `skyloc tiles merge PARTS... --out OUT`)")
        conf = {"providers": opts.providers} if opts.providers else None
        from skyloc.runtime.maps.imagery import imagery_record

        imagery = imagery_record(opts.map, opts.out, opts.pack_imagery, opts.imagery_mpp, opts.overwrite)
        features = extract_map_features(opts.matcher, opts.out, imagery, opts.features_mpp, opts.features_block,
                                        opts.features_kpts, opts.overwrite, opts.progress) if opts.matcher else None
        out = build_tileset(
            opts.model, opts.map, opts.out, tile_m=opts.tile_m, stride_m=opts.stride_m,
            scales=list(opts.scales), batch=opts.batch, backend=opts.backend,
            shard=opts.shard, progress=opts.progress, min_valid=opts.min_valid, conf=conf,
            overwrite=opts.overwrite, imagery=imagery, map_features=features,
        )
        write_resolved_config(opts, resolved_config_path(out))
        index = opts.index
    ts = TileSet.load(out)
    m = ts.meta
    print(f"wrote {out}: {len(ts)} tiles, {ts.dim}-d, model {ts.model_id[:12]} ({ts.variant}, "
          f"{m.get('precision')}), shard {m.get('shard')}, via {m.get('backend', 'merge')}", file=sys.stderr)
    _build_index(out, index)
    return 0
