"""Map imagery onboard: the pixels registration compares a frame with.

A tile set records its imagery in `meta["imagery"] = {path, sha256, mpp, bounds, packed}`: either
the map source it was cut from (absolute path) or a packed folder beside it (relative path), with
a sha256 over the files, so the runtime refuses imagery that is not the one the tiles were made
from. `MapImagery.for_tileset` opens it (None when the tile set records none: retrieval-only).

Packed format: north-up JPEG tiles + the corners CSV (`map.csv`) that runtime.maps.open_map
already reads. Chosen over a tiled GeoTIFF because the drone then needs no GDAL/rasterio (the
tile reader is OpenCV + numpy and decodes tiles lazily with an LRU cache), any image viewer can
inspect it, and JPEG at quality 90 is ~10x smaller than PNG for photos. Tiles that are partly off
the map are PNG with alpha 0 as no-data (JPEG has no alpha); tiles with no data are left out. The
tile grid is regular in lat/lon, so each tile's linear corner georeference is exact.
"""
from __future__ import annotations

import hashlib
import math
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from skyloc.core import geo
from skyloc.core.errors import SkylocError
from skyloc.runtime.maps.base import GeoMap
from skyloc.runtime.maps.open import open_map
from skyloc.runtime.maps.mosaic import read_corners_csv, write_corners_csv

TILE_PX = 1024
JPEG_QUALITY = 90


def source_files(path: str | os.PathLike) -> list[Path]:
    """The files a map source consists of, in a fixed order (CSV first, then its tiles)."""
    p = Path(path)
    if p.is_dir():
        p = p / "map.csv"
    if not p.exists():
        raise SkylocError(f"map imagery {path}: not found")
    ext = p.suffix.lower()
    if ext == ".csv":
        return [p] + [p.parent / r[0] for r in read_corners_csv(p) if (p.parent / r[0]).is_file()]
    if ext in (".png", ".jpg", ".jpeg"):
        side = p.with_suffix(".csv")
        return [side, p] if side.is_file() else [p]
    return [p]


def imagery_sha256(path: str | os.PathLike) -> str:
    """sha256 over (relative name, size, bytes) of every file of a map source."""
    files = source_files(path)
    root = files[0].parent
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root) if f.is_relative_to(root) else f.name}|{f.stat().st_size}|".encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def _cv_limit(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


def decode_limit_px() -> tuple[int, int, int]:
    """What OpenCV decodes in one image: (pixels, width, height), its OPENCV_IO_MAX_IMAGE_* settings."""
    return (_cv_limit("OPENCV_IO_MAX_IMAGE_PIXELS", 1 << 30), _cv_limit("OPENCV_IO_MAX_IMAGE_WIDTH", 1 << 20),
            _cv_limit("OPENCV_IO_MAX_IMAGE_HEIGHT", 1 << 20))


def check_decodable(gmap: GeoMap) -> None:
    """Refuse, before the first frame, a tile whose header claims more pixels than OpenCV decodes:
    registration would otherwise fail on it frame after frame (each crop decodes it again)."""
    px, wmax, hmax = decode_limit_px()
    for t in getattr(gmap, "tiles", ()):
        if t.path is not None and (t.width * t.height > px or t.width > wmax or t.height > hmax):
            raise SkylocError(f"map imagery tile {t.path}: its header claims {t.width} x {t.height} pixels, more "
                              f"than OpenCV decodes ({px} pixels, {wmax} x {hmax}; OPENCV_IO_MAX_IMAGE_*): a header "
                              "claiming a huge size is damaged or hostile; replace the file, split a genuinely huge "
                              "map into tiles listed in a corners CSV, or run with --no-register (retrieval only)")


class MapImagery:
    """Imagery (any runtime.maps source) checked against the sha256 it was recorded with."""

    def __init__(self, path: str | os.PathLike, sha256: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise SkylocError(f"map imagery {self.path}: not found; restore it, rebuild the tile set with "
                              f"`skyloc tiles ... --pack-imagery`, or run with --no-register (retrieval only)")
        self.sha256 = imagery_sha256(self.path)
        if sha256 is not None and sha256 != self.sha256:
            raise SkylocError(f"map imagery {self.path}: sha256 {self.sha256[:12]}... does not match the "
                              f"{str(sha256)[:12]}... the tile set recorded (changed or corrupted); restore the "
                              f"original, re-pack with `skyloc tiles ... --pack-imagery`, or run with --no-register")
        self.map: GeoMap = open_map(self.path)
        check_decodable(self.map)
        self.mpp = float(self.map.metres_per_pixel)

    @classmethod
    def for_tileset(cls, tileset_path: str | os.PathLike | None, meta: dict[str, Any]) -> "MapImagery | None":
        """The imagery a tile set records; None when it records none (the runtime is then retrieval-only)."""
        rec = (meta or {}).get("imagery")
        if not rec:
            return None
        if not isinstance(rec, dict) or not rec.get("path") or not rec.get("sha256"):
            raise SkylocError(f"tile set {tileset_path}: imagery record {rec!r} lacks path / sha256; rebuild it")
        p = Path(rec["path"])
        base = Path(tileset_path).parent if tileset_path else Path.cwd()
        if not p.is_absolute():
            p = base / p
        elif not p.exists() and (base / p.name).exists():  # the folder moved together with its imagery
            p = base / p.name
        return cls(p, rec["sha256"])

    def crop(self, lat: float, lon: float, side_m: float, mpp: float) -> tuple[np.ndarray, np.ndarray]:
        """North-up (rgb uint8, valid bool) square of side_m metres centred at (lat, lon), at ~mpp
        (the pixel count is rounded: the true m/px is side_m / width)."""
        for name, v in (("lat", lat), ("lon", lon), ("side_m", side_m), ("mpp", mpp)):
            if not isinstance(v, (int, float, np.floating)) or not math.isfinite(v):
                raise SkylocError(f"imagery crop: {name} must be a finite number (got {v!r})")
        if side_m <= 0 or mpp <= 0 or not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise SkylocError(f"imagery crop: need side_m, mpp > 0 and a valid lat/lon (got {lat}, {lon}, "
                              f"{side_m}, {mpp})")
        px = max(8, int(round(side_m / mpp)))
        if px > 8192:
            raise SkylocError(f"imagery crop: {side_m} m at {mpp} m/px is {px} px a side (limit 8192)")
        return self.map.read_crop(float(lat), float(lon), float(side_m), px)

    def record(self, relative_to: str | os.PathLike | None = None, packed: bool = False) -> dict[str, Any]:
        """The tile-set meta entry for this imagery."""
        p = self.path.resolve()
        if relative_to is not None and p.is_relative_to(Path(relative_to).resolve()):
            p = p.relative_to(Path(relative_to).resolve())
        return {"path": str(p), "sha256": self.sha256, "mpp": self.mpp,
                "bounds": [float(v) for v in self.map.bounds_latlon()], "packed": packed}


def pack_imagery(gmap: GeoMap, bounds: Sequence[float], out_dir: str | os.PathLike, mpp: float,
                 tile_px: int = TILE_PX, quality: int = JPEG_QUALITY) -> Path:
    """Resample `gmap` over bounds (lat_min, lon_min, lat_max, lon_max) at mpp into JPEG tiles +
    map.csv in out_dir. Written into a scratch folder and renamed into place; an existing out_dir
    is replaced only once the new one is complete."""
    lat_min, lon_min, lat_max, lon_max = (float(v) for v in bounds)
    if not all(math.isfinite(v) for v in bounds) or lat_min >= lat_max or lon_min >= lon_max:
        raise SkylocError(f"pack imagery: bounds {list(bounds)} must be finite (lat_min, lon_min, lat_max, lon_max)")
    if not (math.isfinite(mpp) and mpp > 0) or tile_px < 16:
        raise SkylocError(f"pack imagery: mpp ({mpp}) must be > 0 and tile_px ({tile_px}) >= 16")
    mb = gmap.bounds_latlon()  # nothing to pack outside the map
    lat_min, lon_min = max(lat_min, mb[0]), max(lon_min, mb[1])
    lat_max, lon_max = min(lat_max, mb[2]), min(lon_max, mb[3])
    if lat_min >= lat_max or lon_min >= lon_max:
        raise SkylocError(f"pack imagery: bounds {list(bounds)} do not overlap map {gmap.source} {list(mb)}")
    m_lat, m_lon = geo.metres_per_degree(0.5 * (lat_min + lat_max))
    dlat, dlon = tile_px * mpp / m_lat, tile_px * mpp / m_lon
    rows, cols = math.ceil((lat_max - lat_min) / dlat), math.ceil((lon_max - lon_min) / dlon)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        entries = []
        f = (np.arange(tile_px) + 0.5) / tile_px
        for r in range(rows):
            for c in range(cols):
                tl_lat, tl_lon = lat_max - r * dlat, lon_min + c * dlon
                la, lo = np.meshgrid(tl_lat - f * dlat, tl_lon + f * dlon, indexing="ij")
                rgb, valid = gmap.sample(la, lo, footprint_m=mpp)
                if not valid.any():
                    continue
                bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
                if valid.all():
                    name = f"tile_{r:04d}_{c:04d}.jpg"
                    ok = cv2.imwrite(str(tmp / name), bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
                else:
                    name = f"tile_{r:04d}_{c:04d}.png"
                    ok = cv2.imwrite(str(tmp / name), np.dstack([bgr, valid.astype(np.uint8) * 255]))
                if not ok:
                    raise SkylocError(f"pack imagery: cannot write {tmp / name}; check free space on {out.parent}")
                entries.append((name, tl_lat, tl_lon, tl_lat - dlat, tl_lon + dlon))
        if not entries:
            raise SkylocError(f"pack imagery: map {gmap.source} has no data inside {list(bounds)}")
        write_corners_csv(tmp / "map.csv", entries)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old{os.getpid()}-{secrets.token_hex(4)}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def imagery_record(map_path: str | os.PathLike, tileset_out: str | os.PathLike, pack: bool = False,
                   mpp: float = 0.5, overwrite: bool = False) -> dict[str, Any]:
    """The `imagery` entry of a tile set cut from `map_path`: the source itself (absolute path +
    sha256), or with `pack` the map resampled at max(mpp, native m/px) into `<out stem>.imagery/`
    beside the tile set (relative path), so the drone carries one folder."""
    out = Path(tileset_out)
    if not pack:
        return MapImagery(Path(map_path).resolve()).record()
    folder = out.with_name(out.stem + ".imagery")
    for p in (out, folder):
        if p.exists() and not overwrite:
            raise SkylocError(f"{p} exists; pass --overwrite to replace it (only once the new one is complete) "
                              f"or choose another --out")
    gmap = open_map(map_path)
    pack_imagery(gmap, gmap.bounds_latlon(), folder, max(float(mpp), float(gmap.metres_per_pixel)))
    rec = MapImagery(folder).record(relative_to=out.parent, packed=True)
    rec["source"] = str(Path(map_path).resolve())
    return rec
