"""The searchers `bench search` compares: the runtime's own matchers, so the numbers are those of
what `skyloc run --index ...` / `skyloc tiles --index ...` will do.

runtime.matcher.ExactMatcher (numpy matmul + partial sort) and FaissMatcher flat / HNSW / IVF-PQ
(inner product on unit vectors, IVF-PQ re-ranking its candidates with the stored embeddings),
with the runtime's default parameters unless overridden.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from skyloc.runtime.localize.retrieval import KINDS, ExactMatcher, Matcher
from skyloc.runtime.localize.retrieval_faiss import FaissMatcher
from skyloc.runtime.maps.tileset import TileSet

__all__ = ["KINDS", "Searcher", "build_searcher", "estimate_index_bytes"]


def estimate_index_bytes(kind: str, n: int, d: int, params: dict[str, Any] | None = None) -> int:
    """Memory a matcher adds on top of the float32 embeddings (to skip over-budget combinations)."""
    p = params or {}
    if kind == "exact":
        return n * 4 * 3  # one query's scores + partial-sort scratch
    if kind == "flat":
        return n * d * 4
    if kind == "hnsw":
        return n * d * 4 + n * int(p.get("M", 32)) * 2 * 4 * 2  # vectors + level-0 (2M) and upper links
    if kind == "ivfpq":
        m = int(p.get("m", 64))
        nlist = int(p.get("nlist", 4 * n ** 0.5))
        train = min(n, int(p.get("train_size", 100_000)))
        return n * (m + 8) + nlist * d * 4 + train * d * 4
    raise ValueError(kind)


def tileset_in_memory(embeddings: np.ndarray) -> TileSet:
    """A TileSet around bare embeddings: positions are irrelevant to an unwindowed search
    (zeros, lazily allocated, cost no resident memory)."""
    n = len(embeddings)
    return TileSet(
        embeddings=embeddings,
        centers=np.zeros((n, 2), np.float64),
        footprints=np.zeros((n, 4, 2), np.float64),
        scale=np.ones(n, np.float32),
        meta={"format": "skyloc-tiles/1", "count": n, "embedding_dim": int(embeddings.shape[1]),
              "checksum": f"bench-{n}x{embeddings.shape[1]}", "model_id": "benchmark", "variant": "bench"},
    )


class Searcher:
    """A built matcher plus what the benchmark reports about it."""

    def __init__(self, matcher: Matcher):
        self.matcher = matcher
        self.kind = matcher.kind

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.matcher.search(queries, k)

    def index_bytes(self, tmp_dir: Path) -> int:
        """Bytes of the faiss index (its serialised size); 0 for exact search."""
        index = getattr(self.matcher, "index", None)
        if index is None:
            return 0
        import faiss

        path = tmp_dir / f"{self.kind}.index"
        faiss.write_index(index, str(path))
        try:
            return path.stat().st_size
        finally:
            os.unlink(path)

    def describe(self) -> str:
        params = getattr(self.matcher, "params", None)
        if not params:
            return "numpy matmul + argpartition" if self.kind == "exact" else "faiss IndexFlatIP"
        return " ".join(f"{k}={v}" for k, v in sorted(params.items()))


def build_searcher(kind: str, db: np.ndarray, params: dict[str, Any] | None = None) -> Searcher:
    """Build the runtime matcher of `kind` over unit rows `db` (the caller times this)."""
    ts = tileset_in_memory(db)
    if kind == "exact":
        return Searcher(ExactMatcher(ts))
    return Searcher(FaissMatcher(ts, kind, params or None, save=False))
