"""Pinhole camera intrinsics (+ optional OpenCV lens distortion) and the camera-file readers.

Pixel convention (OpenCV's): the centre of pixel (col, row) is at (col, row), so the principal
point of an ideal W x H camera is ((W - 1) / 2, (H - 1) / 2). `dist` holds OpenCV distortion
coefficients (k1, k2, p1, p2[, k3[, k4, k5, k6[, s1..s4[, tx, ty]]]]); empty = no distortion.

Camera files (`--camera FILE`), by content:
- JSON with fx, fy, cx, cy, width, height and optional dist (list of numbers);
- the flight.json `skyloc synth flight` writes (its "camera" block has the same keys);
- an OpenCV calibration YAML/XML as cv2.FileStorage writes it (camera_matrix,
  distortion_coefficients, image_width, image_height).
"""
from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skyloc.core.errors import SkylocError

_DIST_LENGTHS = (0, 4, 5, 8, 12, 14)  # what OpenCV's distortion model accepts


@dataclass(frozen=True)
class CameraModel:
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    dist: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        try:
            vals = tuple(float(v) for v in (self.fx, self.fy, self.cx, self.cy))
        except (TypeError, ValueError):
            vals = (math.nan,) * 4
        if not all(math.isfinite(v) for v in vals) or vals[0] <= 0 or vals[1] <= 0:
            raise SkylocError(f"camera: fx, fy, cx, cy must be finite numbers with fx, fy > 0 (got {vals})")
        if not (isinstance(self.width, numbers.Integral) and isinstance(self.height, numbers.Integral)) \
                or self.width < 2 or self.height < 2:
            raise SkylocError(f"camera: width and height must be integers >= 2 (got {self.width}, {self.height})")
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        if len(self.dist) not in _DIST_LENGTHS or not all(math.isfinite(float(d)) for d in self.dist):
            raise SkylocError(f"camera: dist must hold 0, 4, 5, 8, 12 or 14 finite OpenCV coefficients "
                              f"(got {len(self.dist)}: {self.dist})")
        object.__setattr__(self, "dist", tuple(float(d) for d in self.dist))
        if not any(self.dist):
            object.__setattr__(self, "dist", ())

    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def hfov_deg(self) -> float:
        return math.degrees(2.0 * math.atan(self.width / (2.0 * self.fx)))

    def scaled_to(self, width: int, height: int) -> "CameraModel":
        """The same camera delivering frames of another resolution (resized, not cropped)."""
        if width == self.width and height == self.height:
            return self
        sx, sy = width / self.width, height / self.height
        if abs(sx / sy - 1.0) > 0.02:
            raise SkylocError(f"camera: frames of {width}x{height} px do not have the aspect of the "
                              f"{self.width}x{self.height} camera; give a camera file for this resolution")
        # Pixel centres sit at integers: an edge at -0.5 maps to -0.5.
        return CameraModel(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5,
                           int(width), int(height), self.dist)

    @classmethod
    def from_hfov(cls, hfov_deg: float, width: int, height: int) -> "CameraModel":
        """Ideal square-pixel camera with the principal point at the image centre."""
        if not (math.isfinite(hfov_deg) and 1.0 <= hfov_deg <= 170.0):
            raise SkylocError(f"--hfov {hfov_deg}: need a horizontal field of view between 1 and 170 deg")
        f = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
        return cls(f, f, (width - 1) / 2.0, (height - 1) / 2.0, int(width), int(height))

    @classmethod
    def from_focal_35mm(cls, focal_35mm: float, width: int, height: int) -> "CameraModel":
        """From a 35 mm-equivalent focal length (EXIF FocalLengthIn35mmFilm): the 36 x 24 mm frame's
        diagonal (43.27 mm) maps to the image diagonal."""
        if not (math.isfinite(focal_35mm) and focal_35mm > 0):
            raise SkylocError(f"camera: 35 mm-equivalent focal length {focal_35mm} must be > 0")
        f = focal_35mm / math.hypot(36.0, 24.0) * math.hypot(width, height)
        return cls(f, f, (width - 1) / 2.0, (height - 1) / 2.0, int(width), int(height))

    def to_dict(self) -> dict:
        return {"fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy, "width": self.width,
                "height": self.height, "dist": list(self.dist)}


def camera_from_dict(d: dict, where: str) -> CameraModel:
    try:
        fx, fy, cx, cy = (float(d[k]) for k in ("fx", "fy", "cx", "cy"))
        w, h = d["width"], d["height"]
        if not (float(w).is_integer() and float(h).is_integer()):
            raise ValueError(f"width/height {w}, {h} are not integers")
        dist = tuple(float(x) for x in (d.get("dist") or ()))
    except (KeyError, TypeError, ValueError) as exc:
        raise SkylocError(f"camera file {where}: need numbers fx, fy, cx, cy, width, height (and optional "
                          f"dist list): {exc!r}") from None
    try:
        return CameraModel(fx, fy, cx, cy, int(w), int(h), dist)
    except SkylocError as exc:
        raise SkylocError(f"camera file {where}: {exc}") from None


def _load_opencv_yaml(path: Path) -> CameraModel:
    import cv2

    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    try:
        if not fs.isOpened():
            raise SkylocError(f"camera file {path}: OpenCV cannot parse it as calibration YAML/XML")
        K = fs.getNode("camera_matrix").mat()
        D = fs.getNode("distortion_coefficients").mat()
        w, h = fs.getNode("image_width").real(), fs.getNode("image_height").real()
    finally:
        fs.release()
    if K is None or K.shape != (3, 3) or not (w > 0 and h > 0):
        raise SkylocError(f"camera file {path}: need camera_matrix (3x3), image_width and image_height "
                          "(as cv2.FileStorage / the OpenCV calibration sample writes them)")
    dist = () if D is None else tuple(float(x) for x in np.asarray(D).ravel())
    return camera_from_dict({"fx": K[0, 0], "fy": K[1, 1], "cx": K[0, 2], "cy": K[1, 2],
                             "width": int(w), "height": int(h), "dist": dist}, str(path))


def load_camera(path: str | os.PathLike) -> CameraModel:
    """Read a camera file (see module doc); SkylocError naming the file when it is not one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise SkylocError(f"--camera {path} cannot be read: {exc}") from None
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SkylocError(f"camera file {path}: invalid JSON ({exc})") from None
        if isinstance(d, dict) and isinstance(d.get("camera"), dict):
            d = d["camera"]  # flight.json from `skyloc synth flight`
        if not isinstance(d, dict):
            raise SkylocError(f"camera file {path}: expected a JSON object with fx, fy, cx, cy, width, height")
        return camera_from_dict(d, str(path))
    if stripped.startswith("%YAML") or stripped.startswith("<?xml") or "camera_matrix" in text:
        return _load_opencv_yaml(path)
    raise SkylocError(f"camera file {path}: neither JSON (fx, fy, cx, cy, width, height) nor OpenCV "
                      "calibration YAML/XML (camera_matrix, distortion_coefficients, image_width, image_height)")
