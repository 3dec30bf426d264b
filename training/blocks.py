"""Square-ring block partition of a feature map (LPN rings + MSBA multiscale centre squares).

Pure tensor code, no parameters. Each block is average-pooled over its own pixels (a true
mean). LPN instead averages a ring over its enclosing square with the centre zeroed; that only
scales each ring by a constant that the following BatchNorm absorbs, so the two are equivalent
after the head.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F


def ring_width(size: int, num_rings: int) -> int:
    return size // (2 * num_rings)


def working_size(h: int, w: int, num_rings: int) -> tuple[int, int]:
    """Map size the partition is computed on: even, and large enough for rings of width >= 1.

    Odd sizes have no centred square of integer half-size, so they are resized up to the next
    even size (bilinear), as are maps too small for 1-pixel rings.
    """
    def fix(s: int) -> int:
        s = max(s, 2 * num_rings)
        return s + (s % 2)

    return fix(h), fix(w)


def block_masks(h: int, w: int, num_rings: int, multiscale: bool) -> torch.Tensor:
    """Binary masks (N, h, w) as a fresh tensor (see `_block_masks_np`)."""
    return torch.from_numpy(_block_masks_np(h, w, num_rings, multiscale).copy())


# Cached as numpy, not torch: a tensor created while torch.export traces would be a fake
# placeholder, and caching it would break every later eager call in the process.
@functools.lru_cache(maxsize=32)
def _block_masks_np(h: int, w: int, num_rings: int, multiscale: bool) -> np.ndarray:
    """Binary masks (N, h, w): rings 1..num_rings (inner to outer), then the centre squares of
    rings 1-2 and rings 1-3 when `multiscale`. Ring i = centre square of half-size i*rw minus the
    one of half-size (i-1)*rw; the outer ring takes everything left to the map's border."""
    if h % 2 or w % 2:
        raise ValueError(f"block masks need an even map size, got {h}x{w}")
    rh, rw = ring_width(h, num_rings), ring_width(w, num_rings)
    if rh < 1 or rw < 1:
        raise ValueError(f"map {h}x{w} is too small for {num_rings} rings")

    def square(i: int) -> np.ndarray:
        m = np.zeros((h, w), dtype=np.float32)
        if i >= num_rings:
            m[:] = 1.0
        elif i > 0:
            m[h // 2 - i * rh : h // 2 + i * rh, w // 2 - i * rw : w // 2 + i * rw] = 1.0
        return m

    masks = [square(i) - square(i - 1) for i in range(1, num_rings + 1)]
    if multiscale:
        masks += [square(2), square(3)]
    out = np.stack(masks)
    out.setflags(write=False)
    return out


def pool_blocks(f: torch.Tensor, num_rings: int, multiscale: bool) -> torch.Tensor:
    """Average-pool each block of f (B, C, H, W) -> Z (B, C, N)."""
    h, w = f.shape[-2:]
    wh, ww = working_size(int(h), int(w), num_rings)
    if (wh, ww) != (h, w):
        f = F.interpolate(f, size=(wh, ww), mode="bilinear", align_corners=False)
    m = block_masks(wh, ww, num_rings, multiscale).to(device=f.device, dtype=f.dtype)
    m = m / m.sum(dim=(1, 2), keepdim=True)
    # (B, C, HW) @ (HW, N): a MatMul, which ONNX / TensorRT run well.
    return torch.matmul(f.flatten(2), m.flatten(1).t())


def block_attention(z: torch.Tensor) -> torch.Tensor:
    """Parameter-free block attention: softmax over the N blocks, times the input."""
    return torch.softmax(z, dim=-1) * z
