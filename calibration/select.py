"""Calibration-set selection, its manifest, and the sidecar's preprocessing.

Selection is deterministic and stratified: the budget is split evenly across the folders given
(e.g. satellite tiles vs drone frames), then across each one's sub-folders (locations, flights),
and within a folder the images are taken evenly spaced in name order (so a drone spiral is
sampled from far to near). A group with fewer images than its share gives the rest back.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from skyloc.core.errors import SkylocError
from skyloc.core.preprocess import read_image, to_model_input
from skyloc.core.atomic import write_json_atomic
from skyloc.core.sidecar import InputContract, sha256_file
from skyloc.runtime.sources.base import IMAGE_EXTS  # the one list of image file types

MANIFEST_NAME = "calibration-manifest.json"
MANIFEST_FORMAT = "skyloc-calibration-manifest/1"


@dataclass(frozen=True)
class Selected:
    path: Path
    root: Path  # the folder given on the command line
    group: str  # sub-folder relative to root ("." for files directly in it)


def list_images(root: Path) -> list[Path]:
    """All images under `root`, recursively, sorted (hidden folders skipped)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in filenames if f.lower().endswith(IMAGE_EXTS) and not f.startswith("."))
    broken = [p for p in out if not p.is_file()]  # dangling symlinks, sockets named *.png ...
    if broken:
        logging.getLogger(__name__).warning(
            "skipping %d unreadable image path(s) under %s (dangling symlink?): %s", len(broken), root,
            ", ".join(str(p) for p in broken[:5]) + (" ..." if len(broken) > 5 else ""))
    return sorted(p for p in out if p.is_file())


def allocate(sizes: Sequence[int], budget: int) -> list[int]:
    """Split `budget` as evenly as possible over groups of the given sizes (water filling);
    remainders go to evenly spaced groups so no end of the list is favoured."""
    alloc = [0] * len(sizes)
    open_ = [i for i, s in enumerate(sizes) if s > 0]
    while budget > 0 and open_:
        share, rem = divmod(budget, len(open_))
        extra = {open_[(k * len(open_)) // rem] for k in range(rem)} if rem else set()
        given = 0
        for i in open_:
            take = min(share + (i in extra), sizes[i] - alloc[i])
            alloc[i] += take
            given += take
        budget -= given
        open_ = [i for i in open_ if alloc[i] < sizes[i]]
        if given == 0:
            break
    return alloc


def _evenly_spaced(items: Sequence[Path], k: int) -> list[Path]:
    n = len(items)
    return [items[((2 * j + 1) * n) // (2 * k)] for j in range(k)]


def select_images(image_dirs: Iterable[str | os.PathLike], num_images: int = 256) -> list[Selected]:
    """Deterministic stratified selection of up to `num_images` images from `image_dirs`."""
    roots = [Path(d).resolve() for d in image_dirs]
    if not roots:
        raise SkylocError("no calibration image folders given: pass --images DIR [DIR ...]")
    if num_images < 1:
        raise SkylocError(f"--num-images must be >= 1, got {num_images}")
    per_root: list[dict[str, list[Path]]] = []
    for root in roots:
        if not root.is_dir():
            raise SkylocError(f"calibration image folder {root} not found")
        groups: dict[str, list[Path]] = {}
        for p in list_images(root):
            groups.setdefault(str(p.parent.relative_to(root)), []).append(p)
        if not groups:
            raise SkylocError(f"no images ({', '.join(IMAGE_EXTS)}) under {root}")
        per_root.append(groups)
    root_alloc = allocate([sum(len(v) for v in g.values()) for g in per_root], num_images)
    chosen: list[Selected] = []
    for root, groups, budget in zip(roots, per_root, root_alloc):
        names = sorted(groups)
        for name, k in zip(names, allocate([len(groups[n]) for n in names], budget)):
            chosen.extend(Selected(p, root, name) for p in _evenly_spaced(groups[name], k) if k)
    return chosen


def write_manifest(selected: Sequence[Selected], out_dir: str | os.PathLike, **info) -> Path:
    """`OUT/calibration-manifest.json`: every file with its sha256, so the calibration can be
    audited and repeated."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    roots = sorted({str(s.root) for s in selected})
    counts: dict[str, int] = {}
    for s in selected:
        counts[f"{s.root}/{s.group}"] = counts.get(f"{s.root}/{s.group}", 0) + 1
    data = {
        "format": MANIFEST_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "selection": "stratified: even split over the given folders, then their sub-folders; evenly spaced by name",
        "roots": roots,
        "num_images": len(selected),
        "per_group": counts,
        "files": [{"path": str(s.path), "root": str(s.root), "group": s.group, "sha256": sha256_file(s.path)}
                  for s in selected],
        **info,
    }
    return write_json_atomic(out_dir / MANIFEST_NAME, data)


def load_batch(paths: Sequence[str | os.PathLike], contract: InputContract) -> np.ndarray:
    """Images as the model sees them everywhere (runtime.preprocess: OpenCV decode, centre square
    crop, INTER_AREA resize, as training, eval and the runtime) -> uint8 (N, H, W, 3) RGB."""
    if contract.layout != "NHWC" or contract.dtype != "uint8" or contract.normalization != "baked":
        raise SkylocError(f"input contract {contract.layout}/{contract.dtype}/{contract.normalization} is not "
                          "the uint8 NHWC baked-normalisation contract that `skyloc export` writes")
    return to_model_input([read_image(p) for p in paths], contract, bgr=False)
