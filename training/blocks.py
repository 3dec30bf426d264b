"""Square-ring block partition of a feature map (LPN rings + MSBA multiscale centre squares).

Pure tensor code, no parameters. Two pooling conventions (ModelConfig.ring_pooling):

- "lpn": as LPN's code (`get_part_pool`), each ring is averaged over its whole enclosing square
  with the inner square zeroed, i.e. the ring's pixel sum divided by the enclosing square's area
  (the outer ring's square is the whole map). MSBA was built on that code; paper presets use it.
- "mean": the true mean over the block's own pixels.

They differ by a constant per ring (1, 0.75, 0.556, 0.4375 for 4 rings on a 16x16 map). Without
block attention the following BatchNorm absorbs such a factor, but block attention's softmax over
the blocks sits between pooling and BatchNorm, so with it the two conventions train different
models. Centre squares (rings 1, and the multiscale blocks) are the same under both.
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


RING_POOLING = ("lpn", "mean")


def block_divisors(h: int, w: int, num_rings: int, multiscale: bool, ring_pooling: str) -> np.ndarray:
    """What each block's pixel sum is divided by: its pixel count ("mean") or the area of the
    square that encloses it ("lpn"; the outer ring's is the whole map)."""
    masks = _block_masks_np(h, w, num_rings, multiscale)
    if ring_pooling == "mean":
        return masks.sum(axis=(1, 2)).astype(np.float64)
    if ring_pooling != "lpn":
        raise ValueError(f"ring_pooling {ring_pooling!r} is not one of {RING_POOLING}")
    rh, rw = ring_width(h, num_rings), ring_width(w, num_rings)
    rings = [float(h * w) if i == num_rings else float(4 * i * rh * i * rw) for i in range(1, num_rings + 1)]
    squares = [float(masks[j].sum()) for j in range(num_rings, len(masks))]  # multiscale: full squares
    return np.array(rings + squares, dtype=np.float64)


def pool_blocks(f: torch.Tensor, num_rings: int, multiscale: bool, ring_pooling: str = "lpn") -> torch.Tensor:
    """Pool each block of f (B, C, H, W) -> Z (B, C, N) under `ring_pooling` ("lpn" or "mean")."""
    h, w = f.shape[-2:]
    wh, ww = working_size(int(h), int(w), num_rings)
    if (wh, ww) != (h, w):
        f = F.interpolate(f, size=(wh, ww), mode="bilinear", align_corners=False)
    div = block_divisors(wh, ww, num_rings, multiscale, ring_pooling)
    m = torch.from_numpy(_block_masks_np(wh, ww, num_rings, multiscale) / div[:, None, None])
    m = m.to(device=f.device, dtype=f.dtype)
    # (B, C, HW) @ (HW, N): a MatMul, which ONNX / TensorRT run well.
    return torch.matmul(f.flatten(2), m.flatten(1).t())


def block_attention(z: torch.Tensor) -> torch.Tensor:
    """Parameter-free block attention: softmax over the N blocks, times the input."""
    return torch.softmax(z, dim=-1) * z
