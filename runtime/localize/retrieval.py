"""Nearest tiles for a query embedding: exact (numpy) or faiss (flat / HNSW / IVF-PQ).

Scores are inner products of L2-normalised vectors (cosine similarity). Every matcher returns
(scores (B, k) float32, indices (B, k) int64), best first; when fewer than k tiles qualify the
rest are index -1 with score -inf.

A SearchWindow keeps only tiles whose centre lies within radius_m of a point (the last
accepted fix). Tile centres are precomputed as Earth-centred XYZ on the sphere of
geo.EARTH_RADIUS_M, minus their mean and stored as float32: the straight-line (chord) distance
there is a monotonic function of the great-circle distance, so the mask is exact with respect
to haversine at any map size, and costs three subtractions per tile. A window usually holds a
few thousand tiles, so windowed search scores only those (exactly) — for faiss matchers too.
"""
from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from skyloc.core import geo
from skyloc.core.errors import SkylocError
from skyloc.runtime.maps.tileset import TileSet

log = logging.getLogger(__name__)

EXACT_MAX_TILES = 100_000  # `auto` uses the exact matcher up to this many tiles
SPOT_CHECKS = 8  # stored vectors re-searched against exact search when a saved index is loaded
KINDS = ("exact", "flat", "hnsw", "ivfpq")


@dataclass(frozen=True)
class SearchWindow:
    lat: float
    lon: float
    radius_m: float


def _xyz(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    la, lo = np.radians(np.asarray(lat, np.float64)), np.radians(np.asarray(lon, np.float64))
    r = geo.EARTH_RADIUS_M
    return np.stack([r * np.cos(la) * np.cos(lo), r * np.cos(la) * np.sin(lo), r * np.sin(la)], axis=-1)


def topk(scores: np.ndarray, k: int, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k of a (B, M) score matrix, best first; `ids` maps columns to tile indices."""
    b, m = scores.shape
    out_s = np.full((b, k), -np.inf, np.float32)
    out_i = np.full((b, k), -1, np.int64)
    kk = min(k, m)
    if kk == 0:
        return out_s, out_i
    if kk < m:
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    else:
        part = np.broadcast_to(np.arange(m), (b, m))
    part_s = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_s, axis=1, kind="stable")
    cols = np.take_along_axis(part, order, axis=1)
    out_s[:, :kk] = np.take_along_axis(part_s, order, axis=1)
    out_i[:, :kk] = cols if ids is None else ids[cols]
    return out_s, out_i


class Matcher(ABC):
    kind: str = "?"

    def __init__(self, tileset: TileSet) -> None:
        self.tileset = tileset
        self.emb = np.ascontiguousarray(tileset.embeddings, dtype=np.float32)
        xyz = _xyz(tileset.centers[:, 0], tileset.centers[:, 1]) if len(tileset) else np.zeros((0, 3))
        self._origin = xyz.mean(axis=0) if len(xyz) else np.zeros(3)
        self._xyz = (xyz - self._origin).astype(np.float32)

    def __len__(self) -> int:
        return len(self.tileset)

    def window_ids(self, window: SearchWindow) -> np.ndarray:
        """Indices (ascending) of tiles whose centre is within window.radius_m (great-circle)."""
        q = (_xyz(window.lat, window.lon) - self._origin).astype(np.float32)
        r = geo.EARTH_RADIUS_M
        chord = 2 * r * math.sin(min(window.radius_m, math.pi * r) / (2 * r))
        d = self._xyz - q
        d2 = np.einsum("ij,ij->i", d, d)
        return np.nonzero(d2 <= np.float32(chord * chord))[0]

    def _queries(self, queries: np.ndarray) -> np.ndarray:
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.tileset.dim:
            raise SkylocError(f"query embeddings of shape {q.shape} do not match the tile set's "
                              f"{self.tileset.dim}-d embeddings (different model?)")
        n = np.linalg.norm(q, axis=1, keepdims=True)
        return np.ascontiguousarray(q / np.maximum(n, 1e-12))

    def _exact(self, q: np.ndarray, k: int, ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if ids is None:
            return topk(q @ self.emb.T, k)
        return topk(q @ self.emb[ids].T, k, ids)

    @abstractmethod
    def search(self, queries: np.ndarray, k: int, window: SearchWindow | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """(scores (B, k) float32, indices (B, k) int64), best first; -1 / -inf where missing."""

    @property
    def description(self) -> str:
        return f"{self.kind} over {len(self)} tiles"


class ExactMatcher(Matcher):
    """Brute force: one float32 matrix product (BLAS) and a partial sort."""

    kind = "exact"

    def search(self, queries: np.ndarray, k: int, window: SearchWindow | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        q = self._queries(queries)
        return self._exact(q, int(k), None if window is None else self.window_ids(window))


DEFAULTS: dict[str, dict[str, Any]] = {
    "flat": {},
    "hnsw": {"M": 32, "ef_construction": 200, "ef_search": 128},
    "ivfpq": {},  # filled from the tile set's size
}



