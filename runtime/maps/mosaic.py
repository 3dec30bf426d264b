"""North-up PNG/JPEG tiles georeferenced by a corners CSV (the turku-satellite/map.csv format)."""
from __future__ import annotations

import csv
import math
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from skyloc.core import geo
from skyloc.core.atomic import atomic_open
from skyloc.core.errors import SkylocError
from skyloc.runtime.maps.base import GeoMap, bilinear, check_corners

CSV_HEADER = ["Filename", " Top_left_lat", "Top_left_lon", "Bottom_right_lat", "Bottom_right_long"]


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
            try:
                raw = cv2.imread(str(t.path), cv2.IMREAD_UNCHANGED)
            except cv2.error as exc:  # e.g. a header claiming more pixels than OpenCV's decoding limit
                raise SkylocError(f"map tile {t.path}: OpenCV refuses to decode it ({str(exc).strip().splitlines()[-1]}); "
                                  "a header claiming a huge size is damaged or hostile: replace the file, or split a "
                                  "genuinely huge map into tiles listed in a corners CSV") from None
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
    try:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        img = None
    if img is None:
        raise SkylocError(f"map tile {path}: cannot read the image; replace or remove it")
    return int(img.shape[1]), int(img.shape[0])


def read_corners_csv(path: Path) -> list[tuple[str, float, float, float, float]]:
    """Rows (filename, tl_lat, tl_lon, br_lat, br_lon) of a corners CSV (header optional)."""
    rows = []
    try:
        with open(path, newline="") as f:
            recs = list(csv.reader(f, skipinitialspace=True))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise SkylocError(f"{path} is not a text corners CSV ({type(exc).__name__}: {exc}); expected lines "
                          "'filename, tl_lat, tl_lon, br_lat, br_lon' as in turku-satellite/map.csv") from None
    for n, rec in enumerate(recs, start=1):
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


def open_tiles(csv_path: Path, image: Path | None = None) -> TiledMap:
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
