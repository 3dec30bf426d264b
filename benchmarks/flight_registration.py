"""Registration-only flight rows: each frame's registrar run at the true place (explains the pipeline's figures; never replaces them)."""
from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from skyloc.benchmarks.flight_setup import _present_maps, fit_flight
from skyloc.core import geo
from skyloc.core.errors import SkylocError


def registration_flight_rows(maps: Sequence[tuple[str, Path | None]], altitudes: Sequence[float], work_dir: Path,
                             seconds: float = 20.0, fps: float = 1.0, tilt_max: float = 15.0, width: int = 640,
                             height: int = 480, fov_deg: float = 60.0, seed: int = 0, register_px: int = 160,
                             headings: Sequence[str] = ("known", "unknown"), registrar: str = "ncc",
                             progress: bool = True, world_m: float = 1500.0, ground_width_m: float = 100.0
                             ) -> list[dict]:
    """The fine stage alone over simulated flights, with the right place given as retrieval
    would give it (a tile centre up to one stride off the truth). Frames are rectified with the
    flight's camera + telemetry exactly as the Localizer does (tile-sized patch of register_px at
    tile_m / register_px m/px); heading unknown = a heading-up patch turned by an estimate up to
    +-22.5 deg off (half the step of an 8-rotation search), residual searched +-23.5 deg; the map
    crop is the Localizer's (1.2 tile + 2 x max(1.5 stride, tile / 4))."""
    import cv2

    from skyloc.runtime.localize.rectify import rectify, rotate_patch
    from skyloc.runtime.maps.imagery import MapImagery
    from skyloc.runtime.pose.camera import load_camera
    from skyloc.runtime.pose.frame_pose import FramePose
    from skyloc.runtime.register.registry import make_registrar
    from skyloc.runtime.sources.files import VideoFileSource

    reg = make_registrar(registrar)
    rng = np.random.default_rng(seed)
    rows = []
    for map_name, map_path in _present_maps(maps, rows, work_dir, seed, world_m):
        imagery = MapImagery(map_path)
        for alt in altitudes:
            base = {"map": map_name, "altitude_m": alt}
            try:
                video, base = fit_flight(map_path, work_dir / f"{map_name}-{alt:g}" / "flight", alt, seconds, fps,
                                         tilt_max, width, height, fov_deg, seed, ground_width_m)
                base = {"map": map_name, **base}
            except SkylocError as exc:
                rows.append({**base, "status": f"skipped: {exc}"})
                continue
            tile_m = base["tile_m"]
            stride = max(5.0, tile_m / 3)
            cam = load_camera(video.parent / "flight.json")
            with open(video.parent / "truth.csv", newline="") as f:
                truth = list(csv.DictReader(f))
            with VideoFileSource(video) as src:  # the runtime's reader: frames as `skyloc run` gets them
                frames = [cv2.cvtColor(f.image, cv2.COLOR_BGR2RGB) for f in src if f.image is not None]
            for heading in headings:
                recs = []
                for rgb, t in zip(frames, truth):
                    pose = FramePose(altitude_m=float(t["altitude_m"]), roll_deg=float(t["roll_deg"]),
                                     pitch_deg=float(t["pitch_deg"]), camera_tilt_deg=float(t["tilt_deg"]),
                                     yaw_deg=float(t["yaw_deg"]) if heading == "known" else None)
                    patch = rectify(rgb, cam, pose, tile_m / register_px, register_px)
                    tol = 5.0
                    if heading != "known":
                        patch = rotate_patch(patch, float(t["yaw_deg"]) + rng.uniform(-22.5, 22.5))
                        tol = 23.5
                    de, dn = rng.uniform(-stride, stride, 2)
                    clat, clon = geo.offset_latlon(float(t["center_lat"]), float(t["center_lon"]), de, dn)
                    crop_m = 1.2 * tile_m + 2 * max(1.5 * stride, 0.25 * tile_m)
                    mpp = max(patch.mpp, float(getattr(reg.conf, "work_mpp", 0.0) or 0.0))
                    mrgb, mvalid = imagery.crop(clat, clon, crop_m, mpp)
                    t0 = time.perf_counter()
                    r = reg.register(patch, mrgb, crop_m / mrgb.shape[1], None, tol, 0.03, map_valid=mvalid)
                    dt = time.perf_counter() - t0
                    if math.isfinite(r.east_m):
                        glat, glon = geo.offset_latlon(clat, clon, r.east_m, r.north_m)
                        err = float(geo.haversine_m(glat, glon, float(t["center_lat"]), float(t["center_lon"])))
                    else:
                        err = math.nan
                    recs.append({"verified": r.verified, "error_m": err, "accuracy_m": r.accuracy_m,
                                 "heading_err": abs((r.heading_deg - float(t["yaw_deg"]) + 180) % 360 - 180),
                                 "ms": 1000 * dt})
                row = {**base, "heading": heading, "status": "ok", **_reg_metrics(recs)}
                rows.append(row)
                if progress:
                    print(f"registration flight {map_name} {alt:g} m heading {heading}: verified "
                          f"{row['verified_rate']:.2f}, median {row['verified_median_m']:.2f} m, "
                          f"p95 {row['verified_p95_m']:.2f} m, max {row['verified_max_m']:.1f} m, "
                          f"{row['register_p50_ms']:.0f} ms", flush=True)
    return rows


def _reg_metrics(recs: Sequence[dict]) -> dict[str, Any]:
    ver = [r for r in recs if r["verified"]]
    err = np.array([r["error_m"] for r in ver], float)
    return {"frames": len(recs), "verified": len(ver), "verified_rate": len(ver) / len(recs) if recs else math.nan,
            "verified_median_m": float(np.median(err)) if err.size else math.nan,
            "verified_p95_m": float(np.percentile(err, 95)) if err.size else math.nan,
            "verified_max_m": float(err.max()) if err.size else math.nan,
            "within_2acc": float(np.mean([r["error_m"] <= 2 * r["accuracy_m"] for r in ver])) if ver else math.nan,
            "heading_err_p50_deg": float(np.median([r["heading_err"] for r in ver])) if ver else math.nan,
            "register_p50_ms": float(np.median([r["ms"] for r in recs])) if recs else math.nan}
