"""Checks `build_tileset` / `merge_tilesets` run before they embed or write anything: settings
finite and in range, a grid size that fits the disk, and an output that is not one of the inputs
and does not replace an existing file unless asked to."""
from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Sequence

from skyloc.core import geo
from skyloc.core.errors import SkylocError

log = logging.getLogger(__name__)

MAX_TILE_M = 100_000.0  # 100 km: larger squares are a unit mistake
MAX_SCALE = 100.0
MAX_GRID_TILES = 50_000_000  # a grid beyond this is a typo (--stride-m 0.001), not a map
ROW_BYTES_EXTRA = 16 + 64 + 4  # centers + footprints + scale per tile, beside its embedding
DISK_MARGIN = 1.1  # free space wanted over the estimate (zip headers, metadata, other writers)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_settings(tile_m: Any, stride_m: Any, scales: Sequence[Any], batch: Any, min_valid: Any) -> list[float]:
    """Refuse NaN / Inf / out-of-range tile settings (NaN passes every `x <= 0` check). Returns scales."""
    for flag, v in (("--tile-m", tile_m), ("--stride-m", stride_m)):
        if not _number(v) or not 0 < v <= MAX_TILE_M:
            raise SkylocError(f"tiles: {flag} {v!r} must be a finite number of metres in (0, {MAX_TILE_M:g}]")
    try:
        scales = [float(s) for s in scales]
    except (TypeError, ValueError):
        raise SkylocError(f"tiles: --scales {scales!r} must be numbers, e.g. 1.0,1.5") from None
    if not scales or not all(math.isfinite(s) and 0 < s <= MAX_SCALE for s in scales):
        raise SkylocError(f"tiles: --scales {scales} must be one or more finite multipliers in (0, {MAX_SCALE:g}]")
    if not _number(min_valid) or not 0 <= min_valid <= 1:
        raise SkylocError(f"tiles: --min-valid {min_valid!r} must be a fraction in [0, 1]")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise SkylocError(f"tiles: --batch {batch!r} must be an integer >= 1")
    return scales


def estimate_grid(gmap: Any, tile_m: float, stride_m: float, scales: Sequence[float]) -> float:
    """Upper bound on the grid's tile count from the map bounds (before the valid-area filter),
    computed in floating point so an absurd stride cannot allocate anything."""
    lat_min, lon_min, lat_max, lon_max = gmap.bounds_latlon()
    lat0, lon0 = 0.5 * (lat_min + lat_max), 0.5 * (lon_min + lon_max)
    west, north = geo.latlon_to_local_m(lat_max, lon_min, lat0, lon0)
    east, south = geo.latlon_to_local_m(lat_min, lon_max, lat0, lon0)
    w, h = float(east - west), float(north - south)
    total = 0.0
    for s in scales:
        t = tile_m * s
        eps = 1e-6 * t  # as GeoMap.grid: squares flush with the map edge count as inside
        if w + eps >= t and h + eps >= t:
            total += (math.floor((w - t + eps) / stride_m) + 1.0) * (math.floor((h - t + eps) / stride_m) + 1.0)
    return total


def gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB" if n < 2**40 else f"{n / 2**40:.3g} TiB"


def check_size(gmap: Any, tile_m: float, stride_m: float, scales: Sequence[float], dim: int,
               shards: int, out: Path) -> None:
    """Refuse a grid beyond MAX_GRID_TILES, or one whose shard would not fit the free disk space
    (the embeddings exist twice while writing: the scratch file and the tile set)."""
    n = estimate_grid(gmap, tile_m, stride_m, scales)
    need = n / shards * (2 * 4 * dim + ROW_BYTES_EXTRA)
    if n > MAX_GRID_TILES:
        raise SkylocError(f"tiles: --tile-m {tile_m:g} --stride-m {stride_m:g} over map {gmap.source} makes about "
                          f"{n:.3g} tiles (~{gib(need)}), more than the {MAX_GRID_TILES:,} allowed: use a larger "
                          f"--stride-m (typically tile_m / 5) or cut the map into parts")
    folder = out.parent if out.parent.exists() else Path(".")
    free = shutil.disk_usage(folder).free
    if need * DISK_MARGIN > free:
        raise SkylocError(f"tiles: the tile set needs about {gib(need)} while writing but {folder.resolve()} has "
                          f"{gib(free)} free: free space, write --out elsewhere, use a larger --stride-m or --shard K/N")


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_out(out: Path, inputs: Iterable[tuple[str, Path]], overwrite: bool) -> None:
    """`out` must not be an input (model, sidecar, map file, shard) nor an existing file unless
    `overwrite`. Even with it, the old file is replaced only once the new one is complete."""
    for what, p in inputs:
        if p is not None and _same(out, Path(p)):
            raise SkylocError(f"--out {out} is the {what}: writing there would destroy an input; choose another --out")
    if out.is_dir():
        raise SkylocError(f"--out {out} is a folder; give the tile set's file name, e.g. {out / 'tiles.npz'}")
    if out.exists() and not overwrite:
        raise SkylocError(f"--out {out} exists; pass --overwrite to replace it (it is replaced only when the "
                          f"new tile set is complete) or choose another --out")


def map_inputs(gmap: Any) -> list[tuple[str, Path]]:
    """The files a map is read from (GeoTIFF, corners CSV, tile images)."""
    files: list[tuple[str, Path]] = []
    src = getattr(gmap, "source", "")
    if src and not src.startswith("<"):
        files.append(("map", Path(src)))
    for t in getattr(gmap, "tiles", []) or []:
        if getattr(t, "path", None) is not None:
            files.append(("map tile image", Path(t.path)))
    return files


def report_missing(gmap: Any) -> None:
    """Say how much of the map's area has no image (tiles listed in its CSV but absent)."""
    missing = list(getattr(gmap, "missing", []) or [])
    if missing:
        share = float(getattr(gmap, "missing_share", float("nan")))
        log.warning("map %s: %d tile image(s) missing (%s), %.1f%% of its area: no tiles are cut there",
                    gmap.source, len(missing), ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""),
                    100 * share)
