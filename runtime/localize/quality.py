"""Frame-quality gate: refuse frames the model cannot localize before they reach it.

A black, white, grey, fogged, lens-capped, overexposed or featureless frame still gives an
embedding, and that embedding matches *some* tile with a plausible score, every time the same
one: accepted fixes that agree with each other and are wrong. Two checks stop them:

- `check_quality(image)`: measured on grey copies shrunk to a fixed short side (so the
  thresholds do not depend on the camera's resolution): finite values, clipped share at
  `analysis_px` (pixels at the ends of the range: over / under exposure), and at the coarser
  `structure_px`, where sensor noise averages away, contrast (2nd..98th percentile range) and
  texture (variance of the Laplacian: a smooth gradient has contrast but no texture).
- `BlankEmbedding`: the model's embeddings of constant frames; a query whose embedding sits at
  one of them (cosine >= threshold) carries no information about the place.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from skyloc.core.errors import SkylocError

REASONS = ("non-finite", "low-contrast", "saturated", "low-texture", "blank-embedding")


@dataclass(frozen=True)
class QualityThresholds:
    """Defaults measured at 32 px (tests/test_quality.py). Real ground: Turku satellite crops of 55 m
    (fields, tree lines) contrast median 46, texture median 2600, their weakest field crops and
    hazy (x0.5) versions down to contrast ~6 / texture ~100; aerovloc >= 28 / 2100; the procedural
    world >= 62 / 7500. Featureless frames: grey + sensor noise sigma <= 8 (grey or colour) has
    contrast <= 4; a smooth gradient + colour noise sigma <= 8 has texture <= 71. Frames between
    the two (a uniform field under haze, sigma-12 noise) are left to registration, which does not
    verify them."""

    analysis_px: int = 128  # short side of the grey copy the saturation is measured on
    # Contrast and texture are measured on a coarser copy (short side structure_px, area-averaged):
    # sensor noise averages out there while ground structure (fields, roads, roofs) stays, so a
    # featureless frame with normal noise no longer reads as texture.
    structure_px: int = 32
    min_contrast: float = 5.0  # grey levels between the 2nd and 98th percentile of the coarse copy
    max_clipped: float = 0.3  # share of pixels at <= clip_low or >= clip_high
    clip_low: int = 2
    clip_high: int = 253
    min_texture: float = 80.0  # variance of the 3x3 Laplacian inside the coarse copy's border
    blank_cos: float = 0.95  # BlankEmbedding: at or above this cosine the query is "blank"

    def __post_init__(self) -> None:
        for name in ("min_contrast", "max_clipped", "min_texture", "blank_cos"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise SkylocError(f"quality threshold {name}={v!r} must be a finite number")
        if not 0 <= self.max_clipped <= 1 or not -1 <= self.blank_cos <= 1:
            raise SkylocError(f"quality thresholds: max_clipped {self.max_clipped} must be in [0, 1] and "
                              f"blank_cos {self.blank_cos} in [-1, 1]")
        if not isinstance(self.analysis_px, int) or self.analysis_px < 16:
            raise SkylocError(f"quality analysis_px={self.analysis_px!r} must be an integer >= 16")
        if not isinstance(self.structure_px, int) or not 8 <= self.structure_px <= self.analysis_px:
            raise SkylocError(f"quality structure_px={self.structure_px!r} must be an integer in 8..analysis_px")
        if not 0 <= self.clip_low < self.clip_high <= 255:
            raise SkylocError(f"quality clip range {self.clip_low}..{self.clip_high} must satisfy 0 <= low < high <= 255")


@dataclass
class QualityVerdict:
    ok: bool
    reason: str | None  # one of REASONS when not ok
    metrics: dict[str, float] = field(default_factory=dict)  # contrast, clipped, texture


def _grey_small(image: np.ndarray, px: int) -> np.ndarray:
    """float32 grey copy on a 0..255 scale with short side `px` (area-averaged)."""
    img = np.asarray(image)
    if img.dtype == np.uint16:
        img = img.astype(np.float32) / 257.0
    elif img.dtype != np.uint8:
        img = img.astype(np.float32)
        if img.size and float(np.nanmax(img)) <= 1.0:  # 0..1 float images
            img = img * 255.0
    if img.ndim == 3:
        chans = img.shape[2]
        if chans == 1:
            img = img[:, :, 0]
        else:
            img = cv2.cvtColor(np.ascontiguousarray(img[:, :, :3]), cv2.COLOR_BGR2GRAY)
    g = img.astype(np.float32, copy=False)
    h, w = g.shape[:2]
    f = px / min(h, w)
    if f < 1.0:
        g = cv2.resize(g, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return g


def check_quality(image: Any, thresholds: QualityThresholds | None = None) -> QualityVerdict:
    """Measure a frame (BGR / grey, uint8 / uint16 / float) and say whether it may be localized."""
    t = thresholds or QualityThresholds()
    img = np.asarray(image) if image is not None else None
    if img is None or img.ndim not in (2, 3) or img.size == 0 or min(img.shape[:2]) < 2:
        return QualityVerdict(False, "non-finite", {})
    if img.dtype.kind == "f" and not np.isfinite(img).all():
        return QualityVerdict(False, "non-finite", {})
    g = _grey_small(img, t.analysis_px)
    clipped = float(np.mean((g <= t.clip_low) | (g >= t.clip_high)))
    c = _grey_small(g, t.structure_px)
    p2, p98 = np.percentile(c, (2.0, 98.0))
    contrast = float(p98 - p2)
    lap = cv2.Laplacian(c, cv2.CV_32F, ksize=3)
    # the border row/column sees the reflected edge: a smooth ramp would read as texture there
    texture = float(lap[1:-1, 1:-1].var()) if min(lap.shape) > 2 else 0.0
    metrics = {"contrast": round(contrast, 3), "clipped": round(clipped, 4), "texture": round(texture, 3)}
    if not (math.isfinite(contrast) and math.isfinite(texture)):
        return QualityVerdict(False, "non-finite", metrics)
    if contrast < t.min_contrast:
        return QualityVerdict(False, "low-contrast", metrics)
    if clipped > t.max_clipped:
        return QualityVerdict(False, "saturated", metrics)
    if texture < t.min_texture:
        return QualityVerdict(False, "low-texture", metrics)
    return QualityVerdict(True, None, metrics)


class QualityGate:
    """`gate(image) -> reason | None`: the callable the Localizer takes as `quality=`."""

    def __init__(self, thresholds: QualityThresholds | None = None) -> None:
        self.thresholds = thresholds or QualityThresholds()
        self.last: QualityVerdict | None = None

    def __call__(self, image: Any) -> str | None:
        self.last = check_quality(image, self.thresholds)
        return self.last.reason


class BlankEmbedding:
    """The backend's embeddings of constant frames (black, grey, white by default) and the check
    that a query embedding sits at one of them.

    `backend` needs `embed(batch) -> (N, D)` and `sidecar.input` (the input contract). Non-finite
    blank embeddings (a model that divides by the image sum) are left out; a query that is not
    finite is always "blank".
    """

    def __init__(self, backend: Any, levels: tuple[int, ...] = (0, 128, 255), threshold: float = 0.95) -> None:
        from skyloc.core.preprocess import to_model_input

        if not math.isfinite(threshold) or not -1 <= threshold <= 1:
            raise SkylocError(f"blank-embedding threshold {threshold!r} must be a cosine in [-1, 1]")
        contract = backend.sidecar.input
        frames = [np.full((int(contract.height), int(contract.width), 3), int(v), np.uint8) for v in levels]
        # one frame per call: engines built for a fixed batch of 1 work too
        emb = np.concatenate([np.asarray(backend.embed(to_model_input([f], contract)), dtype=np.float64).reshape(1, -1)
                              for f in frames])
        keep = np.isfinite(emb).all(axis=1) & (np.linalg.norm(emb, axis=1) > 0)
        self.levels = tuple(v for v, k in zip(levels, keep) if k)
        e = emb[keep]
        self.vectors = e / np.linalg.norm(e, axis=1, keepdims=True) if len(e) else e
        self.threshold = float(threshold)

    def cosine(self, query: np.ndarray) -> float:
        """Highest cosine between `query` (D,) or (N, D) and the blank embeddings (NaN-safe: -1 if none)."""
        q = np.asarray(query, dtype=np.float64).reshape(-1, self.vectors.shape[1] if len(self.vectors) else -1)
        if not np.isfinite(q).all():
            return math.inf
        if not len(self.vectors):
            return -1.0
        n = np.linalg.norm(q, axis=1, keepdims=True)
        if not (n > 0).all():
            return math.inf
        return float(np.max((q / n) @ self.vectors.T))

    def is_blank(self, query: np.ndarray) -> bool:
        """True when the query carries no place information: skip the frame ("blank-embedding")."""
        return self.cosine(query) >= self.threshold
