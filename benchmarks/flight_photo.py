"""The real-photo part of `skyloc bench flight` (see flight.py): the aerovloc autumn aerial photo
registered against its summer satellite map over a start prior of 300 m radius."""
from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from skyloc.core import geo
from skyloc.core.errors import SkylocError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# (registrar, conf, heading, scale_tol, prior centres used); heading: "known" = +-3 deg search;
# "search" = the estimate of an 8-rotation retrieval search, here 17 deg off, +-23.5 deg searched;
# "free" = no heading at all, the whole circle
PHOTO_CASES = (
    ("ncc", {}, "known", 0.03, 6), ("ncc", {"work_mpp": 2.0}, "known", 0.03, 6),
    ("ncc", {"work_mpp": 0.5}, "known", 0.03, 1), ("ncc", {}, "search", 0.03, 2), ("ncc", {}, "free", 0.03, 1),
    ("sift", {}, "known", 0.1, 2), ("orb", {}, "known", 0.1, 2), ("sift", {}, "free", 0.1, 1),
)
SEARCH_OFF_DEG = 17.0
PRIOR_OFFSETS_M = ((0.0, 0.0), (150.0, 150.0), (-200.0, -100.0), (250.0, 0.0), (0.0, -250.0), (-120.0, 240.0))


def aerovloc_patch(root: Path, mpp: float = 0.25) -> tuple[Any, float, float]:
    """The photo (north-up, 0.065 m/px) as a GroundPatch at ~mpp, and the truth (lat, lon)."""
    import cv2

    from skyloc.runtime.localize.rectify import GroundPatch

    q = root / "query" / "aerovloc_q0.jpg"
    bgr = cv2.imread(str(q))
    if bgr is None:
        raise SkylocError(f"bench flight: cannot read {q}")
    with open(root / "query" / "truth.csv", newline="") as f:
        row = next(csv.DictReader(f))
    k = 0.065 / mpp
    small = cv2.resize(bgr, (round(bgr.shape[1] * k), round(bgr.shape[0] * k)), interpolation=cv2.INTER_AREA)
    rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
    patch = GroundPatch(rgb, rgb.max(axis=2) > 8, 0.065 * bgr.shape[1] / small.shape[1], 0.0, (0.0, 0.0))
    return patch, float(row["lat"]), float(row["lon"])


def photo_rows(root: Path = DATA / "aerovloc", prior_m: float = 300.0, cases: Sequence = PHOTO_CASES,
               offsets: Sequence[tuple[float, float]] = PRIOR_OFFSETS_M, progress: bool = True) -> list[dict]:
    from dataclasses import replace

    from skyloc.runtime.maps.open import open_map
    from skyloc.runtime.register.registry import make_registrar

    patch, lat, lon = aerovloc_patch(root)
    gmap = open_map(root / "map")
    extent = math.hypot(*patch.image.shape[:2]) * patch.mpp
    window = 2 * prior_m + extent
    rows = []
    for name, conf, heading, scale_tol, n_prior in cases:
        reg = make_registrar(name, **conf)
        work = max(float(getattr(reg.conf, "work_mpp", 1.0)), patch.mpp)
        for de, dn in offsets[:n_prior]:
            if math.hypot(de, dn) >= prior_m:
                continue
            clat, clon = geo.offset_latlon(lat, lon, de, dn)
            mrgb, mvalid = gmap.read_crop(clat, clon, window, round(window / work))
            p, tol = patch, {"known": 3.0, "search": 23.5, "free": 180.0}[heading]
            if heading == "search":  # north-up for a heading 17 deg off the true one
                p = _turned(patch, SEARCH_OFF_DEG)
            elif heading == "free":
                p = replace(patch, heading_deg=None)  # heading-up, heading unknown (here 0)
            t = time.perf_counter()
            r = reg.register(p, mrgb, window / mrgb.shape[1], None, tol, scale_tol, map_valid=mvalid)
            dt = time.perf_counter() - t
            ok = math.isfinite(r.east_m) and math.isfinite(r.north_m)
            glat, glon = geo.offset_latlon(clat, clon, r.east_m, r.north_m) if ok else (math.nan, math.nan)
            err = float(geo.haversine_m(glat, glon, lat, lon)) if ok else math.nan
            rows.append({"registrar": name, "work_mpp": work, "heading": heading, "prior_offset_m":
                         round(math.hypot(de, dn), 1), "error_m": round(err, 2), "verified": r.verified,
                         "peak": round(r.score, 4), "second": round(r.second, 4),
                         "ratio": round(r.score / max(r.second, 1e-3), 3),
                         "heading_err_deg": round(abs((r.heading_deg + 180) % 360 - 180), 2),
                         "scale": round(r.scale, 4), "accuracy_m": round(r.accuracy_m, 2),
                         "window_m": round(window, 1), "seconds": round(dt, 3), "reason": r.reason})
            if progress:
                print(f"photo {name} {conf} {heading} prior+{math.hypot(de, dn):.0f} m: error {err:.1f} m, "
                      f"verified {r.verified}, peak {r.score:.3f}/{r.second:.3f}, {dt:.2f} s", flush=True)
    return rows


def _turned(patch: Any, angle_deg: float) -> Any:
    """The patch content turned clockwise by angle_deg about its centre, on a canvas that holds
    all of it (rectify.rotate_patch keeps a square patch's size; the photo is not square)."""
    import cv2

    from skyloc.runtime.register.ncc import _affine, _box

    h, w = patch.valid.shape
    box = _box(w, h, np.array([angle_deg]))
    M = _affine(w, h, box, 1.0, angle_deg)
    img = cv2.warpAffine(patch.image, M, box, flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    valid = cv2.warpAffine(patch.valid.astype(np.uint8), M, box, flags=cv2.INTER_NEAREST) > 0
    return type(patch)(img, valid, patch.mpp, ((patch.heading_deg or 0.0) + angle_deg) % 360.0, patch.ref_offset_m)


