"""Output folders of `skyloc synth`: refuse to overwrite, keep a copy of the source map beside the output."""
from __future__ import annotations

from pathlib import Path
import shutil

from skyloc.core.errors import SkylocError
from skyloc.runtime.maps.base import GeoMap
from skyloc.runtime.maps.geotiff import GeoTiffMap
from skyloc.runtime.maps.mosaic import TiledMap, write_corners_csv
from skyloc.runtime.maps.open import open_map
from skyloc.synth.world import WorldConfig, make_world


def prepare_out(out: Path, names: tuple[str, ...], overwrite: bool, keep: Path | None) -> None:
    """Make out ready: refuse (or, with overwrite, delete) our previous outputs in it.

    A folder holding `keep` (the input map, e.g. OUT/map from `skyloc synth world`) is left alone.
    """
    def holds_input(p: Path) -> bool:
        return keep is not None and p.resolve() in keep.resolve().parents

    present = [out / n for n in names if (out / n).exists() and not holds_input(out / n)]
    if present and not overwrite:
        raise SkylocError(f"{out} already holds output ({present[0].name}); pass --overwrite or another --out")
    for p in present:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def keep_map_copy(gmap: GeoMap, dest: Path) -> Path:
    """Copy the map's files into dest (a folder) so the output carries its source; returns the map path."""
    dest.mkdir(parents=True, exist_ok=True)
    if isinstance(gmap, GeoTiffMap):
        src = Path(gmap.source)
        for side in (src, src.with_name(src.name + ".ovr"), src.with_name(src.name + ".aux.xml")):
            if side.is_file() and side.resolve() != (dest / side.name).resolve():
                shutil.copyfile(side, dest / side.name)
        return dest / src.name
    if isinstance(gmap, TiledMap) and all(t.path is not None for t in gmap.tiles):
        rows = []
        for t in gmap.tiles:
            rel = Path(t.filename)
            name = rel.name if rel.is_absolute() or ".." in rel.parts else str(rel)  # stay inside dest
            target = dest / name
            if t.path.resolve() != target.resolve():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(t.path, target)
            rows.append((name, t.tl_lat, t.tl_lon, t.br_lat, t.br_lon))
        csv_path = dest / "map.csv"
        if Path(gmap.source).resolve() != csv_path.resolve():
            write_corners_csv(csv_path, rows)
        return csv_path
    raise SkylocError(f"map {gmap.source}: only file-backed maps can be copied into the output")


def resolve_map(map_path: Path | str | None, out_dir: Path, seed: int, size_m: float = WorldConfig.size_m,
                mpp: float = WorldConfig.mpp) -> Path:
    """The map to use: the given one, or the built-in procedural world generated into out_dir/map."""
    if map_path is not None:
        return Path(map_path)
    return make_world(out_dir / "map", seed=seed, size_m=size_m, mpp=mpp)


def open_output_map(map_path: Path | str | None, out: Path, names: tuple[str, ...], overwrite: bool,
                    seed: int, world_size_m: float, world_mpp: float) -> tuple[GeoMap, Path]:
    """Open the source map (or make the procedural world in OUT), prepare OUT and keep a copy of
    the map in OUT/map. A bad map fails before OUT is touched."""
    gmap = open_map(map_path) if map_path is not None else None
    prepare_out(out, names, overwrite, Path(map_path) if map_path is not None else None)
    if gmap is None:
        gmap = open_map(resolve_map(None, out, seed, world_size_m, world_mpp))
    return gmap, keep_map_copy(gmap, out / "map")
