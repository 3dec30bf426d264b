"""Shared by the export / calibration / engine tests: structured synthetic images and a tiny
random-init checkpoint whose BatchNorm statistics come from those images (as training would
set them), so its embeddings are not dominated by arbitrary BN scales."""
from __future__ import annotations

import importlib.util

from pathlib import Path

import cv2
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def structured_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth colour noise with a few filled shapes: image-like statistics, uint8 RGB."""
    base = cv2.GaussianBlur(rng.random((height, width, 3)).astype(np.float32), (0, 0), max(height, width) / 16)
    base = (base - base.min()) / (base.max() - base.min() + 1e-6) * 200 + 20
    for _ in range(4):
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = (int(v) for v in rng.integers(0, min(height, width), 2))
        r = int(rng.integers(3, max(4, min(height, width) // 4)))
        if rng.random() < 0.5:
            cv2.circle(base, (x, y), r, color, -1)
        else:
            cv2.rectangle(base, (x, y), (x + r, y + r), color, -1)
    return np.clip(base, 0, 255).astype(np.uint8)


def structured_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([structured_image(rng, size, size) for _ in range(n)])


def normalise_reference(images: np.ndarray):
    """uint8 NHWC -> float NCHW with ImageNet mean/std, written independently of export/."""
    import torch

    x = images.astype(np.float32) / 255.0
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def make_tiny_checkpoint(path: Path, seed: int = 0, bn_batches: int = 6, **overrides) -> Path:
    import torch

    from skyloc.training.checkpoint import save_checkpoint
    from skyloc.training.config import preset
    from skyloc.training.model import build_model

    cfg, tcfg = preset("tiny", num_classes=5, **overrides)
    torch.manual_seed(seed)
    model = build_model(cfg)
    model.train()
    with torch.no_grad():  # BN running stats from image-like data, as a training run would leave them
        for i in range(bn_batches):
            model(normalise_reference(structured_images(16, cfg.image_size, seed=100 + i)))
    model.eval()
    return save_checkpoint(path, model, cfg, tcfg)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
HAVE_CUDA_BINDING = any(importlib.util.find_spec(m) is not None for m in ("cuda", "pycuda"))


def gpu_skip_reason() -> str | None:
    """Why the GPU tests cannot run here (None: TensorRT, a CUDA binding and a usable GPU exist)."""
    if not HAVE_TRT:
        return ("TensorRT (python package `tensorrt`) is not installed here; these tests also need cuda-python "
                "or pycuda and an NVIDIA GPU")
    if not HAVE_CUDA_BINDING:
        return "TensorRT is installed but neither cuda-python nor pycuda (pip install cuda-python)"
    from skyloc.runtime.backends.cuda_memory import open_cuda
    from skyloc.core.errors import SkylocError

    try:
        open_cuda(0).release()
    except SkylocError as exc:
        return f"TensorRT is installed but no GPU is usable: {exc}"
    return None
