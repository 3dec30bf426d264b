"""Building tile sets (embed a map's tile grid, sharded) and merging shards into one."""
from __future__ import annotations

import errno
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from skyloc.core import geo
from skyloc.core.atomic import (
    clean_stale_scratch,
    exit_on_signals,
    no_space_error,
    scratch_path,
)
from skyloc.core.errors import SkylocError
from skyloc.core.sidecar import model_sidecar_path
from skyloc.runtime.maps.tileset import (
    ARRAYS,
    FORMAT,
    STRIDE_M,
    TILE_M,
    TileSet,
    first_non_finite,
    save_tileset,
)


def footprints_for(centers: np.ndarray, side_m: np.ndarray) -> np.ndarray:
    """(N, 4, 2) lat/lon corners TL, TR, BR, BL of north-up squares of the given sides."""
    lat, lon = centers[:, 0], centers[:, 1]
    h = np.asarray(side_m, dtype=np.float64) / 2
    out = np.empty((len(centers), 4, 2))
    for j, (se, sn) in enumerate(((-1, 1), (1, 1), (1, -1), (-1, -1))):
        la, lo = geo.offset_latlon(lat, lon, se * h, sn * h)
        out[:, j, 0], out[:, j, 1] = la, lo
    return out


def parse_shard(spec: str | Sequence[int]) -> tuple[int, int]:
    """"K/N" or (k, n) -> (k, n) with 0 <= k < n."""
    try:
        k, n = (int(x) for x in (spec.split("/") if isinstance(spec, str) else spec))
    except (ValueError, TypeError):
        raise SkylocError(f"shard {spec!r}: expected K/N, e.g. 0/4 (part K of N, counting from 0)") from None
    if n < 1 or not 0 <= k < n:
        raise SkylocError(f"shard {spec!r}: need 0 <= K < N")
    return k, n


def shard_range(total: int, k: int, n: int) -> tuple[int, int]:
    """Contiguous slice of the grid for shard k of n (contiguous keeps map reads local)."""
    return k * total // n, (k + 1) * total // n


def tile_grid(gmap: Any, tile_m: float, stride_m: float, scales: Sequence[float], min_valid: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """All tile centres over every scale (scale-major, each in GeoMap.grid order) and their scales."""
    centers, scale = [], []
    for s in scales:
        c = np.asarray(gmap.grid(tile_m * s, stride_m, min_valid), dtype=np.float64).reshape(-1, 2)
        centers.append(c)
        scale.append(np.full(len(c), s, np.float32))
    return np.concatenate(centers), np.concatenate(scale)


def _crops(gmap: Any, centers: np.ndarray, sides: np.ndarray, px: int, batch: int) -> Iterator[list[np.ndarray]]:
    for i in range(0, len(centers), batch):
        yield [gmap.read_crop(float(la), float(lo), float(s), px)[0]
               for (la, lo), s in zip(centers[i:i + batch], sides[i:i + batch])]


def _scratch_memmap(path: Path, shape: tuple[int, int], out: Path) -> np.ndarray:
    """A memory-mapped scratch array whose blocks are allocated up front: on a full disk this fails
    here with a clear error instead of a SIGBUS when a page of the sparse file is first written."""
    try:
        emb = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
        if hasattr(os, "posix_fallocate"):
            with open(path, "r+b") as f:
                try:
                    os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise  # a filesystem without fallocate keeps the sparse file
        return emb
    except OSError as exc:
        path.unlink(missing_ok=True)
        err = no_space_error(out, exc)
        if err is None:
            raise SkylocError(f"cannot create the scratch file {path} for {out} ({exc}); check the folder") from None
        raise err from None


def build_tileset(
    model: Any, map_path: Any, out: str | os.PathLike, tile_m: float = TILE_M, stride_m: float = STRIDE_M,
    scales: Sequence[float] = (1.0,), batch: int = 32, backend: str = "auto",
    shard: tuple[int, int] | str = (0, 1), progress: bool = True, min_valid: float = 1.0,
    conf: dict[str, Any] | None = None, overwrite: bool = True, imagery: dict[str, Any] | None = None,
    map_features: dict[str, Any] | None = None,
) -> Path:
    """Embed the map's valid area into a tile set at `out`. `model`: a path or an open Backend;
    `map_path`: anything runtime.maps.open_map takes, or an open GeoMap. Everything is checked
    before anything is written; `overwrite=False` refuses an existing `out` (the CLI's default)."""
    from skyloc.core.preprocess import to_model_input
    from skyloc.runtime.backends import Backend, open_backend
    from skyloc.runtime.maps import tileset_checks as chk
    from skyloc.runtime.maps.base import GeoMap
    from skyloc.runtime.maps.open import open_map

    scales = chk.check_settings(tile_m, stride_m, scales, batch, min_valid)
    k, n = parse_shard(shard)
    out = Path(out)
    given = [("model", model), ("map", map_path)]
    given = [(w, Path(p)) for w, p in given if isinstance(p, (str, os.PathLike))]
    chk.check_out(out, given + [("model's sidecar", model_sidecar_path(p)) for w, p in given if w == "model"],
                  overwrite)
    be = model if isinstance(model, Backend) else open_backend(model, backend, conf)
    gmap = map_path if isinstance(map_path, GeoMap) else open_map(map_path)
    model_file = getattr(be, "model_path", None)
    chk.check_out(out, chk.map_inputs(gmap) + ([("model", Path(model_file))] if model_file else []), overwrite)
    chk.check_size(gmap, tile_m, stride_m, scales, int(be.sidecar.embedding_dim), n, out)
    chk.report_missing(gmap)
    centers, scale = tile_grid(gmap, tile_m, stride_m, scales, min_valid)
    total = len(centers)
    if total == 0:
        raise SkylocError(f"map {gmap.source}: no {tile_m} m tile fits its valid area "
                          f"(min_valid {min_valid}); use a smaller --tile-m or a lower --min-valid")
    start, stop = shard_range(total, k, n)
    centers, scale = centers[start:stop], scale[start:stop]
    sides = tile_m * scale.astype(np.float64)
    c = be.contract
    px = max(int(c.height), int(c.width))
    dim = int(be.sidecar.embedding_dim)

    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_scratch(out.parent)  # left by killed writers (their process is gone)
    scratch = scratch_path(out, ".npy")
    guard = exit_on_signals()  # SIGTERM / SIGHUP run the `finally` below: no scratch file is left
    guard.__enter__()
    emb = np.zeros((0, dim), np.float32)  # an empty shard of a small grid: nothing to map
    try:
        if len(centers):
            emb = _scratch_memmap(scratch, (len(centers), dim), out)
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(centers), unit="tile", desc=f"tiles {out.name}" + (f" [{k}/{n}]" if n > 1 else ""))
        # Read the next batch of crops while the current one is being embedded.
        with ThreadPoolExecutor(max_workers=1) as pool:
            it = _crops(gmap, centers, sides, px, batch)
            pending = pool.submit(next, it, None)
            i = 0
            while (images := pending.result()) is not None:
                pending = pool.submit(next, it, None)
                vec = be.embed(to_model_input(images, c, bgr=False))
                if (bad := first_non_finite(np.asarray(vec))) is not None:
                    la, lo = centers[i + bad]
                    raise SkylocError(f"model {getattr(be, 'model_path', be.description)} gave a non-finite "
                                      f"embedding for tile {start + i + bad} at {la:.6f}, {lo:.6f}: its weights or "
                                      f"input are broken (NaN/Inf); nothing was written; re-export the model")
                emb[i:i + len(images)] = vec
                i += len(images)
                if bar is not None:
                    bar.update(len(images))
        if bar is not None:
            bar.close()
        if isinstance(emb, np.memmap):
            emb.flush()
        meta = {
            "format": FORMAT, "model_id": be.sidecar.model_id, "variant": be.sidecar.variant,
            "precision": be.precision, "embedding_dim": dim, "tile_m": float(tile_m),
            "stride_m": float(stride_m), "scales": scales, "min_valid": float(min_valid),
            "map": gmap.describe(), "shard": f"{k}/{n}", "shard_range": [start, stop],
            "grid_count": total, "input_px": [int(c.height), int(c.width)],
            "backend": be.description, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if imagery:  # runtime.imagery.imagery_record: the map pixels registration reads, with sha256
            meta["imagery"] = imagery
        if map_features:  # runtime.maps.map_features: the learned registrar's stored map keypoints
            meta["map_features"] = map_features
        ts = TileSet(emb, centers, footprints_for(centers, sides), scale, meta)
        return save_tileset(ts, out)
    finally:
        del emb
        scratch.unlink(missing_ok=True)
        guard.__exit__(None, None, None)


# Metadata every part of one tile set shares (checked by merge).
_SAME = ("model_id", "variant", "embedding_dim", "tile_m", "stride_m", "scales", "min_valid", "grid_count")


def _map_identity(meta: dict[str, Any]) -> dict[str, Any]:
    # The same map may be mounted at different paths on different machines.
    return {k: v for k, v in (meta.get("map") or {}).items() if k != "source"}


def merge_tilesets(paths: Sequence[str | os.PathLike], out: str | os.PathLike, overwrite: bool = True) -> Path:
    """Join the shards 0/N .. N-1/N of one tile set (any order) into one file."""
    from skyloc.runtime.maps.tileset_checks import check_out

    if not paths:
        raise SkylocError("tiles merge: no parts given")
    check_out(Path(out), [("part", Path(p)) for p in paths], overwrite)
    parts = [TileSet.load(p) for p in paths]
    ref = parts[0]
    by_k: dict[int, TileSet] = {}
    ns = set()
    for p in parts:
        for key in _SAME:
            if p.meta.get(key) != ref.meta.get(key):
                raise SkylocError(f"tiles merge: {p.path} has {key}={p.meta.get(key)!r} but {ref.path} has "
                                  f"{ref.meta.get(key)!r}: parts must come from one model, map and tile settings")
        if _map_identity(p.meta) != _map_identity(ref.meta):
            raise SkylocError(f"tiles merge: {p.path} and {ref.path} were cut from different maps")
        k, n = parse_shard(str(p.meta.get("shard", "0/1")))
        ns.add(n)
        if k in by_k:
            raise SkylocError(f"tiles merge: shard {k}/{n} given twice ({by_k[k].path} and {p.path})")
        by_k[k] = p
    if len(ns) != 1:
        raise SkylocError(f"tiles merge: parts disagree on the number of shards {sorted(ns)}")
    n = ns.pop()
    missing = sorted(set(range(n)) - set(by_k))
    if missing:
        raise SkylocError(f"tiles merge: missing shard(s) {', '.join(f'{m}/{n}' for m in missing)}; "
                          f"build them with `skyloc tiles ... --shard K/{n}`")
    ordered = [by_k[k] for k in range(n)]
    pos = 0
    grid = ref.meta.get("grid_count")
    for k, p in enumerate(ordered):
        lo, hi = p.meta.get("shard_range", [pos, pos + len(p)])
        want = shard_range(grid, k, n) if isinstance(grid, int) else (lo, hi)
        if lo != pos or hi - lo != len(p) or (lo, hi) != tuple(want):
            raise SkylocError(f"tiles merge: {p.path} (shard {k}/{n}) covers grid rows {lo}..{hi} with {len(p)} "
                              f"tiles but rows {want[0]}..{want[1]} were expected: the parts do not add up; "
                              f"rebuild that shard")
        pos = hi
    if pos != ref.meta.get("grid_count", pos):
        raise SkylocError(f"tiles merge: parts cover {pos} tiles of a {ref.meta.get('grid_count')}-tile grid")
    precisions = sorted({str(p.meta.get("precision")) for p in ordered})
    meta = dict(ref.meta)
    meta.update(shard="0/1", shard_range=[0, pos], precision=precisions[0] if len(precisions) == 1
                else "mixed:" + ",".join(precisions), merged_from=[Path(p.path).name for p in ordered],
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    meta.pop("checksum", None)
    ts = TileSet(*(np.concatenate([getattr(p, a) for p in ordered]) for a in ARRAYS), meta=meta)
    return save_tileset(ts, out)
