"""`open_map`: any map a user passes (GeoTIFF, corners CSV, map folder, image with its CSV)."""
from __future__ import annotations

from pathlib import Path

from skyloc.core.errors import SkylocError
from skyloc.runtime.maps.base import GeoMap
from skyloc.runtime.maps.mosaic import open_tiles


def open_map(path: Path | str) -> GeoMap:
    """Open a GeoTIFF, a corners CSV, a folder with map.csv, or a PNG/JPEG with a sibling <stem>.csv."""
    p = Path(path)
    if not p.exists():
        raise SkylocError(f"map {p}: not found; pass a GeoTIFF, a corners CSV or a folder holding map.csv")
    if p.is_dir():
        if not (p / "map.csv").is_file():
            raise SkylocError(f"map folder {p}: has no map.csv (corners CSV listing its tiles)")
        return open_tiles(p / "map.csv")
    ext = p.suffix.lower()
    if ext == ".csv":
        return open_tiles(p)
    if ext in (".tif", ".tiff"):
        from skyloc.runtime.maps.geotiff import (
            GeoTiffMap,  # rasterio only for GeoTIFF users
        )

        return GeoTiffMap(p)
    if ext in (".png", ".jpg", ".jpeg"):
        side = p.with_suffix(".csv")
        if not side.is_file():
            raise SkylocError(f"map image {p}: needs a sibling {side.name} with its corners "
                              "(filename, tl_lat, tl_lon, br_lat, br_lon)")
        return open_tiles(side, image=p)
    raise SkylocError(f"map {p}: unknown type {ext!r}; use .tif/.tiff, a corners .csv, or .png/.jpg with a .csv")
