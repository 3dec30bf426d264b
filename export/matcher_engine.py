"""`skyloc engine` for the learned matcher's ONNX (`skyloc export matcher`): a TensorRT engine
whose input H and W vary within a profile the user gives (`--image-shapes`), batch 1.

The matcher graph declares H and W dynamic (multiples of its stride), so the engine gets one
optimisation profile over them: min / opt / max image shapes, each a multiple of the stride.
The engine is run once at each of the three shapes through the runtime's TensorRTRunner
(outputs checked for shape and finiteness) before it and its sidecar are moved into place.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from skyloc.core.atomic import write_json_atomic
from skyloc.core.errors import SkylocError
from skyloc.core.sidecar import model_sidecar_path, sha256_file
from skyloc.export.engine import commit_pair, gpu_info
from skyloc.export.trt_build import build_plan, save_timing_cache
from skyloc.runtime.backends.tensorrt_backend import import_tensorrt
from skyloc.runtime.backends.tensorrt_runner import MATCHER_ENGINE_FORMAT, TensorRTRunner
from skyloc.runtime.register.extractor import MATCHER_FORMAT, read_sidecar

HW = tuple[int, int]


def sidecar_format(onnx_path: Path) -> str | None:
    """The `format` its sidecar (`.json` beside it) declares, None when there is none readable."""
    import json

    try:
        fmt = json.loads(Path(onnx_path).with_suffix(".json").read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None
    return fmt if isinstance(fmt, str) else None


def is_matcher_onnx(onnx_path: Path) -> bool:
    """The ONNX's sidecar is a matcher's (format skyloc-matcher/1), not an embedding model's."""
    return sidecar_format(onnx_path) == MATCHER_FORMAT


def parse_image_shapes(text: str, multiple: int) -> tuple[HW, HW, HW]:
    """"HxW" (min = opt = max) or "HxW,HxW,HxW" (min, opt, max), each side a multiple of `multiple`."""
    try:
        shapes = [tuple(int(v) for v in part.lower().split("x")) for part in text.split(",")]
    except ValueError:
        shapes = []
    if len(shapes) == 1:
        shapes *= 3
    if len(shapes) != 3 or any(len(s) != 2 for s in shapes):
        raise SkylocError(f"--image-shapes {text!r}: give HxW, or min,opt,max as HxW,HxW,HxW (e.g. 480x640)")
    for s in shapes:
        if any(v <= 0 or v % multiple for v in s):
            raise SkylocError(f"--image-shapes {text!r}: {s[0]}x{s[1]} is not a positive multiple of the "
                              f"matcher's stride {multiple} (the extractor pads images to it)")
    lo, opt, hi = shapes
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
        raise SkylocError(f"--image-shapes {text!r}: need min <= opt <= max in both H and W")
    return lo, opt, hi  # type: ignore[return-value]


def check_matcher_source(onnx_path: Path) -> dict[str, Any]:
    meta = read_sidecar(onnx_path)
    if meta.get("onnx_sha256") and sha256_file(onnx_path) != meta["onnx_sha256"]:
        raise SkylocError(f"{onnx_path} does not match its sidecar (sha256 differs): the file changed after "
                          "export; re-export with `skyloc export matcher`")
    return meta


def build_matcher_engine(onnx_path: str | os.PathLike, out: str | os.PathLike, image_shapes: str,
                         timing_cache: str | os.PathLike | None = None, version_compatible: bool = False,
                         workspace_mb: int | None = None, verbose: bool = False, verify: bool = True) -> Path:
    """Engine at `out` (+ `out.json`) from the matcher ONNX, for images within `image_shapes`."""
    onnx_path, out = Path(onnx_path), Path(out)
    meta = check_matcher_source(onnx_path)
    lo, opt, hi = parse_image_shapes(image_shapes, int(meta["input"]["multiple"]))
    trt = import_tensorrt()
    gpu_name, cc = gpu_info()

    def profile(shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
        if len(shape) != 4 or shape[0] not in (1, -1) or shape[3] != 3:
            raise SkylocError(f"{onnx_path} input has shape {shape}; the matcher takes (1, H, W, 3)")
        return tuple((1, h, w, 3) for h, w in (lo, opt, hi))

    plan, config = build_plan(trt, onnx_path, profile, cc, timing_cache=timing_cache,
                              version_compatible=version_compatible, workspace_mb=workspace_mb, verbose=verbose)
    sidecar = {"format": MATCHER_ENGINE_FORMAT, "matcher": meta, "onnx_sha256": sha256_file(onnx_path),
               "tensorrt_version": trt.__version__, "gpu_name": gpu_name, "compute_capability": cc,
               "version_compatible": bool(version_compatible),
               "profile": {"min": list(lo), "opt": list(opt), "max": list(hi)}}
    out.parent.mkdir(parents=True, exist_ok=True)
    commit_pair(out, plan, lambda p: write_json_atomic(model_sidecar_path(p), sidecar, sort_keys=True),
                (lambda p: verify_matcher_engine(p, (lo, opt, hi))) if verify else None)
    save_timing_cache(trt, config, timing_cache, gpu_name, cc)
    return out


def verify_matcher_engine(engine: Path, shapes: tuple[HW, ...]) -> None:
    """Run the engine at each profile shape: every output present, shaped as the matcher's
    contract says (heatmap at full size, descriptors / reliability per 8x8 cell), finite."""
    with TensorRTRunner(engine) as runner:
        cell = int(runner.sidecar["matcher"].get("cell", 8))
        dim = int(runner.sidecar["matcher"].get("descriptor_dim", 64))
        for h, w in shapes:
            got = runner.run(np.full((1, h, w, 3), 128, np.uint8))
            want = {"heatmap": (1, 1, h, w), "descriptors": (1, dim, h // cell, w // cell),
                    "reliability": (1, 1, h // cell, w // cell)}
            for name, shape in want.items():
                if name in got and (got[name].shape != shape or not np.isfinite(got[name]).all()):
                    raise SkylocError(f"matcher engine {engine.name} gives {name} {got[name].shape} (finite: "
                                      f"{bool(np.isfinite(got[name]).all())}) at {h}x{w}, expected {shape}, finite")
