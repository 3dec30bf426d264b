"""Photometric changes that make a rendered view look like another camera on another day.

Exposure, gamma, white balance, saturation, haze, blur, sensor noise and a JPEG round trip, each
drawn from the given np.random.Generator so the same seed gives the same bytes. `strength`
scales every range (0 = identity, 1 = the dataset default, ~0.5 for simulated flights).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from skyloc.core.errors import SkylocError


@dataclass
class PhotometricConfig:
    strength: float = 1.0
    exposure: float = 0.25  # +- relative gain
    gamma: float = 0.2  # +- exponent change
    white_balance: float = 0.08  # +- per-channel gain
    saturation: float = 0.25  # +- change
    haze: float = 0.15  # up to this fraction of a bluish-grey veil
    blur_sigma_px: float = 1.0  # up to this Gaussian sigma
    noise_sigma: float = 4.0  # up to this many grey levels of Gaussian noise
    jpeg_quality: tuple[int, int] = (45, 95)  # re-encode quality range (skipped when strength == 0)


@dataclass
class PhotoParams:
    """One draw of the changes: a "day" (flights keep one for all frames) or one dataset image."""

    gain: float
    gamma: float
    wb: tuple[float, float, float]
    saturation: float
    haze: float
    blur_sigma: float
    noise_sigma: float
    jpeg_quality: int  # 0: no JPEG round trip


def draw_params(rng: np.random.Generator, cfg: PhotometricConfig) -> PhotoParams:
    s = float(cfg.strength)
    if s < 0:
        raise SkylocError(f"photometric strength must be >= 0, got {s}")
    # Every number is drawn whatever the strength, so changing it does not shift the stream.
    gain = 1.0 + s * cfg.exposure * rng.uniform(-1, 1)
    gamma = 1.0 + s * cfg.gamma * rng.uniform(-1, 1)
    wb = 1.0 + s * cfg.white_balance * rng.uniform(-1, 1, 3)
    sat = 1.0 + s * cfg.saturation * rng.uniform(-1, 1)
    haze = s * cfg.haze * rng.uniform(0, 1)
    sigma = s * cfg.blur_sigma_px * rng.uniform(0, 1)
    noise = s * cfg.noise_sigma * rng.uniform(0, 1)
    q = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    return PhotoParams(gain, gamma, (float(wb[0]), float(wb[1]), float(wb[2])), sat, haze, sigma, noise,
                       q if s > 0 else 0)


def apply_params(rgb: np.ndarray, p: PhotoParams, rng: np.random.Generator) -> np.ndarray:
    """Apply one draw to an RGB uint8 image; rng supplies the per-image sensor noise."""
    noise_field = rng.standard_normal(rgb.shape).astype(np.float32)
    x = rgb.astype(np.float32) / 255.0
    x = np.clip(x * p.gain * np.array(p.wb, np.float32)[None, None, :], 0, 1) ** p.gamma
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * p.saturation
    x = x * (1 - p.haze) + p.haze * np.array([0.72, 0.76, 0.82], np.float32)
    if p.blur_sigma > 0.05:
        x = cv2.GaussianBlur(x, (0, 0), p.blur_sigma)
    x = x * 255.0 + p.noise_sigma * noise_field
    out = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return jpeg_roundtrip(out, p.jpeg_quality) if p.jpeg_quality > 0 else out


def apply_photometric(rgb: np.ndarray, rng: np.random.Generator, cfg: PhotometricConfig) -> np.ndarray:
    """Return a changed copy of an RGB uint8 image (a fresh draw of every change)."""
    return apply_params(rgb, draw_params(rng, cfg), rng)


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = np.frombuffer(encode_jpeg(rgb, quality), np.uint8)
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def encode_jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    """RGB uint8 -> JPEG bytes with fixed settings (deterministic)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise SkylocError("JPEG encoding failed")
    return buf.tobytes()
