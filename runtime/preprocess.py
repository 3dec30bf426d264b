"""Frame checks and the host side of the model's input contract.

The exported graph takes bytes (uint8 RGB NHWC, normalization baked in), so the edge only has to
crop, resize and reorder channels. The crop is the centre square (the camera looks straight down,
so the centre is the ground under the aircraft) and the resize is cv2.INTER_AREA, which averages
source pixels and so does not alias when shrinking a 1080p frame to a few hundred pixels.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from skyloc.runtime.sidecar import InputContract

MIN_SIDE = 8  # smaller than this is a broken frame, not a picture


def check_frame(frame: object) -> str | None:
    """Why a frame cannot be used, or None when it can.

    Reasons: "corrupt" (None / not an image array / odd shape), "empty" (zero pixels),
    "too-small", "grayscale" (2-D or one channel: skipped and counted, never converted —
    a mono camera feeding a colour model is a configuration error worth seeing in the stats),
    "dtype" (not uint8 or float), "nan" (non-finite float pixels).
    """
    if frame is None or not isinstance(frame, np.ndarray):
        return "corrupt"
    if frame.size == 0:
        return "empty"
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        return "grayscale"
    if frame.ndim != 3 or frame.shape[2] not in (3, 4):
        return "corrupt"
    if min(frame.shape[0], frame.shape[1]) < MIN_SIDE:
        return "too-small"
    if np.issubdtype(frame.dtype, np.floating):
        if not np.isfinite(frame).all():
            return "nan"
    elif frame.dtype != np.uint8:
        return "dtype"
    return None


def center_square(image: np.ndarray) -> np.ndarray:
    """The largest centred square (a view, no copy). Odd leftovers go to the bottom/right."""
    h, w = image.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    return image[y0:y0 + s, x0:x0 + s]


def _to_uint8_rgb(image: np.ndarray, bgr: bool, want_rgb: bool) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 (or x4) colour image, got shape {image.shape}")
    if image.shape[2] == 4:
        image = image[:, :, :3]  # alpha carries nothing for retrieval
    if image.dtype != np.uint8:
        image = np.clip(np.nan_to_num(image), 0, 255).astype(np.uint8)
    if bgr == want_rgb:  # input order differs from the order the model wants
        image = image[:, :, ::-1]
    return image


def to_model_input(images: Sequence[np.ndarray], contract: InputContract, bgr: bool = True) -> np.ndarray:
    """Frames -> one batch in the model's input layout.

    Each frame: centre square crop, INTER_AREA resize to the contract's HxW, channel order
    fixed (`bgr` says what the frames are: OpenCV frames are BGR, map crops are RGB).
    Returns uint8 NHWC for the default contract; float32 normalised with the declared mean/std
    when `contract.normalization == "declared"`; float32 0..255 for a float contract with baked
    normalization; NCHW when the contract says so.
    """
    if len(images) == 0:
        raise ValueError("to_model_input needs at least one image")
    h, w = int(contract.height), int(contract.width)
    want_rgb = contract.color.upper() == "RGB"
    out = np.empty((len(images), h, w, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        sq = _to_uint8_rgb(center_square(np.asarray(image)), bgr, want_rgb)
        if sq.shape[0] == h and sq.shape[1] == w:
            out[i] = sq
        else:
            out[i] = cv2.resize(np.ascontiguousarray(sq), (w, h), interpolation=cv2.INTER_AREA)
    if contract.normalization == "declared":
        mean = np.asarray(contract.mean, dtype=np.float32) * 255.0
        std = np.asarray(contract.std, dtype=np.float32) * 255.0  # listed in the model's channel order
        batch = (out.astype(np.float32) - mean) / std
    elif contract.dtype != "uint8":
        batch = out.astype(np.float32)
    else:
        batch = out
    if contract.layout.upper() == "NCHW":
        batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
    if contract.dtype == "float16":
        batch = batch.astype(np.float16)
    return batch
