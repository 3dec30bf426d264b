"""Tile sets: a map cut into north-up squares, each embedded by one model.

File format (`skyloc-tiles/1`): an uncompressed `.npz` holding `embeddings` (N, D) float32,
`centers` (N, 2) float64 lat/lon, `footprints` (N, 4, 2) float64 lat/lon corners TL, TR, BR, BL,
`scale` (N,) float32 (tile side = tile_m * scale) and `meta`, a JSON string in a 0-d unicode
array. Nothing in it needs pickle, and it is loaded with allow_pickle=False. `meta["checksum"]`
is a sha256 over every array (name, dtype, shape, bytes) and the rest of the metadata, so a
truncated, tampered or hand-edited file is refused rather than silently searched.

Building streams: tile centres come from `GeoMap.grid`, each batch of crops is read from the map,
embedded and written to a memory-mapped scratch file, so memory is bounded by the batch (the map
is never loaded whole). `shard=(k, n)` embeds the k-th of n contiguous slices of the grid; the
parts are joined by `merge_tilesets`, which checks they belong together and add up.

Integrity: settings, output path and the grid's size (against the free disk space) are checked
before anything is written (runtime/tileset_checks.py); a non-finite embedding stops the build
and is never written, nor loaded; the scratch file (`.<out>.tmp<pid>-<token>.npy`, allocated up
front so a full disk is an error, not a SIGBUS) is removed on errors, SIGTERM and SIGHUP, and
left-overs of killed builds are removed at the next start; the tile set replaces `out` atomically.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from skyloc.runtime import geo
from skyloc.runtime.atomic import atomic_open, clean_stale_scratch, exit_on_signals, no_space_error, scratch_path
from skyloc.runtime.errors import SkylocError
from skyloc.runtime.sidecar import EngineSidecar, ModelSidecar, model_sidecar_path

FORMAT = "skyloc-tiles/1"
ARRAYS = {"embeddings": "<f4", "centers": "<f8", "footprints": "<f8", "scale": "<f4"}
_HASH_BLOCK = 1 << 22  # bytes hashed per step, so a memory-mapped array is never copied whole


def _rebuild_hint(meta: dict[str, Any], path: Any) -> str:
    src = (meta.get("map") or {}).get("source", "MAP")
    return f"rebuild with `skyloc tiles --model MODEL --map {src} --out {path}`"


@dataclass(eq=False)
class TileSet:
    embeddings: np.ndarray
    centers: np.ndarray
    footprints: np.ndarray
    scale: np.ndarray
    meta: dict[str, Any]
    path: Path | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def model_id(self) -> str:
        return str(self.meta.get("model_id", ""))

    @property
    def variant(self) -> str:
        return str(self.meta.get("variant", ""))

    @property
    def checksum(self) -> str:
        return str(self.meta.get("checksum", ""))

    def check_model(self, model: ModelSidecar | EngineSidecar) -> None:
        """Refuse a tile set made by another model (or another variant of it)."""
        sc = getattr(model, "sidecar", model)  # an open Backend works too
        sc = sc.model if isinstance(sc, EngineSidecar) else sc
        if sc.model_id != self.model_id or sc.variant != self.variant:
            raise SkylocError(
                f"tile set {self.path or '<memory>'} was made by model {self.model_id[:16]} "
                f"({self.variant}) but the model is {sc.model_id[:16]} ({sc.variant}); embeddings of "
                f"different models cannot be compared: {_rebuild_hint(self.meta, self.path or 'TILES.npz')}"
            )
        if sc.embedding_dim != self.dim:
            raise SkylocError(f"tile set {self.path} has {self.dim}-d embeddings, the model {sc.embedding_dim}-d: "
                              f"{_rebuild_hint(self.meta, self.path)}")

    @classmethod
    def load(cls, path: str | os.PathLike, expect_model: ModelSidecar | EngineSidecar | None = None) -> "TileSet":
        path = Path(path)
        if not path.is_file():
            raise SkylocError(f"tile set {path} not found: build it with `skyloc tiles --model MODEL --map MAP --out {path}`")
        bad = f"tile set {path} is truncated or damaged"
        try:
            with np.load(path, allow_pickle=False) as z:
                names = set(z.files)
                if names != set(ARRAYS) | {"meta"}:
                    raise SkylocError(f"{path} is not a skyloc tile set (holds {sorted(names)}): "
                                      f"build one with `skyloc tiles`")
                arrays = {k: z[k] for k in ARRAYS}
                meta = json.loads(str(z["meta"][()]))
        except SkylocError:
            raise
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, json.JSONDecodeError, TypeError) as exc:
            raise SkylocError(f"{bad} ({type(exc).__name__}: {exc}); rebuild or copy it again") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise SkylocError(f"{path} has format {meta.get('format') if isinstance(meta, dict) else '?'!r}, "
                              f"expected {FORMAT!r}: {_rebuild_hint({}, path)}")
        ts = cls(**arrays, meta=meta, path=path)
        ts._validate_shapes(str(path))
        actual = tileset_checksum(ts)
        if actual != meta.get("checksum"):
            raise SkylocError(f"{bad}: checksum {actual[:12]}… does not match the recorded "
                              f"{str(meta.get('checksum'))[:12]}… (modified after it was written); "
                              f"{_rebuild_hint(meta, path)}")
        ts._validate_values(str(path))
        if expect_model is not None:
            ts.check_model(expect_model)
        return ts

    def _validate_values(self, where: str) -> None:
        """Written before NaN checks existed, or by another tool: refuse non-finite content."""
        for name in ARRAYS:
            if (row := first_non_finite(getattr(self, name))) is not None:
                raise SkylocError(f"tile set {where}: {name} row {row} is not finite (NaN/Inf); such a tile "
                                  f"matches nothing or everything: {_rebuild_hint(self.meta, where)}")
        for key in ("tile_m", "stride_m"):
            v = self.meta.get(key)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise SkylocError(f"tile set {where}: meta {key}={v!r} is not a positive finite number: "
                                  f"{_rebuild_hint(self.meta, where)}")

    def _validate_shapes(self, where: str) -> None:
        n = self.embeddings.shape[0] if self.embeddings.ndim == 2 else -1
        problems = []
        for k, dt in ARRAYS.items():
            if getattr(self, k).dtype != np.dtype(dt):
                problems.append(f"{k} dtype {getattr(self, k).dtype} != {dt}")
        if n < 0:
            problems.append(f"embeddings shape {self.embeddings.shape}")
        if self.centers.shape != (n, 2):
            problems.append(f"centers shape {self.centers.shape}")
        if self.footprints.shape != (n, 4, 2):
            problems.append(f"footprints shape {self.footprints.shape}")
        if self.scale.shape != (n,):
            problems.append(f"scale shape {self.scale.shape}")
        if self.meta.get("count", n) != n:
            problems.append(f"meta count {self.meta.get('count')} != {n} rows")
        if problems:
            raise SkylocError(f"tile set {where} is inconsistent ({'; '.join(problems)}): {_rebuild_hint(self.meta, where)}")


def tileset_checksum(ts: TileSet) -> str:
    """sha256 over the arrays (name, dtype, shape, bytes) and the metadata except the checksum."""
    h = hashlib.sha256()
    for name, dt in ARRAYS.items():
        a = getattr(ts, name)
        h.update(f"{name}|{np.dtype(dt).str}|{tuple(a.shape)}|".encode())
        rows = max(1, _HASH_BLOCK // max(1, a[:1].nbytes))
        for i in range(0, a.shape[0], rows):
            h.update(np.ascontiguousarray(a[i:i + rows], dtype=dt).data)
    meta = {k: v for k, v in ts.meta.items() if k != "checksum"}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return h.hexdigest()


def first_non_finite(a: np.ndarray) -> int | None:
    """Index of the first row of `a` holding NaN / Inf (block by block: `a` may be memory-mapped)."""
    if a.dtype.kind != "f" or a.size == 0:
        return None
    rows = max(1, _HASH_BLOCK // max(1, a[:1].nbytes))
    for i in range(0, a.shape[0], rows):
        ok = np.isfinite(a[i:i + rows]).reshape(len(a[i:i + rows]), -1).all(axis=1)
        if not ok.all():
            return i + int(np.argmin(ok))
    return None


def save_tileset(ts: TileSet, path: str | os.PathLike) -> Path:
    """Write atomically (temp file + rename); fills in count and checksum. Non-finite content is
    refused: it is never written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ts._validate_values(str(path))
    ts.meta["format"] = FORMAT
    ts.meta["count"] = len(ts)
    ts.meta["embedding_dim"] = ts.dim
    ts.meta["checksum"] = tileset_checksum(ts)
    meta = np.array(json.dumps(ts.meta, sort_keys=True, default=str))
    with atomic_open(path, "wb") as f:
        # np.savez writes each array in chunks when the target is a zip member, so a
        # memory-mapped embeddings array is streamed, not copied into memory.
        np.savez(f, meta=meta, **{k: getattr(ts, k) for k in ARRAYS})
    ts.path = path
    return path


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
    model: Any, map_path: Any, out: str | os.PathLike, tile_m: float = 150, stride_m: float = 30,
    scales: Sequence[float] = (1.0,), batch: int = 32, backend: str = "auto",
    shard: tuple[int, int] | str = (0, 1), progress: bool = True, min_valid: float = 1.0,
    conf: dict[str, Any] | None = None, overwrite: bool = True, imagery: dict[str, Any] | None = None,
) -> Path:
    """Embed the map's valid area into a tile set at `out`. `model`: a path or an open Backend;
    `map_path`: anything runtime.maps.open_map takes, or an open GeoMap. Everything is checked
    before anything is written; `overwrite=False` refuses an existing `out` (the CLI's default)."""
    from skyloc.runtime import tileset_checks as chk
    from skyloc.runtime.backends import Backend, open_backend
    from skyloc.runtime.maps import GeoMap, open_map
    from skyloc.runtime.preprocess import to_model_input

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
    from skyloc.runtime.tileset_checks import check_out

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
