"""faiss indexes for tile search (flat / HNSW / IVF-PQ), saved beside the tile set and checked on load, and `make_matcher`, which picks exact or faiss."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from skyloc.core.atomic import atomic_path, write_json_atomic
from skyloc.core.errors import SkylocError
from skyloc.core.sidecar import sha256_file
from skyloc.runtime.localize.retrieval import (
    DEFAULTS,
    EXACT_MAX_TILES,
    KINDS,
    SPOT_CHECKS,
    ExactMatcher,
    Matcher,
    SearchWindow,
    log,
    topk,
)
from skyloc.runtime.maps.tileset import TileSet


def index_paths(tileset_path: str | os.PathLike, kind: str) -> tuple[Path, Path]:
    """tiles.npz -> (tiles.faiss-<kind>.index, tiles.faiss-<kind>.json)."""
    p = Path(tileset_path)
    stem = p.name[:-4] if p.name.endswith(".npz") else p.name
    return p.with_name(f"{stem}.faiss-{kind}.index"), p.with_name(f"{stem}.faiss-{kind}.json")


def _ivfpq_defaults(n: int, d: int) -> dict[str, Any]:
    m_cap = min(64, max(1, d // 4))
    m = max(x for x in range(1, m_cap + 1) if d % x == 0)
    nbits = 8 if n >= 256 * 39 else int(np.clip(math.floor(math.log2(max(n, 2) / 39)), 4, 8))
    nlist = int(np.clip(round(4 * math.sqrt(n)), 1, max(1, n // 39)))
    return {"nlist": nlist, "m": m, "nbits": nbits, "nprobe": min(nlist, 16), "rerank": 4,
            "train_size": 100_000, "seed": 0}


class FaissMatcher(Matcher):
    """faiss index built once and saved beside the tile set; reused while the tile set's checksum
    (and the index settings) are unchanged, rebuilt otherwise."""

    def __init__(self, tileset: TileSet, kind: str = "flat", params: dict[str, Any] | None = None,
                 index_path: str | os.PathLike | None = None, save: bool = True,
                 exact_window_max: int = 200_000) -> None:
        super().__init__(tileset)
        try:
            import faiss
        except ImportError as exc:
            raise SkylocError(f"matcher {kind!r} needs faiss ({exc}): `pip install faiss-cpu`, "
                              f"or use the exact matcher") from None
        if kind not in DEFAULTS:
            raise SkylocError(f"unknown faiss index kind {kind!r}; choose flat, hnsw or ivfpq")
        self._faiss = faiss
        self.kind = kind
        base = _ivfpq_defaults(len(tileset), tileset.dim) if kind == "ivfpq" else dict(DEFAULTS[kind])
        unknown = set(params or {}) - set(base)
        if unknown:
            raise SkylocError(f"faiss {kind} does not take {sorted(unknown)}; it takes {sorted(base)}")
        self.params = {**base, **(params or {})}
        self.exact_window_max = int(exact_window_max)
        self.reused = False
        self.index_path: Path | None = None
        if index_path is not None:
            self.index_path = Path(index_path)
        elif save and tileset.path is not None:
            self.index_path = index_paths(tileset.path, kind)[0]
        self.index = self._load() if self.index_path is not None else None
        if self.index is None:
            self.index = self._build()
            if self.index_path is not None:
                self._save()
        self._tune()

    # The settings that shape the stored index; search-time knobs may change freely.
    def _record(self) -> dict[str, Any]:
        search_only = {"ef_search", "nprobe", "rerank"}
        return {"tileset_checksum": self.tileset.checksum, "kind": self.kind, "count": len(self),
                "dim": self.tileset.dim,
                "params": {k: v for k, v in sorted(self.params.items()) if k not in search_only}}

    def _json_path(self) -> Path:
        assert self.index_path is not None
        return self.index_path.with_suffix(".json")

    def _load(self) -> Any:
        jp = self._json_path()
        if not (self.index_path.is_file() and jp.is_file()):
            return None
        try:
            rec = json.loads(jp.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        want = self._record()
        if {k: rec.get(k) for k in want} != want:
            log.info("faiss index %s is stale (tile set or settings changed): rebuilding", self.index_path)
            return None
        recorded = rec.get("index_sha256")
        if not recorded:
            log.warning("faiss index %s has no recorded checksum (written by an older version): rebuilding",
                        self.index_path)
            return None
        actual = sha256_file(self.index_path)
        if actual != recorded:
            log.warning("faiss index %s does not match the checksum recorded in %s (sha256 %s... != %s...): "
                        "modified or damaged; rebuilding", self.index_path, jp.name, actual[:12], str(recorded)[:12])
            return None
        try:
            index = self._faiss.read_index(str(self.index_path))
        except RuntimeError as exc:
            log.warning("faiss index %s unreadable (%s): rebuilding", self.index_path, exc)
            return None
        if index.ntotal != len(self) or index.d != self.tileset.dim:
            log.warning("faiss index %s holds %d x %d vectors, the tile set %d x %d: rebuilding",
                        self.index_path, index.ntotal, index.d, len(self), self.tileset.dim)
            return None
        problem = self._spot_check(index)
        if problem:
            log.warning("faiss index %s fails the spot check against exact search (%s): rebuilding",
                        self.index_path, problem)
            return None
        self.reused = True
        return index

    def _spot_check(self, index: Any, count: int = SPOT_CHECKS) -> str | None:
        """Search a few random stored vectors in `index` and by exact search: the best tile the
        index finds (rescored exactly) must score as well as the exact best. Flat / HNSW also
        give back every stored vector, which must equal the tile set's (IVF-PQ codes are lossy:
        only the search check applies)."""
        n = len(self)
        if n == 0:
            return None
        rng = np.random.default_rng()
        ids = rng.choice(n, min(count, n), replace=False)
        q = self.emb[ids]
        if self.kind in ("flat", "hnsw"):
            # These keep the vectors verbatim: compare all of them, block by block (the file was
            # just read whole for its checksum, so this costs about as much again).
            step = max(1, (1 << 22) // (4 * self.tileset.dim))
            for i0 in range(0, n, step):
                m = min(step, n - i0)
                try:
                    stored = index.reconstruct_n(i0, m)
                except RuntimeError as exc:
                    return f"cannot read back its vectors ({exc})"
                diff = np.nonzero(~np.isclose(stored, self.emb[i0:i0 + m], atol=1e-5).all(axis=1))[0]
                if diff.size:
                    return f"stored vectors of {diff.size} tile(s) (first: {i0 + int(diff[0])}) differ from the tile set's"
        if self.kind == "ivfpq":
            index.nprobe = int(index.nlist)  # exhaustive for the check; _tune sets the search value
        elif self.kind == "hnsw":
            index.hnsw.efSearch = max(int(self.params["ef_search"]), 64)
        kk = min(n, 64 if self.kind == "ivfpq" else 8)
        _, lab = index.search(np.ascontiguousarray(q), kk)
        exact_best = (q @ self.emb.T).max(axis=1)
        for r, i in enumerate(ids):
            cand = lab[r][lab[r] >= 0]
            if cand.size == 0 or cand.max() >= n:
                return f"tile {i}: the index returns ids {lab[r][:4].tolist()} outside 0..{n - 1}"
            got = float((self.emb[cand] @ q[r]).max())
            if got < float(exact_best[r]) - 1e-4:
                return f"tile {i}: best found scores {got:.4f}, exact search {float(exact_best[r]):.4f}"
        return None

    def _save(self) -> None:
        assert self.index_path is not None
        self.index_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.index_path) as tmp:
            self._faiss.write_index(self.index, str(tmp))
            digest = sha256_file(tmp)
        rec = {**self._record(), "faiss": getattr(self._faiss, "__version__", "?"), "index_sha256": digest}
        write_json_atomic(self._json_path(), rec)  # written last: it marks the index as complete

    def _build(self) -> Any:
        faiss, d, p = self._faiss, self.tileset.dim, self.params
        if self.kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, int(p["M"]), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = int(p["ef_construction"])
        else:
            if d % int(p["m"]):
                raise SkylocError(f"ivfpq: m={p['m']} must divide the embedding dimension {d}")
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFPQ(quantizer, d, int(p["nlist"]), int(p["m"]), int(p["nbits"]),
                                     faiss.METRIC_INNER_PRODUCT)
            need = max(int(p["nlist"]), 2 ** int(p["nbits"]))
            if len(self) < need:
                raise SkylocError(f"ivfpq needs at least {need} tiles to train (has {len(self)}): "
                                  f"use flat/hnsw or smaller nlist/nbits")
            rng = np.random.default_rng(int(p["seed"]))
            n_train = min(len(self), int(p["train_size"]))
            sample = self.emb if n_train == len(self) else self.emb[np.sort(rng.choice(len(self), n_train, replace=False))]
            index.train(np.ascontiguousarray(sample))
        if len(self):
            index.add(self.emb)
        return index

    def _tune(self) -> None:
        p = self.params
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = int(p["ef_search"])
        elif self.kind == "ivfpq":
            self.index.nprobe = int(p["nprobe"])

    def _search_params(self, ids: np.ndarray) -> Any:
        faiss = self._faiss
        sel = faiss.IDSelectorBatch(ids.astype(np.int64))
        if self.kind == "hnsw":
            return faiss.SearchParametersHNSW(sel=sel, efSearch=int(self.params["ef_search"])), sel
        if self.kind == "ivfpq":
            return faiss.SearchParametersIVF(sel=sel, nprobe=int(self.params["nprobe"])), sel
        return faiss.SearchParameters(sel=sel), sel

    def search(self, queries: np.ndarray, k: int, window: SearchWindow | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        q = self._queries(queries)
        k = int(k)
        ids = None if window is None else self.window_ids(window)
        if ids is not None and len(ids) <= self.exact_window_max:
            return self._exact(q, k, ids)
        if ids is not None and len(ids) == 0:
            return topk(np.zeros((len(q), 0), np.float32), k)
        rerank = int(self.params.get("rerank", 0)) if self.kind == "ivfpq" else 0
        kk = min(len(self), k * max(rerank, 1))
        if kk == 0:
            return topk(np.zeros((len(q), 0), np.float32), k)
        if ids is None:
            dist, lab = self.index.search(q, kk)
        else:
            params, _keep = self._search_params(ids)  # _keep: the selector must outlive the call
            dist, lab = self.index.search(q, kk, params=params)
        lab = lab.astype(np.int64)
        if rerank:
            # PQ scores are approximate: rescore the candidates with the stored embeddings.
            safe = np.where(lab >= 0, lab, 0)
            dist = np.einsum("bkd,bd->bk", self.emb[safe], q)
        dist = np.where(lab >= 0, dist, -np.inf).astype(np.float32)
        s, cols = topk(dist, k)
        idx = np.where(cols >= 0, np.take_along_axis(lab, np.maximum(cols, 0), axis=1), -1)
        return s, np.where(np.isfinite(s), idx, -1).astype(np.int64)


def make_matcher(tileset: TileSet, kind: str = "auto", params: dict[str, Any] | None = None) -> Matcher:
    """auto: exact up to EXACT_MAX_TILES tiles, HNSW beyond (exact if faiss is missing)."""
    if kind == "auto":
        kind = "exact" if len(tileset) <= EXACT_MAX_TILES else "hnsw"
        if kind == "hnsw":
            try:
                import faiss  # noqa: F401
            except ImportError:
                log.warning("faiss not installed: exact search over %d tiles will be slow", len(tileset))
                kind = "exact"
    if kind == "exact":
        if params:
            raise SkylocError(f"the exact matcher takes no parameters (got {sorted(params)})")
        return ExactMatcher(tileset)
    if kind in DEFAULTS:
        return FaissMatcher(tileset, kind, params)
    raise SkylocError(f"unknown matcher {kind!r}; choose auto, {', '.join(KINDS)}")
