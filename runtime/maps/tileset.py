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
before anything is written (runtime/maps/tileset_checks.py); a non-finite embedding stops the build
and is never written, nor loaded; the scratch file (`.<out>.tmp<pid>-<token>.npy`, allocated up
front so a full disk is an error, not a SIGBUS) is removed on errors, SIGTERM and SIGHUP, and
left-overs of killed builds are removed at the next start; the tile set replaces `out` atomically.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skyloc.core.atomic import atomic_open
from skyloc.core.errors import SkylocError
from skyloc.core.npz_store import read_npz_store
from skyloc.core.sidecar import EngineSidecar, ModelSidecar

FORMAT = "skyloc-tiles/1"
ARRAYS = {"embeddings": "<f4", "centers": "<f8", "footprints": "<f8", "scale": "<f4"}
# a tile set's geometry by default, metres: `skyloc tiles`, build_tileset and the tile side the
# localizer takes for a tile set that does not record its own (one default per value)
TILE_M, STRIDE_M = 150.0, 30.0
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
        arrays, meta = read_npz_store(path, ARRAYS, FORMAT, "tile set",
                                      "rebuild it with `skyloc tiles` or copy it again")
        ts = cls(**arrays, meta=meta, path=path)
        ts._validate_shapes(str(path))
        actual = tileset_checksum(ts)
        if actual != meta.get("checksum"):
            raise SkylocError(f"tile set {path} is truncated or damaged: checksum {actual[:12]}… does not match the recorded "
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



