"""No camera model: a frame taken as a nadir view (`nadir_patch`), and the padded patch sizes the
rectifier cuts (`even_pad`)."""
from __future__ import annotations

import math

import cv2
import numpy as np

from skyloc.runtime.localize.rectify import GroundPatch, rotate_patch


def even_pad(inner: int, factor: float) -> int:
    """Outer side >= inner * factor whose difference to inner is even (so the inner crop is centred)."""
    pad = int(math.ceil(inner * (factor - 1.0) / 2.0))
    return inner + 2 * pad


def nadir_patch(rgb: np.ndarray, side_px: int, mpp: float, heading_deg: float | None,
                src_side_px: int | None = None) -> GroundPatch:
    """No camera model: the square of src_side_px frame pixels (default the short side) centred on
    the frame, taken as a nadir view at side_px pixels, turned north-up when the heading is known.
    A square larger than the frame keeps the frame's pixels and marks the rest invalid (the learned
    registrar's patch reaches past a tile side). The old approximation, kept for frames that come
    with neither a camera file nor --hfov."""
    h, w = rgb.shape[:2]
    if not src_side_px or src_side_px <= min(h, w):  # inside the frame: crop and resize, all valid
        side = int(src_side_px or min(h, w))
        y0, x0 = (h - side) // 2, (w - side) // 2
        img = cv2.resize(np.ascontiguousarray(rgb[y0:y0 + side, x0:x0 + side]), (side_px, side_px),
                         interpolation=cv2.INTER_AREA)
        patch = GroundPatch(img, np.ones((side_px, side_px), bool), float(mpp), None, (0.0, 0.0))
        return rotate_patch(patch, heading_deg) if heading_deg is not None else patch
    src = float(src_side_px)
    k = side_px / src
    # only the frame pixels inside the square (+1 px for interpolation) are resized
    xs, ys = max(0, int(math.floor((w - src) / 2)) - 1), max(0, int(math.floor((h - src) / 2)) - 1)
    xe, ye = min(w, int(math.ceil((w + src) / 2)) + 1), min(h, int(math.ceil((h + src) / 2)) + 1)
    part = np.ascontiguousarray(rgb[ys:ye, xs:xe])
    size = (max(1, round((xe - xs) * k)), max(1, round((ye - ys) * k)))
    small = cv2.resize(part, size, interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
    kx, ky = size[0] / (xe - xs), size[1] / (ye - ys)
    # the frame centre (w/2, h/2) lands on the patch centre; a translation is the same in cv2's
    # pixel-index and our pixel-centre coordinates
    M = np.float32([[1, 0, side_px / 2 - (w / 2 - xs) * kx], [0, 1, side_px / 2 - (h / 2 - ys) * ky]])
    img = cv2.warpAffine(small, M, (side_px, side_px), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    valid = cv2.warpAffine(np.ones(small.shape[:2], np.uint8), M, (side_px, side_px), flags=cv2.INTER_NEAREST) > 0
    patch = GroundPatch(img, valid, float(mpp), None, (0.0, 0.0))
    return rotate_patch(patch, heading_deg) if heading_deg is not None else patch
