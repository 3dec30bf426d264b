"""Georeferenced map readers: GeoTIFF (any CRS) and north-up PNG/JPEG tiles with a corners CSV.

One primitive, `GeoMap.sample(lat, lon)`, bilinearly samples the map at arbitrary WGS84 points;
crops, rendered drone views and tile grids are all built on it. Sampling is mip-mapped: each
point picks a pyramid level from its ground footprint (given, or estimated from the spacing of
the query grid) and blends the two nearest levels, so a 64 px crop of a 0.1 m/px orthophoto is
an area average rather than an aliased pick of single pixels.

No-data (GeoTIFF masks / nodata, tiles missing from the CSV, fully transparent PNG pixels) is
carried as a weight: colours are premultiplied by it, so they never bleed into valid pixels, and
a point is valid where the weight is >= 0.5. Alpha never changes a colour: it only marks
alpha == 0 as no-data (the Turku tiles carry a constant alpha, so all their pixels are valid).

Torch-free: the onboard runtime builds tile sets from these maps.
"""
from __future__ import annotations

import csv
import math
import os
import struct
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from skyloc.runtime import geo
from skyloc.runtime.atomic import atomic_open
from skyloc.runtime.errors import SkylocError

CSV_HEADER = ["Filename", " Top_left_lat", "Top_left_lon", "Bottom_right_lat", "Bottom_right_long"]
_BLOCK = 2048  # GeoTIFF points are read in blocks of this many output pixels per side (runtime.geotiff)


class GeoMap(ABC):
    """A map that can be sampled at WGS84 points. Subclasses supply `_to_native` and `_sample_level`."""

    name: str
    source: str
    metres_per_pixel: float
    max_level: int

    # --- subclass hooks -------------------------------------------------------------------
    @abstractmethod
    def bounds_latlon(self) -> tuple[float, float, float, float]:
        """(lat_min, lon_min, lat_max, lon_max)."""

    @abstractmethod
    def _to_native(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat WGS84 points -> the coordinates `_sample_level` takes."""

    @abstractmethod
    def _sample_level(self, a: np.ndarray, b: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
        """Native coords -> (premultiplied rgb float32 (N, 3), weight float32 (N,)) at a pyramid level."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "metres_per_pixel": self.metres_per_pixel,
                "bounds_latlon": list(self.bounds_latlon())}

    # --- public API -----------------------------------------------------------------------
    def sample(self, lat: np.ndarray, lon: np.ndarray, footprint_m: np.ndarray | float | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Bilinear, mip-mapped colours at the points: (rgb uint8 (..., 3), valid bool (...)).

        `footprint_m` is the ground size each output pixel stands for (scalar or per point); by
        default it is estimated from the spacing of a 2-D query grid (native resolution for
        other shapes). Invalid points get rgb 0.
        """
        lat = np.asarray(lat, dtype=np.float64)
        lon = np.asarray(lon, dtype=np.float64)
        shape = lat.shape
        if footprint_m is None:
            footprint_m = _grid_footprint(lat, lon)
        fp = np.broadcast_to(np.asarray(footprint_m, dtype=np.float64), shape).ravel()
        level = np.clip(np.log2(np.maximum(fp, 1e-9) / self.metres_per_pixel), 0.0, float(self.max_level))
        l0 = np.floor(level).astype(np.int64)
        t = (level - l0).astype(np.float32)
        a, b = self._to_native(lat.ravel(), lon.ravel())
        rgb = np.zeros((a.size, 3), np.float32)
        w = np.zeros(a.size, np.float32)
        for lv in np.unique(l0):
            idx = np.nonzero(l0 == lv)[0]
            c, wt = self._sample_level(a[idx], b[idx], int(lv))
            rgb[idx] += c * (1 - t[idx, None])
            w[idx] += wt * (1 - t[idx])
            up = idx[(t[idx] > 0) & (lv < self.max_level)]
            if up.size:
                c, wt = self._sample_level(a[up], b[up], int(lv) + 1)
                rgb[up] += c * t[up, None]
                w[up] += wt * t[up]
        valid = w >= 0.5
        out = np.zeros_like(rgb)
        out[valid] = rgb[valid] / w[valid, None]
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return out.reshape(*shape, 3), valid.reshape(shape)

    def is_valid(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Whether each point has data at native resolution."""
        lat = np.asarray(lat, dtype=np.float64)
        lon = np.asarray(lon, dtype=np.float64)
        a, b = self._to_native(lat.ravel(), np.asarray(lon, dtype=np.float64).ravel())
        _, w = self._sample_level(a, b, 0)
        return (w >= 0.5).reshape(lat.shape)

    def read_crop(self, lat: float, lon: float, size_m: float, out_px: int, yaw_deg: float = 0.0
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Square crop of size_m ground metres centred at (lat, lon), out_px pixels a side.

        yaw_deg turns the crop clockwise from north: the crop's up direction points at that heading
        (the view of a nadir camera whose top edge faces yaw_deg).
        """
        east, north = crop_offsets_m(size_m, out_px, yaw_deg)
        la, lo = geo.local_m_to_latlon(east, north, lat, lon)
        return self.sample(la, lo, footprint_m=size_m / out_px)

    def grid(self, tile_m: float, stride_m: float, min_valid: float = 1.0) -> np.ndarray:
        """(N, 2) lat/lon centres of tile_m squares on a metric grid, row-major north->south, west->east.

        The grid starts tile_m / 2 inside the north-west corner of the bounds. A square is kept when
        the valid fraction of a probe lattice over it (edges included, spacing <= tile_m / 16 and
        about 4 native pixels when finer, at most 65 x 65 probes) is >= min_valid.
        """
        if tile_m <= 0 or stride_m <= 0:
            raise SkylocError(f"grid: tile_m ({tile_m}) and stride_m ({stride_m}) must be > 0")
        lat_min, lon_min, lat_max, lon_max = self.bounds_latlon()
        lat0, lon0 = 0.5 * (lat_min + lat_max), 0.5 * (lon_min + lon_max)
        west, north = geo.latlon_to_local_m(lat_max, lon_min, lat0, lon0)
        east, south = geo.latlon_to_local_m(lat_min, lon_max, lat0, lon0)
        eps = 1e-6 * tile_m  # squares flush with the map edge count as inside
        ns = np.arange(north - tile_m / 2, south + tile_m / 2 - eps, -stride_m)
        es = np.arange(west + tile_m / 2, east - tile_m / 2 + eps, stride_m)
        if ns.size == 0 or es.size == 0:
            return np.zeros((0, 2))
        cn, ce = np.meshgrid(ns, es, indexing="ij")
        cn, ce = cn.ravel(), ce.ravel()
        k = int(np.clip(math.ceil(tile_m / (4 * self.metres_per_pixel)) + 1, 17, 65))
        probe = np.linspace(-tile_m / 2 + eps, tile_m / 2 - eps, k)
        pe, pn = np.meshgrid(probe, probe)
        frac = np.empty(cn.size)
        batch = max(1, 200_000 // (k * k))
        for s in range(0, cn.size, batch):
            e = ce[s:s + batch, None] + pe.ravel()[None]
            n = cn[s:s + batch, None] + pn.ravel()[None]
            la, lo = geo.local_m_to_latlon(e, n, lat0, lon0)
            frac[s:s + batch] = self.is_valid(la, lo).mean(axis=1)
        keep = frac >= min_valid - 1e-9
        la, lo = geo.local_m_to_latlon(ce[keep], cn[keep], lat0, lon0)
        return np.stack([np.atleast_1d(la), np.atleast_1d(lo)], axis=1)


def crop_offsets_m(size_m: float, out_px: int, yaw_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(east, north) metres of each pixel centre of a yawed square crop, relative to its centre."""
    u = ((np.arange(out_px) + 0.5) / out_px - 0.5) * size_m
    x, y_down = np.meshgrid(u, u)
    y_up = -y_down
    s, c = math.sin(math.radians(yaw_deg)), math.cos(math.radians(yaw_deg))
    return x * c + y_up * s, -x * s + y_up * c


def _grid_footprint(lat: np.ndarray, lon: np.ndarray) -> np.ndarray | float:
    """Ground spacing of a 2-D query grid: the larger of its row / column steps, per point."""
    if lat.ndim != 2 or min(lat.shape) < 2:
        return 0.0
    e, n = geo.latlon_to_local_m(lat, lon, float(lat.flat[0]), float(lon.flat[0]))
    de_r, de_c = np.gradient(e)
    dn_r, dn_c = np.gradient(n)
    return np.maximum(np.hypot(de_r, dn_r), np.hypot(de_c, dn_c))


def bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample an (h, w, C) array at continuous pixel coords (centre of pixel i at i + 0.5), edge-clamped."""
    h, w = img.shape[:2]
    xi = np.clip(x - 0.5, 0, w - 1)
    yi = np.clip(y - 0.5, 0, h - 1)
    x0 = np.minimum(np.floor(xi).astype(np.int64), w - 1)
    y0 = np.minimum(np.floor(yi).astype(np.int64), h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    fx = (xi - x0).astype(np.float32)[:, None]
    fy = (yi - y0).astype(np.float32)[:, None]
    top = img[y0, x0].astype(np.float32) * (1 - fx) + img[y0, x1].astype(np.float32) * fx
    bot = img[y1, x0].astype(np.float32) * (1 - fx) + img[y1, x1].astype(np.float32) * fx
    return top * (1 - fy) + bot * fy


# --- PNG / JPEG tiles with a corners CSV ------------------------------------------------------


@dataclass
class Tile:
    filename: str
    tl_lat: float
    tl_lon: float
    br_lat: float
    br_lon: float
    path: Path | None = None  # None: an in-memory tile (see TiledMap.from_array)
    width: int = 0
    height: int = 0


class TiledMap(GeoMap):
    """Mosaic of north-up image tiles georeferenced by their corners; decoded lazily, LRU-cached."""

    def __init__(self, tiles: Sequence[Tile], source: str, name: str, missing: Sequence[str] = (),
                 cache_mb: float = 768.0, missing_share: float = 0.0) -> None:
        if not tiles:
            raise SkylocError(f"map {source}: none of its tile images exist ({len(missing)} missing, 100% of "
                              "its area); check the file names in the CSV (paths are relative to the CSV)")
        for t in tiles:
            check_corners(t.tl_lat, t.tl_lon, t.br_lat, t.br_lon, f"map {source} tile {t.filename}")
        self.tiles = list(tiles)
        self.missing = list(missing)
        self.missing_share = float(missing_share)  # fraction of the listed area whose image is absent
        self.source, self.name = source, name
        self._cache: OrderedDict[int, list[tuple[np.ndarray, np.ndarray | None]]] = OrderedDict()
        self._arrays: dict[int, np.ndarray] = {}
        self._cache_bytes = int(cache_mb * 2**20)
        mpps = [math.sqrt(float(np.prod(geo.corners_metres_per_pixel(
            t.width, t.height, t.tl_lat, t.tl_lon, t.br_lat, t.br_lon)))) for t in self.tiles]
        self.metres_per_pixel = float(np.median(mpps))
        self.max_level = max(0, int(math.floor(math.log2(max(min(t.width, t.height) for t in self.tiles)))) - 2)

    @classmethod
    def from_array(cls, rgb: np.ndarray, tl_lat: float, tl_lon: float, br_lat: float, br_lon: float,
                   name: str = "array") -> "TiledMap":
        """One in-memory tile (RGB, or RGBA with alpha 0 = no-data)."""
        t = Tile(name, tl_lat, tl_lon, br_lat, br_lon, None, rgb.shape[1], rgb.shape[0])
        m = cls([t], source=f"<array {name}>", name=name)
        m._arrays[0] = rgb
        return m

    def bounds_latlon(self) -> tuple[float, float, float, float]:
        return (min(t.br_lat for t in self.tiles), min(t.tl_lon for t in self.tiles),
                max(t.tl_lat for t in self.tiles), max(t.br_lon for t in self.tiles))

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(type="tiles", tiles=[t.filename for t in self.tiles], missing=self.missing,
                 missing_share=round(self.missing_share, 6))
        return d

    def _to_native(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return lat, lon

    def _sample_level(self, lat: np.ndarray, lon: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
        rgb = np.zeros((lat.size, 3), np.float32)
        w = np.zeros(lat.size, np.float32)
        todo = np.ones(lat.size, bool)  # the first tile (CSV order) holding a point wins
        for i, t in enumerate(self.tiles):
            x, y = geo.corners_latlon_to_pixel(lat, lon, t.width, t.height, t.tl_lat, t.tl_lon, t.br_lat, t.br_lon)
            inside = todo & (x >= 0) & (x <= t.width) & (y >= 0) & (y <= t.height)
            if not inside.any():
                continue
            img, mask = self._level(i, level)
            sx, sy = img.shape[1] / t.width, img.shape[0] / t.height
            xs, ys = x[inside] * sx, y[inside] * sy
            rgb[inside] = bilinear(img, xs, ys)
            w[inside] = 1.0 if mask is None else bilinear(mask[..., None], xs, ys)[:, 0] / 255.0
            todo &= ~inside
        return rgb, w

    def _level(self, i: int, level: int) -> tuple[np.ndarray, np.ndarray | None]:
        pyr = self._cache.get(i)
        if pyr is None:
            pyr = [self._decode(i)]
            self._cache[i] = pyr
        self._cache.move_to_end(i)
        while len(pyr) <= level:
            img, mask = pyr[-1]
            size = (max(1, (img.shape[1] + 1) // 2), max(1, (img.shape[0] + 1) // 2))
            pyr.append((cv2.resize(img, size, interpolation=cv2.INTER_AREA),
                        None if mask is None else cv2.resize(mask, size, interpolation=cv2.INTER_AREA)))
        self._evict()
        return pyr[level]

    def _evict(self) -> None:
        def nbytes(p: list) -> int:
            return sum(a.nbytes + (0 if m is None else m.nbytes) for a, m in p)
        while len(self._cache) > 1 and sum(nbytes(p) for p in self._cache.values()) > self._cache_bytes:
            self._cache.popitem(last=False)

    def _decode(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        t = self.tiles[i]
        if i in self._arrays:
            raw = self._arrays[i]
            alpha = raw[..., 3] if raw.ndim == 3 and raw.shape[2] == 4 else None
            rgb = np.ascontiguousarray(raw[..., :3]) if raw.ndim == 3 else np.repeat(raw[..., None], 3, axis=2)
        else:
            raw = cv2.imread(str(t.path), cv2.IMREAD_UNCHANGED)
            if raw is None:
                raise SkylocError(f"map tile {t.path}: cannot decode the image; replace or remove it")
            if raw.dtype == np.uint16:
                raw = (raw // 257).astype(np.uint8)
            if raw.ndim == 2:
                raw = raw[..., None]
            alpha = raw[..., 3] if raw.shape[2] == 4 else None
            rgb = cv2.cvtColor(raw[..., :3], cv2.COLOR_BGR2RGB) if raw.shape[2] >= 3 else np.repeat(raw[..., :1], 3, 2)
        if rgb.shape[:2] != (t.height, t.width):
            raise SkylocError(f"map tile {t.path}: header said {t.width}x{t.height}, decoded {rgb.shape[1]}x{rgb.shape[0]}")
        if alpha is None or alpha.min() > 0:
            return rgb, None
        mask = np.where(alpha > 0, 255, 0).astype(np.uint8)
        return rgb * (mask[..., None] // 255), mask  # premultiplied: no-data colours are 0


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG or JPEG header without decoding; other formats are decoded."""
    with open(path, "rb") as f:
        head = f.read(32)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            w, h = struct.unpack(">II", head[16:24])
            return int(w), int(h)
        if head[:2] == b"\xff\xd8":
            f.seek(2)
            while True:
                marker = f.read(2)
                if len(marker) < 2 or marker[0] != 0xFF:
                    break
                if marker[1] in (0xD8, 0x01) or 0xD0 <= marker[1] <= 0xD7:
                    continue
                seg_len = struct.unpack(">H", f.read(2))[0]
                if marker[1] in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                    h, w = struct.unpack(">HH", f.read(5)[1:5])
                    return int(w), int(h)
                f.seek(seg_len - 2, 1)
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise SkylocError(f"map tile {path}: cannot read the image; replace or remove it")
    return int(img.shape[1]), int(img.shape[0])


def read_corners_csv(path: Path) -> list[tuple[str, float, float, float, float]]:
    """Rows (filename, tl_lat, tl_lon, br_lat, br_lon) of a corners CSV (header optional)."""
    rows = []
    with open(path, newline="") as f:
        for n, rec in enumerate(csv.reader(f, skipinitialspace=True), start=1):
            rec = [c.strip() for c in rec]
            if not rec or not any(rec) or (n == 1 and rec[0].lower().startswith("filename")):
                continue
            try:
                name, vals = rec[0], [float(v) for v in rec[1:5]]
                if len(vals) != 4:
                    raise ValueError
            except ValueError:
                raise SkylocError(f"{path} line {n}: expected 'filename, tl_lat, tl_lon, br_lat, br_lon', got {rec}") from None
            check_corners(*vals, f"{path} line {n}")
            rows.append((name, *vals))
    if not rows:
        raise SkylocError(f"{path}: no tile rows; expected the corners CSV format of turku-satellite/map.csv")
    return rows


def check_corners(tl_lat: float, tl_lon: float, br_lat: float, br_lon: float, where: str) -> None:
    """Refuse corners that are not finite, out of range or not a north-west / south-east pair."""
    vals = (tl_lat, tl_lon, br_lat, br_lon)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
        raise SkylocError(f"{where}: corners {vals} must be finite numbers")
    if max(abs(tl_lat), abs(br_lat)) > 90 or max(abs(tl_lon), abs(br_lon)) > 180:
        raise SkylocError(f"{where}: corners {vals} out of range (|lat| <= 90, |lon| <= 180); "
                          "check the column order: filename, tl_lat, tl_lon, br_lat, br_lon")
    if not (tl_lat > br_lat and br_lon > tl_lon):
        raise SkylocError(f"{where}: top-left must be north-west of bottom-right ({vals})")


def _inside_folder(name: str, csv_path: Path) -> Path:
    """The tile image a CSV row names, refused when the name leaves the CSV's folder (absolute,
    `..`): a map file must not make the program read arbitrary files."""
    norm = os.path.normpath(name.replace("\\", "/"))
    if os.path.isabs(norm) or Path(name).is_absolute() or norm == ".." or norm.startswith("../") or name[1:2] == ":":
        raise SkylocError(f"{csv_path}: tile {name!r} is outside the CSV's folder; tile names must be "
                          f"relative paths below {csv_path.parent}")
    return csv_path.parent / norm


def _area(tl_lat: float, tl_lon: float, br_lat: float, br_lon: float) -> float:
    """Area of a corners box in square degrees of longitude at the equator (ratios only)."""
    return (tl_lat - br_lat) * (br_lon - tl_lon) * math.cos(math.radians(0.5 * (tl_lat + br_lat)))


def write_corners_csv(path: Path | str, rows: Sequence[tuple[str, float, float, float, float]]) -> Path:
    """Write a corners CSV in the turku-satellite/map.csv format."""
    path = Path(path)
    with atomic_open(path, "w", newline="") as f:
        f.write(",".join(CSV_HEADER) + "\n")
        for name, a, b, c, d in rows:
            f.write(f'"{name}", {a:.9f}, {b:.9f}, {c:.9f}, {d:.9f}\n')
    return path


def _open_tiles(csv_path: Path, image: Path | None = None) -> TiledMap:
    rows = read_corners_csv(csv_path)
    if image is not None:  # <stem>.csv beside one image: its single row, or the row naming it
        rows = rows if len(rows) == 1 else [r for r in rows if Path(r[0]).name == image.name]
        if not rows:
            raise SkylocError(f"{csv_path}: has several rows and none for {image.name}")
        rows = [(image.name, *rows[0][1:])]
    tiles, missing, missing_area = [], [], 0.0
    for name, a, b, c, d in rows:
        p = _inside_folder(name, csv_path)
        if not p.is_file():
            missing.append(name)
            missing_area += _area(a, b, c, d)
            continue
        w, h = image_size(p)
        tiles.append(Tile(name, a, b, c, d, p, w, h))
    name = csv_path.parent.name if csv_path.name == "map.csv" else csv_path.stem
    total = sum(_area(*r[1:]) for r in rows)
    return TiledMap(tiles, source=str(csv_path), name=name, missing=missing,
                    missing_share=missing_area / total if total > 0 else 0.0)


def open_map(path: Path | str) -> GeoMap:
    """Open a GeoTIFF, a corners CSV, a folder with map.csv, or a PNG/JPEG with a sibling <stem>.csv."""
    p = Path(path)
    if not p.exists():
        raise SkylocError(f"map {p}: not found; pass a GeoTIFF, a corners CSV or a folder holding map.csv")
    if p.is_dir():
        if not (p / "map.csv").is_file():
            raise SkylocError(f"map folder {p}: has no map.csv (corners CSV listing its tiles)")
        return _open_tiles(p / "map.csv")
    ext = p.suffix.lower()
    if ext == ".csv":
        return _open_tiles(p)
    if ext in (".tif", ".tiff"):
        from skyloc.runtime.geotiff import GeoTiffMap  # rasterio only for GeoTIFF users

        return GeoTiffMap(p)
    if ext in (".png", ".jpg", ".jpeg"):
        side = p.with_suffix(".csv")
        if not side.is_file():
            raise SkylocError(f"map image {p}: needs a sibling {side.name} with its corners "
                              "(filename, tl_lat, tl_lon, br_lat, br_lon)")
        return _open_tiles(side, image=p)
    raise SkylocError(f"map {p}: unknown type {ext!r}; use .tif/.tiff, a corners .csv, or .png/.jpg with a .csv")
