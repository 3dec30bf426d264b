"""`skyloc tiles`: embed a map into a tile set; `skyloc tiles merge`: join sharded parts.

    skyloc tiles --model model.onnx --map map.tif --out tiles.npz --tile-m 150 --stride-m 30
    skyloc tiles ... --shard 3/8          # part 3 of 8 (any scheduler can run the parts)
    skyloc tiles merge tiles-*.npz --out tiles.npz --index hnsw
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from skyloc.runtime.errors import SkylocError


def _add_index(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", choices=["none", "flat", "hnsw", "ivfpq"], default="none",
                   help="also build a faiss index beside the tile set (reused by `skyloc run`)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="exported model.onnx or built model.engine (with its .json sidecar)")
    parser.add_argument("--map", help="GeoTIFF, corners CSV, folder with map.csv, or PNG/JPG with <stem>.csv")
    parser.add_argument("--out", help="tile set to write (.npz)")
    parser.add_argument("--tile-m", type=float, default=150.0, help="tile side on the ground, metres")
    parser.add_argument("--stride-m", type=float, default=30.0, help="distance between tile centres, metres")
    parser.add_argument("--scales", default="1.0", help="comma-separated tile size multipliers, e.g. 1.0,1.5")
    parser.add_argument("--min-valid", type=float, default=1.0, help="minimum fraction of map data in a tile")
    parser.add_argument("--batch", type=int, default=32, help="tiles per inference batch")
    parser.add_argument("--backend", default="auto", help="auto, onnxruntime or tensorrt")
    parser.add_argument("--providers", default=None,
                        help="onnxruntime execution providers to force, e.g. cpu or cuda,cpu")
    parser.add_argument("--shard", default="0/1", help="K/N: embed only part K of N of the grid")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_index(parser)
    sub = parser.add_subparsers(dest="tiles_cmd", metavar="{merge}")
    m = sub.add_parser("merge", help="join shards 0/N..N-1/N into one tile set",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m.add_argument("parts", nargs="+", help="the shard files")
    m.add_argument("--out", required=True, help="merged tile set to write")
    _add_index(m)


def _parse_scales(text: str) -> list[float]:
    try:
        scales = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SkylocError(f"--scales {text!r}: expected comma-separated numbers, e.g. 1.0,1.5") from None
    if not scales or min(scales) <= 0:
        raise SkylocError(f"--scales {text!r}: need at least one positive multiplier")
    return scales


def _build_index(out: Path, kind: str) -> None:
    if kind == "none":
        return
    from skyloc.runtime.matcher import FaissMatcher
    from skyloc.runtime.tileset import TileSet

    m = FaissMatcher(TileSet.load(out), kind)
    print(f"faiss {kind} index: {m.index_path} ({'reused' if m.reused else 'built'})", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    from skyloc.runtime.tileset import TileSet, build_tileset, merge_tilesets

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.tiles_cmd == "merge":
        out = merge_tilesets(args.parts, args.out)
    else:
        missing = [f"--{n}" for n in ("model", "map", "out") if not getattr(args, n)]
        if missing:
            raise SkylocError(f"missing {', '.join(missing)} (or use `skyloc tiles merge PARTS... --out OUT`)")
        conf = {"providers": args.providers} if args.providers else None
        out = build_tileset(
            args.model, args.map, args.out, tile_m=args.tile_m, stride_m=args.stride_m,
            scales=_parse_scales(args.scales), batch=args.batch, backend=args.backend,
            shard=args.shard, progress=not args.no_progress, min_valid=args.min_valid, conf=conf,
        )
    ts = TileSet.load(out)
    m = ts.meta
    print(f"wrote {out}: {len(ts)} tiles, {ts.dim}-d, model {ts.model_id[:12]} ({ts.variant}, "
          f"{m.get('precision')}), shard {m.get('shard')}, via {m.get('backend', 'merge')}", file=sys.stderr)
    _build_index(out, args.index)
    return 0
