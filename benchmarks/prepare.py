"""Make benchmark models from a checkpoint (needs torch + onnx): one FP32 export per (size,
variant), FP16 conversions and INT8 calibrations of it, and the bare backbone per size.

A checkpoint records one input size; the network itself is size-agnostic (convolutions and
masks built for the map size), so for another size a copy of the checkpoint with that
`image_size` is exported. Its model_id changes with the size, as it should: tile sets of one
size cannot be searched with another.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from skyloc.core.errors import SkylocError


def checkpoint_with(checkpoint: str | os.PathLike, work: Path, tag: str, **model_config: object) -> Path:
    """`checkpoint` itself if its model config already has these values, else a copy (weights
    unchanged) with them set, written to work/<stem>-<tag>.pt. Its model_id is left out, so the
    exporter recomputes it from weights + config."""
    import torch

    from skyloc.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    if all(ckpt["model_config"].get(k) == v for k, v in model_config.items()):
        return Path(checkpoint)
    ckpt = {k: v for k, v in ckpt.items() if k in ("format", "model", "model_config", "train_config")}
    ckpt["model_config"] = {**ckpt["model_config"], **model_config}
    out = work / f"{Path(checkpoint).stem}-{tag}.pt"
    torch.save(ckpt, out)
    return out


def checkpoint_at_size(checkpoint: str | os.PathLike, size: int, work: Path) -> Path:
    """`checkpoint` itself if it is already at `size`, else a copy with image_size = size."""
    return checkpoint_with(checkpoint, work, f"s{size}", image_size=int(size))


def calibration_images(contract_size: int, count: int, folder: str | os.PathLike | None, seed: int = 0) -> np.ndarray:
    """uint8 (count, size, size, 3): from `folder` (stratified selection, centre crop + area
    resize) or, without one, smooth random images — enough to time an INT8 model, not to judge
    its accuracy (the accuracy benchmark calibrates on real training images)."""
    if folder is not None:
        from skyloc.calibration.select import load_batch, select_images
        from skyloc.core.sidecar import InputContract

        chosen = select_images([folder], count)
        return load_batch([s.path for s in chosen], InputContract(height=contract_size, width=contract_size))
    import cv2

    rng = np.random.default_rng(seed)
    out = np.empty((count, contract_size, contract_size, 3), np.uint8)
    for i in range(count):
        small = rng.integers(0, 256, (max(2, contract_size // 8),) * 2 + (3,), dtype=np.uint8)
        img = cv2.resize(small, (contract_size, contract_size), interpolation=cv2.INTER_CUBIC)
        noise = rng.normal(0, 8, img.shape)
        out[i] = np.clip(img + noise, 0, 255).astype(np.uint8)
    return out


def _derive(fp32: Path, precisions: Sequence[str], images: np.ndarray, work: Path, progress: bool) -> list[Path]:
    out: list[Path] = []
    if "fp32" in precisions:
        out.append(fp32)
    if "fp16" in precisions:
        from skyloc.export.fp16 import to_fp16

        out.append(to_fp16(fp32, fp32.with_name(fp32.stem + ".fp16.onnx")))
    int8 = [p for p in precisions if p.startswith("int8")]
    if int8:
        from skyloc.calibration.quantize import quantize_pair

        paths = quantize_pair(fp32, images, work, progress=progress,
                              extra_info={"calibration_source": "benchmark"})
        out += [paths[p] for p in int8]
    return out


def prepare_models(checkpoint: str | os.PathLike, work: Path, variants: Sequence[str], precisions: Sequence[str],
                   sizes: Sequence[int] | None, calib_images: str | os.PathLike | None, calib_count: int,
                   opset: int | None, with_backbone: bool = True, progress: bool = True) -> list[Path]:
    """Every (size, variant, precision) model, plus the bare backbone per (size, precision)."""
    from skyloc.benchmarks.backbone_export import export_backbone
    from skyloc.export.onnx_export import DEFAULT_OPSET, export_onnx
    from skyloc.training.checkpoint import load_checkpoint

    bad = [p for p in precisions if p not in ("fp32", "fp16", "int8-ort", "int8-trt")]
    if bad:
        raise SkylocError(f"unknown precision(s) {bad}; choose from fp32, fp16, int8-ort, int8-trt")
    work.mkdir(parents=True, exist_ok=True)
    sizes = list(sizes or [int(load_checkpoint(checkpoint)["model_config"]["image_size"])])
    opset = int(opset or DEFAULT_OPSET)
    out: list[Path] = []
    for size in sizes:
        ck = checkpoint_at_size(checkpoint, size, work)
        images = calibration_images(size, calib_count, calib_images)
        for variant in variants:
            if progress:
                print(f"[bench latency] exporting {variant} at {size}px", flush=True)
            fp32 = export_onnx(ck, work / f"{variant}-s{size}.onnx", variant=variant, opset=opset)
            out += _derive(fp32, precisions, images, work, progress)
        if with_backbone:
            bb = export_backbone(ck, work / f"backbone-s{size}.onnx", size=size, opset=opset)
            out += _derive(bb, precisions, images, work, progress)
    return out


def prepare_backbones(checkpoint: str | os.PathLike, work: Path, sizes: Sequence[int], opset: int | None,
                      precisions: Sequence[str] = ("fp32",)) -> list[Path]:
    """The bare backbone of `checkpoint` at each size (for `--models ... --with-backbone CKPT`)."""
    from skyloc.benchmarks.backbone_export import export_backbone

    work.mkdir(parents=True, exist_ok=True)
    out = []
    for size in sizes:
        bb = export_backbone(checkpoint, work / f"backbone-s{size}.onnx", size=size, opset=opset)
        out += _derive(bb, precisions, calibration_images(size, 16, None), work, progress=False)
    return out


def build_engines(onnx_paths: Sequence[Path], work: Path, max_batch: int, progress: bool = True) -> list[Path]:
    """TensorRT engines for every ONNX TensorRT can take (not the U8S8 int8-ort build, whose
    uint8 activations are ONNX Runtime's format), written to `work`."""
    from skyloc.export.engine import build_engine
    from skyloc.core.sidecar import read_model_sidecar

    work.mkdir(parents=True, exist_ok=True)
    out = []
    for p in onnx_paths:
        if read_model_sidecar(p).precision == "int8-ort":
            continue
        if progress:
            print(f"[bench latency] building TensorRT engine for {p.name}", flush=True)
        out.append(build_engine(p, work / (p.stem + ".engine"), max_batch=max_batch,
                                timing_cache=work / "timing.cache"))
    return out
