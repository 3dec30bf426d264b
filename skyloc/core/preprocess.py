"""Frame checks and the one implementation of the model's input contract.

The contract (runtime.sidecar.InputContract, recorded in every model sidecar) is: decode to RGB
(OpenCV, EXIF orientation applied, alpha dropped), take the centre square (the camera looks
straight down, so the centre is the ground under the aircraft), resize it to HxW with
cv2.INTER_AREA (averages source pixels, so no aliasing when shrinking a 1080p frame to a few
hundred pixels), feed RGB bytes. Training and `skyloc eval` (training.data), calibration, the tile
builder and the runtime all call `read_image` / `prepare_image` / `to_model_input` from here, so the
pixels `eval` scores are the pixels that fly. Torch-free.
"""
from __future__ import annotations

import os
from typing import Sequence

import cv2
import numpy as np

from skyloc.core.errors import SkylocError
from skyloc.core.sidecar import InputContract

# InputContract.resize values this module implements; a sidecar asking for another is refused.
RESIZE_METHODS = ("center-crop-square+area",)

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


def _jpeg_truncated(data: np.ndarray) -> bool:
    """A JPEG whose last scan has no end-of-image marker after it (decoders fill the rest grey)."""
    raw = data.tobytes()
    return raw[:2] == b"\xff\xd8" and raw.rfind(b"\xff\xd9") < raw.rfind(b"\xff\xda")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to uint8 HxWx3 RGB: EXIF orientation applied, alpha dropped, grey
    expanded to three channels, 16-bit scaled to 8. Missing, unreadable, corrupt or truncated
    file -> SkylocError naming it."""
    try:
        data = np.fromfile(os.fspath(path), dtype=np.uint8)  # also for non-ASCII paths
    except FileNotFoundError:
        raise SkylocError(f"image {path} not found") from None
    except OSError as exc:
        raise SkylocError(f"cannot read image {path} ({exc}); check the file's permissions") from None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None or _jpeg_truncated(data):
        raise SkylocError(f"cannot read image {path}: not an image, corrupt or truncated; replace or delete the file")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def check_contract(contract: InputContract) -> None:
    if contract.resize not in RESIZE_METHODS:
        raise SkylocError(f"model input contract asks for resize {contract.resize!r}; this skyloc implements "
                          f"{RESIZE_METHODS}: re-export the model with this version (`skyloc export onnx`)")
    if str(contract.color).upper() not in ("RGB", "BGR"):
        raise SkylocError(f"model input contract colour order {contract.color!r} is not RGB or BGR")
    if int(contract.height) < 1 or int(contract.width) < 1:
        raise SkylocError(f"model input contract size {contract.height}x{contract.width} is not positive")


def prepare_image(image: np.ndarray, contract: InputContract, bgr: bool = False) -> np.ndarray:
    """One image -> uint8 HxWx3 in the contract's size and colour order: centre square crop,
    INTER_AREA resize (skipped when already that size), channel order fixed. `bgr` says what
    `image` is (OpenCV frames are BGR; `read_image` and map crops are RGB)."""
    h, w = int(contract.height), int(contract.width)
    sq = _to_uint8_rgb(center_square(np.asarray(image)), bgr, str(contract.color).upper() == "RGB")
    if sq.shape[0] == h and sq.shape[1] == w:
        return np.ascontiguousarray(sq)
    return cv2.resize(np.ascontiguousarray(sq), (w, h), interpolation=cv2.INTER_AREA)


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

    Each frame: `prepare_image` (centre square crop, INTER_AREA resize to the contract's HxW,
    channel order fixed; `bgr` says what the frames are: OpenCV frames are BGR, map crops are RGB).
    Returns uint8 NHWC for the default contract; float32 normalised with the declared mean/std
    when `contract.normalization == "declared"`; float32 0..255 for a float contract with baked
    normalization; NCHW when the contract says so.
    """
    if len(images) == 0:
        raise ValueError("to_model_input needs at least one image")
    check_contract(contract)
    h, w = int(contract.height), int(contract.width)
    out = np.empty((len(images), h, w, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = prepare_image(image, contract, bgr)
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
