"""Shared fixtures for the runtime-core tests: a tiny ONNX embedder built with onnx.helper (no
torch), its numpy twin, and a small synthetic georeferenced map on disk."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from skyloc.core.sidecar import IMAGENET_MEAN, IMAGENET_STD

GRID = 4  # the model average-pools the image to GRID x GRID cells


def tiny_weights(dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((3 * GRID * GRID, dim)).astype(np.float32)


def make_tiny_model(path: Path, size: int = 32, dim: int = 16, seed: int = 0, model_id: str = "tiny-model-0",
                    variant: str = "global", batch: int | str = "batch") -> Path:
    """uint8 NHWC RGB 'image' -> normalise -> GRIDxGRID average pool -> linear -> L2 'embedding'
    (the benchmarks' tiny embedder; `tiny_reference` below is its independent numpy twin)."""
    from skyloc.benchmarks.fault_world import tiny_model

    return tiny_model(Path(path), size=size, dim=dim, weights=tiny_weights(dim, seed), model_id=model_id,
                      variant=variant, batch=batch, backbone="tiny-test")


def tiny_reference(batch_nhwc_uint8: np.ndarray, dim: int = 16, seed: int = 0) -> np.ndarray:
    """The tiny model's graph in plain numpy (independent of onnxruntime)."""
    x = batch_nhwc_uint8.astype(np.float64)
    x = (x - np.array(IMAGENET_MEAN) * 255) / (np.array(IMAGENET_STD) * 255)
    b, h, w, _ = x.shape
    k = h // GRID
    pooled = x.reshape(b, GRID, k, GRID, k, 3).mean(axis=(2, 4))  # (b, GRID, GRID, 3)
    flat = pooled.transpose(0, 3, 1, 2).reshape(b, -1)  # NCHW flatten order
    raw = flat @ tiny_weights(dim, seed).astype(np.float64)
    return raw / np.linalg.norm(raw, axis=1, keepdims=True)


def make_map(folder: Path, width_px: int = 480, height_px: int = 400, m_per_px: float = 1.0,
             lat0: float = 60.40, lon0: float = 22.46, seed: int = 0) -> Path:
    """A textured north-up PNG with a sibling corners CSV; returns the PNG path."""
    from skyloc.core import geo
    from skyloc.runtime.maps.mosaic import write_corners_csv

    rng = np.random.default_rng(seed)
    img = np.zeros((height_px, width_px, 3), np.float32)
    for scale in (4, 16, 64):  # multi-scale noise so neighbouring tiles differ
        small = rng.random((height_px // scale + 2, width_px // scale + 2, 3)).astype(np.float32)
        img += cv2.resize(small, (width_px + 2 * scale, height_px + 2 * scale),
                          interpolation=cv2.INTER_CUBIC)[scale:scale + height_px, scale:scale + width_px]
    img = np.clip(img / 3 * 255, 0, 255).astype(np.uint8)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / "map.png"
    cv2.imwrite(str(png), img[:, :, ::-1])
    tl_lat, tl_lon, br_lat, br_lon = geo.corners_for_centre(lat0, lon0, width_px * m_per_px, height_px * m_per_px)
    write_corners_csv(folder / "map.csv", [("map.png", tl_lat, tl_lon, br_lat, br_lon)])
    return png


def make_flight_case(folder: Path, seconds: float = 10.0, fps: float = 2.0, tile_m: float = 50.0,
                     stride_m: float = 20.0, seed: int = 0, world_m: float = 700.0,
                     world_seed: int = 1) -> dict[str, Path]:
    """A CI-sized localization case without torch: the procedural world, the tiny ONNX model, a tile
    set of the world made by it, and a simulated flight over the same world with the altitude
    wandering 100-140 m, the camera tilted up to 10 deg, the airframe rolling / pitching up to 3 deg
    and the heading random-walking (the run is told none of it but the altitude and attitude).
    Returns the paths: model, tiles, map (corners CSV), video, truth, camera (flight.json)."""
    from skyloc.synth.flight import FlightConfig, make_flight
    from skyloc.synth.world import make_world
    from skyloc.runtime.maps.tileset_build import build_tileset

    folder = Path(folder)
    world = make_world(folder / "world", seed=world_seed, size_m=world_m, mpp=1.0)
    model = make_tiny_model(folder / "tiny.onnx", size=64, dim=32, model_id="tiny-flight")
    tiles = build_tileset(model, world, folder / "tiles.npz", tile_m=tile_m, stride_m=stride_m, progress=False)
    cfg = FlightConfig(seconds=seconds, fps=fps, speed_mps=8.0, altitude_range_m=(100.0, 140.0), tilt_max_deg=10.0,
                       attitude_deg=3.0, yaw_mode="random-walk", seed=seed, overwrite=True)
    video = make_flight(world, folder / "flight", cfg)
    return {"model": model, "tiles": tiles, "map": world, "video": video, "truth": video.parent / "truth.csv",
            "camera": video.parent / "flight.json", "dir": folder}
