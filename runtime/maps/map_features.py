"""Map features offline: the learned registrar's keypoints + descriptors of the map imagery, packed
beside the tile set, so that onboard only the frame is run through the extractor.

`build_map_features` reads the imagery north-up at the registration m/px in overlapping square
blocks (a keypoint near a block edge has its full receptive field inside the block: only the
keypoints of each block's core are kept), runs the extractor on each, and writes one `.npz`
(`skyloc-map-features/1`): `latlon` (N, 2) float64 (exact whatever window is asked for later),
`desc` (N, D) float16 (half the size; descriptors are L2-normalised, float16 keeps ~3 digits),
`score` (N,) float32, and `meta` (a JSON string in a 0-d unicode array: matcher fingerprint and
kind, imagery sha256, m/px, blocks, a sha256 over the arrays). Written atomically, read with
allow_pickle=False.

The tile set records it as `meta["map_features"] = {path, sha256, fingerprint, kind, matcher, mpp,
count}` (the way runtime/maps/imagery.py records its imagery): `MapFeatures.for_tileset` refuses
a file whose sha256, matcher fingerprint or imagery is not the one recorded.

`MapFeatures.window(lat, lon, half_m)` gives the stored keypoints inside a north-up square as
pixel coordinates of a virtual crop of that square at the store's m/px (pixel i's centre at
i + 0.5, like `GeoMap.read_crop`), which is what `LearnedRegistrar.register_keypoints` takes.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from skyloc.core import geo
from skyloc.core.atomic import atomic_open
from skyloc.core.errors import SkylocError
from skyloc.core.npz_store import read_npz_store

FORMAT = "skyloc-map-features/1"
ARRAYS = {"latlon": "<f8", "desc": "<f2", "score": "<f4"}
# A 1024 px block at 0.5 m/px holds ~17-18k XFeat keypoints (Turku, aerovloc); 16384 keeps nearly all.
# Keeping only the strongest 8192 thinned them where the texture is weaker: a 76 m frame patch of a
# cross-domain flight at 80 m, matched at its true place (120 m window), had 6-21 inliers against such a
# store (frames 0-7) and 31-61 against the dense one; the store doubles (~12 MB per km^2).
BLOCK_PX, OVERLAP_PX, BLOCK_KPTS = 1024, 64, 16384
FEATURES_MPP = 0.5  # the learned registrar's working m/px (LearnedConf.work_mpp): the map is stored at it
MAX_WINDOW_PX = 16384


def features_path_for(tileset_out: str | os.PathLike) -> Path:
    """Where `skyloc tiles --matcher` writes the map features: `<tiles stem>.features.npz`."""
    out = Path(tileset_out)
    return out.with_name(out.stem + ".features.npz")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name, dt in ARRAYS.items():
        a = np.ascontiguousarray(arrays[name], dtype=dt)
        h.update(f"{name}|{np.dtype(dt).str}|{tuple(a.shape)}|".encode())
        h.update(a.data)
    return h.hexdigest()


def _block_centres(bounds: tuple[float, float, float, float], core_m: float) -> list[tuple[float, float]]:
    """Lat/lon centres of core_m squares tiling the bounds (row-major north -> south, west -> east)."""
    lat_min, lon_min, lat_max, lon_max = bounds
    lat0, lon0 = 0.5 * (lat_min + lat_max), 0.5 * (lon_min + lon_max)
    west, north = geo.latlon_to_local_m(lat_max, lon_min, lat0, lon0)
    east, south = geo.latlon_to_local_m(lat_min, lon_max, lat0, lon0)
    rows, cols = max(1, math.ceil((north - south) / core_m)), max(1, math.ceil((east - west) / core_m))
    out = []
    for r in range(rows):
        for c in range(cols):
            la, lo = geo.local_m_to_latlon(west + (c + 0.5) * core_m, north - (r + 0.5) * core_m, lat0, lon0)
            out.append((float(la), float(lo)))
    return out


def build_map_features(extractor: Any, gmap: Any, out: str | os.PathLike, mpp: float, imagery_sha256: str = "",
                       block_px: int = BLOCK_PX, overlap_px: int = OVERLAP_PX, max_kpts: int = BLOCK_KPTS,
                       progress: bool = False) -> Path:
    """Extract the map's features with `extractor` (runtime.register.extractor.FeatureExtractor) at
    mpp metres per pixel and write them to `out` atomically. `gmap`: a GeoMap or MapImagery (its
    `.map`). Blocks of block_px pixels overlap by 2 x overlap_px; each keeps its core's keypoints."""
    gmap = getattr(gmap, "map", gmap)
    if not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
        raise SkylocError(f"map features: m/px {mpp!r} must be a positive finite number")
    if not (isinstance(block_px, int) and isinstance(overlap_px, int) and 64 <= block_px <= 4096
            and 0 <= overlap_px and block_px - 2 * overlap_px >= 32):
        raise SkylocError(f"map features: block {block_px!r} px with overlap {overlap_px!r} px: need 64..4096 px "
                          f"blocks whose core (block - 2 x overlap) is >= 32 px")
    if not (isinstance(max_kpts, int) and max_kpts >= 1):
        raise SkylocError(f"map features: max keypoints per block {max_kpts!r} must be an integer >= 1")
    core_px = block_px - 2 * overlap_px
    bounds = tuple(float(v) for v in gmap.bounds_latlon())
    centres = _block_centres(bounds, core_px * mpp)
    side_m = block_px * mpp
    lat_l, desc_l, score_l = [], [], []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(centres), unit="block", desc=f"map features {Path(out).name}")
    used = 0
    for lat, lon in centres:
        rgb, valid = gmap.read_crop(lat, lon, side_m, block_px)
        if bar is not None:
            bar.update(1)
        if valid.mean() < 0.02:
            continue
        used += 1
        kp = extractor.extract(rgb, valid, max_kpts=max_kpts)
        xy = np.asarray(kp.xy, np.float64).reshape(-1, 2)
        lo_px, hi_px = overlap_px, block_px - overlap_px
        core = (xy[:, 0] >= lo_px) & (xy[:, 0] < hi_px) & (xy[:, 1] >= lo_px) & (xy[:, 1] < hi_px)
        e = (xy[core, 0] - block_px / 2) * mpp
        n = (block_px / 2 - xy[core, 1]) * mpp
        la, lo = geo.local_m_to_latlon(e, n, lat, lon)
        lat_l.append(np.stack([np.atleast_1d(la), np.atleast_1d(lo)], axis=1))
        desc_l.append(np.asarray(kp.desc, np.float32)[core])
        score_l.append(np.asarray(kp.score, np.float32)[core])
    if bar is not None:
        bar.close()
    if not lat_l or sum(len(a) for a in lat_l) == 0:
        raise SkylocError(f"map features: no keypoint found on map {gmap.source} at {mpp:g} m/px; check the "
                          f"imagery (blank?) or use a finer --features-mpp")
    arrays = {"latlon": np.concatenate(lat_l), "desc": np.concatenate(desc_l).astype(np.float16),
              "score": np.concatenate(score_l)}
    for name, a in arrays.items():
        if not np.isfinite(a.astype(np.float32) if a.dtype == np.float16 else a).all():
            raise SkylocError(f"map features: the extractor gave non-finite {name}; nothing was written; "
                              f"re-export the matcher")
    sc = dict(getattr(extractor, "sidecar", {}) or {})
    meta = {"format": FORMAT, "fingerprint": str(extractor.fingerprint), "kind": str(sc.get("kind", "")),
            "mpp": float(mpp), "imagery_sha256": str(imagery_sha256), "bounds": list(bounds),
            "block_px": block_px, "overlap_px": overlap_px, "max_kpts": max_kpts, "blocks": used,
            "count": int(len(arrays["score"])), "dim": int(arrays["desc"].shape[1]),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    meta["checksum"] = _arrays_sha256(arrays)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
    return out


class MapFeatures:
    """A map-feature store, checked: format, shapes, finite values, its own array checksum, and
    (when given) the file sha256, matcher fingerprint and imagery sha256 a tile set recorded."""

    def __init__(self, path: str | os.PathLike, sha256: str | None = None, fingerprint: str | None = None,
                 imagery_sha256: str | None = None) -> None:
        self.path = p = Path(path)
        hint = "rebuild it with `skyloc tiles ... --matcher M.onnx --overwrite` (or run with --registrar ncc)"
        if not p.is_file():
            raise SkylocError(f"map features {p}: not found; restore it, {hint}, or run with --registrar ncc")
        if sha256 is not None and (actual := file_sha256(p)) != sha256:
            raise SkylocError(f"map features {p}: sha256 {actual[:12]}... does not match the {str(sha256)[:12]}... "
                              f"the tile set recorded (changed or corrupted); {hint}")
        arrays, meta = read_npz_store(p, ARRAYS, FORMAT, "map-feature store", hint)
        n = len(arrays["score"])
        shapes_ok = (arrays["latlon"].shape == (n, 2) and arrays["desc"].ndim == 2 and len(arrays["desc"]) == n
                     and arrays["score"].shape == (n,) and n == meta.get("count")
                     and all(arrays[k].dtype == np.dtype(dt) for k, dt in ARRAYS.items()))
        if not shapes_ok:
            raise SkylocError(f"map features {p} is inconsistent ({ {k: (a.shape, str(a.dtype)) for k, a in arrays.items()} }, "
                              f"count {meta.get('count')}); {hint}")
        if _arrays_sha256(arrays) != meta.get("checksum"):
            raise SkylocError(f"map features {p}: its arrays do not match their recorded checksum (modified "
                              f"after it was written); {hint}")
        if not all(np.isfinite(a.astype(np.float32)).all() for a in arrays.values()):
            raise SkylocError(f"map features {p} holds non-finite values (NaN/Inf); {hint}")
        mpp = meta.get("mpp")
        if not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
            raise SkylocError(f"map features {p}: meta mpp {mpp!r} is not a positive number; {hint}")
        if fingerprint is not None and meta.get("fingerprint") != fingerprint:
            raise SkylocError(f"map features {p} were extracted by matcher {str(meta.get('fingerprint'))[:12]}... "
                              f"but the matcher given is {str(fingerprint)[:12]}...: descriptors of different "
                              f"matchers cannot be compared; use the recorded matcher or {hint}")
        if imagery_sha256 and meta.get("imagery_sha256") and meta["imagery_sha256"] != imagery_sha256:
            raise SkylocError(f"map features {p} were extracted from imagery {meta['imagery_sha256'][:12]}... but "
                              f"the tile set's imagery is {imagery_sha256[:12]}...; {hint}")
        self.meta = meta
        self.latlon = arrays["latlon"]
        self.desc = arrays["desc"]
        self.score = arrays["score"]
        self.mpp = float(mpp)
        self.fingerprint = str(meta.get("fingerprint", ""))
        self.kind = str(meta.get("kind", ""))
        self.bounds = tuple(float(v) for v in meta.get("bounds") or self._bounds_from_points())

    def __len__(self) -> int:
        return int(len(self.score))

    def _bounds_from_points(self) -> tuple[float, float, float, float]:
        la, lo = self.latlon[:, 0], self.latlon[:, 1]
        return float(la.min()), float(lo.min()), float(la.max()), float(lo.max())

    @property
    def centre(self) -> tuple[float, float]:
        lat_min, lon_min, lat_max, lon_max = self.bounds
        return 0.5 * (lat_min + lat_max), 0.5 * (lon_min + lon_max)

    @property
    def extent_m(self) -> tuple[float, float]:
        """(east-west, north-south) size of the map the features cover, metres."""
        lat_min, lon_min, lat_max, lon_max = self.bounds
        e0, n0 = geo.latlon_to_local_m(lat_min, lon_min, *self.centre)
        e1, n1 = geo.latlon_to_local_m(lat_max, lon_max, *self.centre)
        return abs(float(e1 - e0)), abs(float(n1 - n0))

    @property
    def area_km2(self) -> float:
        w, h = self.extent_m
        return w * h / 1e6

    def window_shape(self, half_e_m: float, half_n_m: float | None = None) -> tuple[int, int]:
        """(h, w) pixels of the virtual crop of 2 x half_e_m by 2 x half_n_m metres at the store's m/px."""
        half_n_m = half_e_m if half_n_m is None else half_n_m
        for v in (half_e_m, half_n_m):
            if not (isinstance(v, (int, float, np.floating)) and math.isfinite(v) and v > 0):
                raise SkylocError(f"map features window: half-size {v!r} must be a positive finite number of metres")
        h, w = max(8, round(2 * half_n_m / self.mpp)), max(8, round(2 * half_e_m / self.mpp))
        if max(h, w) > MAX_WINDOW_PX:
            raise SkylocError(f"map features window: {2 * half_e_m:.0f} x {2 * half_n_m:.0f} m at {self.mpp:g} m/px "
                              f"is {w} x {h} px (limit {MAX_WINDOW_PX})")
        return int(h), int(w)

    def window(self, lat: float, lon: float, half_e_m: float, half_n_m: float | None = None) -> Any:
        """The stored keypoints inside the north-up rectangle centred on (lat, lon), as a Keypoints
        whose xy are pixels of its virtual crop (`window_shape`) at `self.mpp`."""
        from skyloc.runtime.register.extractor import Keypoints

        if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
            raise SkylocError(f"map features window: centre {lat!r}, {lon!r} is not a valid lat/lon")
        h, w = self.window_shape(half_e_m, half_n_m)
        e, n = geo.latlon_to_local_m(self.latlon[:, 0], self.latlon[:, 1], float(lat), float(lon))
        x = np.asarray(e) / self.mpp + w / 2.0
        y = h / 2.0 - np.asarray(n) / self.mpp
        keep = np.flatnonzero((x >= 0) & (x < w) & (y >= 0) & (y < h))
        return Keypoints(xy=np.stack([x[keep], y[keep]], axis=1).astype(np.float32).reshape(-1, 2),
                         desc=self.desc[keep].astype(np.float32), score=self.score[keep].astype(np.float32))

    def record(self, relative_to: str | os.PathLike | None = None, matcher: str | os.PathLike | None = None
               ) -> dict[str, Any]:
        """The tile-set meta entry for this store (path relative to the tile set's folder when inside it)."""
        p = self.path.resolve()
        if relative_to is not None and p.is_relative_to(Path(relative_to).resolve()):
            p = p.relative_to(Path(relative_to).resolve())
        return {"path": str(p), "sha256": file_sha256(self.path), "fingerprint": self.fingerprint,
                "kind": self.kind, "mpp": self.mpp, "count": len(self),
                "matcher": str(Path(matcher).resolve()) if matcher else None}

    @classmethod
    def for_tileset(cls, tileset_path: str | os.PathLike | None, meta: dict[str, Any],
                    fingerprint: str | None = None) -> "MapFeatures | None":
        """The store a tile set records (checked against its sha256, the matcher fingerprint given or
        recorded, and the tile set's imagery); None when it records none."""
        rec = (meta or {}).get("map_features")
        if not rec:
            return None
        if not isinstance(rec, dict) or not rec.get("path") or not rec.get("sha256") or not rec.get("fingerprint"):
            raise SkylocError(f"tile set {tileset_path}: map_features record {rec!r} lacks path / sha256 / "
                              f"fingerprint; rebuild it with `skyloc tiles ... --matcher M.onnx`")
        base = Path(tileset_path).parent if tileset_path else Path.cwd()
        p = Path(rec["path"])
        if not p.is_absolute():
            p = base / p
        elif not p.exists() and (base / p.name).exists():  # the folder moved together with its features
            p = base / p.name
        fp = fingerprint if fingerprint is not None else rec["fingerprint"]
        if fp != rec["fingerprint"]:
            raise SkylocError(f"tile set {tileset_path}: its map features were extracted by matcher "
                              f"{rec['fingerprint'][:12]}... but the matcher given is {fp[:12]}...; pass the "
                              f"recorded matcher ({rec.get('matcher')}) or rebuild with `skyloc tiles ... --matcher`")
        imagery = (meta.get("imagery") or {}).get("sha256")
        return cls(p, rec["sha256"], fp, imagery)

    def matcher_path(self, tileset_path: str | os.PathLike | None, meta: dict[str, Any]) -> Path | None:
        """The matcher ONNX the tile set records (or one of that name beside the tile set), if present."""
        rec = (meta or {}).get("map_features") or {}
        m = rec.get("matcher")
        if not m:
            return None
        p = Path(m)
        if not p.exists() and tileset_path is not None and (Path(tileset_path).parent / p.name).exists():
            p = Path(tileset_path).parent / p.name
        return p if p.exists() else None
