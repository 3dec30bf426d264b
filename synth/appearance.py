"""Another season and another sensor: make a flight's frames look unlike the map it is registered against.

Real flights see the ground months or years after the map was taken, through another camera.
Registration that only ever saw frames rendered from its own map learns nothing about that, so
flights can draw one appearance per flight (seeded) and record it in flight.json:

- "season": the ground itself changes -- a colour cast and gamma, vegetation (excess-green
  pixels) turned towards another hue and saturation, shadows moved (the old ones filled with
  their surroundings' colour, new ones cast a few metres away: another sun), plus haze.
  Done in ground space (SeasonMap wraps the map), so every frame sees the same changed ground.
- "sensor": the camera differs -- another resolution (rendered smaller, scaled back up), blur,
  sensor noise and a JPEG round trip.
- "full": both, plus a small misregistration of the source (the "other image" is shifted by
  up to MISREGISTRATION_M, as two orthophotos of one place rarely align to the pixel).
"none" leaves only the flight's photometric "day" (synth.photometric).
"""
from __future__ import annotations

from dataclasses import dataclass, field
import math
from typing import Any, Literal, get_args

import cv2
import numpy as np

from skyloc.core.errors import SkylocError
from skyloc.runtime.maps.base import GeoMap
from skyloc.synth.photometric import jpeg_roundtrip


Appearance = Literal["none", "season", "sensor", "full"]
APPEARANCES: tuple[str, ...] = get_args(Appearance)
MISREGISTRATION_M = 1.5  # largest shift of the rendered source against the map ("full")


@dataclass
class AppearanceParams:
    """One flight's draw (all zeros / ones where its kind leaves a part out)."""

    kind: str = "none"
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel colour cast
    gamma: float = 1.0
    vegetation_hue_deg: float = 0.0  # hue turn of vegetation (+: towards yellow / brown)
    vegetation_saturation: float = 1.0
    shadow_fill: float = 0.0  # how much of the old shadows is lifted (0..1)
    shadow_shift_m: tuple[float, float] = (0.0, 0.0)  # east, north: where the new shadows fall
    shadow_depth: float = 0.0  # darkening of the new shadows (0..1)
    haze: float = 0.0
    resolution_scale: float = 1.0  # the sensor's resolution relative to the frame
    blur_sigma_px: float = 0.0
    noise_sigma: float = 0.0
    jpeg_quality: int = 0  # 0: no JPEG round trip
    misregistration_m: tuple[float, float] = field(default=(0.0, 0.0))  # east, north shift of the source

    @property
    def changes_ground(self) -> bool:
        return self.kind in ("season", "full")


def draw_appearance(kind: str, rng: np.random.Generator) -> AppearanceParams:
    """One appearance of the given kind; every number is drawn whatever the kind (stable streams)."""
    if kind not in APPEARANCES:
        raise SkylocError(f"appearance {kind!r}: choose one of {', '.join(APPEARANCES)}")
    u = rng.uniform
    gain = tuple(float(g) for g in u(0.9, 1.1, 3))
    gamma = float(u(0.8, 1.25))
    hue = float(u(-8.0, 35.0))  # mostly green -> yellow / brown (dry season, autumn), a little the other way
    vsat = float(u(0.55, 1.4))
    fill = float(u(0.4, 0.8))
    ang, dist = float(u(0, 2 * math.pi)), float(u(2.0, 6.0))
    depth = float(u(0.25, 0.5))
    haze = float(u(0.03, 0.15))
    res = float(u(0.45, 0.8))
    blur = float(u(0.4, 1.2))
    noise = float(u(2.0, 6.0))
    q = int(rng.integers(55, 86))
    mang, mdist = float(u(0, 2 * math.pi)), float(u(0.3, MISREGISTRATION_M))
    p = AppearanceParams(kind=kind)
    if kind in ("season", "full"):
        p.gain, p.gamma, p.vegetation_hue_deg, p.vegetation_saturation = gain, gamma, hue, vsat
        p.shadow_fill, p.shadow_shift_m, p.shadow_depth = fill, (dist * math.sin(ang), dist * math.cos(ang)), depth
        p.haze = haze
    if kind in ("sensor", "full"):
        p.resolution_scale, p.blur_sigma_px, p.noise_sigma, p.jpeg_quality = res, blur, noise, q
    if kind == "full":
        p.misregistration_m = (mdist * math.sin(mang), mdist * math.cos(mang))
    return p


def _shift(lat: np.ndarray, lon: np.ndarray, de: float, dn: float) -> tuple[np.ndarray, np.ndarray]:
    # metres -> degrees on the local sphere; exact enough for shifts of a few metres
    dlat = dn / 111_320.0
    return lat + dlat, lon + de / (111_320.0 * np.cos(np.radians(lat)))


class SeasonMap(GeoMap):
    """The map as another season sees it (see the module doc); samples the wrapped map."""

    SURROUND_M = 8.0  # ground size of the neighbourhood a shadow is darker than

    def __init__(self, src: GeoMap, p: AppearanceParams) -> None:
        self.src, self.p = src, p
        self.name, self.source = f"{src.name}+{p.kind}", src.source
        self.metres_per_pixel, self.max_level = src.metres_per_pixel, src.max_level

    def bounds_latlon(self) -> tuple[float, float, float, float]:
        return self.src.bounds_latlon()

    def describe(self) -> dict[str, Any]:
        d = self.src.describe()
        d["appearance"] = self.p.kind
        return d

    def _to_native(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.src._to_native(*_shift(lat, lon, *self.p.misregistration_m))

    def _sample_level(self, a: np.ndarray, b: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
        return self.src._sample_level(a, b, level)

    def _shadow(self, lat: np.ndarray, lon: np.ndarray, fine: np.ndarray, footprint_m: Any
                ) -> tuple[np.ndarray, np.ndarray]:
        """(shadow weight 0..1, surrounding colour) at the points: darker than their surroundings."""
        coarse_fp = np.maximum(np.asarray(footprint_m if footprint_m is not None else 0.0, float), self.SURROUND_M)
        around, ok = super().sample(lat, lon, footprint_m=coarse_fp)
        around = around.astype(np.float32)
        y, ya = fine.mean(-1), around.mean(-1)
        w = np.clip((ya - y) / np.maximum(ya, 1.0) * 3.0, 0.0, 1.0) * np.clip((140.0 - y) / 60.0, 0.0, 1.0)
        return np.where(ok, w, 0.0), around

    def sample(self, lat: np.ndarray, lon: np.ndarray, footprint_m: np.ndarray | float | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        p = self.p
        lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
        rgb, valid = super().sample(lat, lon, footprint_m)
        x = rgb.astype(np.float32)
        old, around = self._shadow(lat, lon, x, footprint_m)
        x = x + (p.shadow_fill * old)[..., None] * (around - x)
        sl, so = _shift(lat, lon, -p.shadow_shift_m[0], -p.shadow_shift_m[1])
        cast_rgb, _ = super().sample(sl, so, footprint_m)
        new, _ = self._shadow(sl, so, cast_rgb.astype(np.float32), footprint_m)
        x = x * (1.0 - p.shadow_depth * new)[..., None]
        x = np.clip(x / 255.0 * np.array(p.gain, np.float32), 0.0, 1.0) ** p.gamma
        x = _vegetation(x.astype(np.float32), p.vegetation_hue_deg, p.vegetation_saturation)
        out = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
        out[~valid] = 0
        return out, valid


def _vegetation(x: np.ndarray, hue_deg: float, sat: float) -> np.ndarray:
    """Turn the hue and scale the saturation of green pixels (excess-green index), x RGB in [0, 1]."""
    shape = x.shape
    flat = x.reshape(-1, 1, 3)
    exg = 2 * flat[..., 1] - flat[..., 0] - flat[..., 2]
    w = np.clip(exg * 5.0, 0.0, 1.0)
    hsv = cv2.cvtColor(flat, cv2.COLOR_RGB2HSV)  # float input: H in degrees, S and V in [0, 1]
    # +hue turns green (120 deg) towards yellow (60 deg)
    hsv[..., 0] = (hsv[..., 0] - hue_deg * w) % 360.0
    hsv[..., 1] = np.clip(hsv[..., 1] * (1.0 + (sat - 1.0) * w), 0.0, 1.0)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).reshape(shape)


def apply_sensor(rgb: np.ndarray, p: AppearanceParams, rng: np.random.Generator) -> np.ndarray:
    """The other camera: haze, resolution, blur, noise, JPEG (identity for kind none)."""
    if p.kind == "none":
        return rgb
    h, w = rgb.shape[:2]
    noise_field = rng.standard_normal(rgb.shape).astype(np.float32)
    x = rgb.astype(np.float32) / 255.0
    x = x * (1 - p.haze) + p.haze * np.array([0.72, 0.76, 0.82], np.float32)
    if p.resolution_scale < 0.999:
        sw, sh = max(8, int(round(w * p.resolution_scale))), max(8, int(round(h * p.resolution_scale)))
        x = cv2.resize(cv2.resize(x, (sw, sh), interpolation=cv2.INTER_AREA), (w, h), interpolation=cv2.INTER_LINEAR)
    if p.blur_sigma_px > 0.05:
        x = cv2.GaussianBlur(x, (0, 0), p.blur_sigma_px)
    out = np.clip(np.rint(x * 255.0 + p.noise_sigma * noise_field), 0, 255).astype(np.uint8)
    return jpeg_roundtrip(out, p.jpeg_quality) if p.jpeg_quality > 0 else out


class BothValid:
    """Validity of two maps at once (the map a run registers against and the one frames come from),
    for planning a path over their overlap."""

    def __init__(self, a: GeoMap, b: GeoMap) -> None:
        self.a, self.b = a, b

    def bounds_latlon(self) -> tuple[float, float, float, float]:
        (a0, a1, a2, a3), (b0, b1, b2, b3) = self.a.bounds_latlon(), self.b.bounds_latlon()
        return max(a0, b0), max(a1, b1), min(a2, b2), min(a3, b3)

    def is_valid(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        return self.a.is_valid(lat, lon) & self.b.is_valid(lat, lon)
