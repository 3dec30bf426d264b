"""Map registration (the fine stage): place a rectified ground patch on a north-up map crop.

Retrieval finds the right place to a tile stride; registration finds where, inside the map crop
around a candidate, the frame's patch lies, to metres, with its heading and scale, and says
whether the match can be vouched for (`verified`). Plugins (`make_registrar(name, **conf)`):

- `ncc` (`NccRegistrar`, register_ncc.py, the default): DSMAC-style scene matching. Both images
  are resampled to a common working resolution, turned into smoothed gradient-magnitude images
  (edges survive season, light and sensor changes far better than colours do) and compared by
  normalized cross-correlation (cv2.matchTemplate TM_CCOEFF_NORMED with the patch's valid mask)
  over a small grid of rotations and scales around the prior; sub-pixel peak; `verified` when the
  peak is high enough and clearly above the best distinct second peak.
- `sift` / `orb` (`FeatureRegistrar`, register_features.py): local features, ratio test, RANSAC
  similarity (cv2.estimateAffinePartial2D). For when heading or scale is badly known.
- `lightglue` (`LightGlueRegistrar`): OpenCV 5's ALIKED or DISK + LightGlue, only with ONNX files
  the user supplies (a plugin, never a dependency).

Measured on the repo's real cross-season pair (../shared/data/aerovloc: an autumn aerial photo,
north-up at 0.065 m/px, against a summer satellite map at 0.338 m/px; scale and heading known;
search window +-300 m around the truth, i.e. the `--start` prior of 300 m radius):

    working m/px  feature            peak   second(10 m excl.)  error   matchTemplate time
    1.0           |grad|, sigma 1px  0.276  0.134              0.5 m   ~30 ms (260x173 in 600x600)
    1.0           |grad|, sigma 2px  0.300  0.154              0.5 m
    1.0           grey levels        0.339  0.182              1.1 m
    0.5           |grad|, sigma 1px  0.229  0.092              1.0 m   ~170 ms
    1.0           |grad|, 2 deg off  0.215  0.128              3.0 m
    1.0           |grad|, scale 1.06 0.216  0.128              1.8 m

so the defaults are: 1.0 m/px working resolution, gradient magnitude with sigma 1 px, rotation
step 1 deg (the peak drops ~13 % per degree off), scale step 3 %, second peak outside 10 m.
A free-similarity SIFT fit collapsed on the same pair (30 ratio-test matches, 3 RANSAC inliers,
124 m off; ORB 48 m off, both correctly unverified), so SIFT is the fallback for uncertain
heading, not the default; on same-season Turku crops it works when blur and noise are mild.

Thresholds (`verified`: peak >= 0.2 and peak / second >= 1.4, best not on the edge of the window
or of the rotation / scale range) were set from 80 trials each on Turku and on the aerovloc map
(a 120 m patch with gamma / contrast / blur / noise changes, +-3 deg, +-4 % scale, registered
against a 234 m crop holding it, and against crops 150-450 m away): right places peak / second
>= 1.46 (median 2.3-4.3), wrong places <= 1.24 except one low-texture field at peak 0.15 and
ratio 1.74, hence the 0.2 peak floor; right places 95-100 % verified, wrong 0 %, median error
0.1-0.25 m, every verified error within 2 x accuracy_m (accuracy_m is conservative: floor 1 m).
A narrow rotation range (heading known, +-5 deg) is searched in two passes: rotations every
2.5 deg at the middle scale, then the 1 deg x every-scale grid around the best (14 correlations
instead of 33, the tracking case's cost: 2-3x faster). Its second peak is read over fewer
hypotheses, which raised the wrong places' ratios by up to 10 % (at most 1.50), so it needs
peak / second >= 1.55. Windows of >= 320 working px a side run coarse-to-fine (all hypotheses at 2 m/px, the best 6
distinct places refined at 1 m/px): the real pair over the 300 m prior (a 912 m window) then
registers to 0.8-0.9 m in ~2 s on this (shared) CPU, heading known.

Offsets are (east, north) metres of the patch centre from the map crop centre. Headings: the
patch's "up" axis points at a compass bearing: the patch's own `heading_deg` frame when it is
north-up (then the search is a residual rotation around 0), or the unknown aircraft heading when
it is heading-up (`patch.heading_deg is None`; then the search is around `heading_prior_deg`, the
whole circle when that is None). `Registration.heading_deg` is the estimated aircraft heading.
"""
from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from typing import Any, Protocol

import cv2
import numpy as np

from skyloc.core.errors import SkylocError


class PatchLike(Protocol):
    """What registration reads of a rectify.GroundPatch."""

    image: np.ndarray
    valid: np.ndarray
    mpp: float
    heading_deg: float | None


@dataclass
class Registration:
    verified: bool
    east_m: float       # patch centre minus map-crop centre, metres east
    north_m: float      # ... metres north
    heading_deg: float  # estimated aircraft heading (see module doc)
    scale: float        # true ground size of a patch pixel / the patch's stated mpp
    score: float        # comparable across candidates of one registrar (NCC peak / inlier share)
    second: float       # best distinct alternative (second NCC peak / second model's inlier share)
    inliers: int        # feature inliers; NCC: valid template pixels at the working resolution
    accuracy_m: float   # 1-sigma horizontal position uncertainty, metres (inf when unverified)
    method: str
    reason: str = ""    # why not verified (empty when verified)
    matches: int = 0    # putative matches the fit was drawn from (feature registrars; 0: not counted)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def failed(method: str, reason: str, heading_deg: float = float("nan")) -> Registration:
    """A registration that found nothing it can vouch for."""
    nan = float("nan")
    return Registration(False, nan, nan, heading_deg, nan, -1.0, -1.0, 0, float("inf"), method, reason)


class Registrar(ABC):
    """A registration method. `Conf` is its dataclass of defaults; `conf` overrides fields."""

    name = "base"
    Conf: type = object

    def __init__(self, **conf: Any) -> None:
        known = {f.name for f in fields(self.Conf)} if is_dataclass(self.Conf) else set()
        unknown = sorted(set(conf) - known)
        if unknown:
            raise SkylocError(f"registrar {self.name!r}: unknown option(s) {unknown}; known: {sorted(known)}")
        self.conf = self.Conf(**conf)

    @abstractmethod
    def register(self, patch: PatchLike, map_rgb: np.ndarray, map_mpp: float,
                 heading_prior_deg: float | None = None, heading_tol_deg: float = 5.0,
                 scale_tol: float = 0.05, map_valid: np.ndarray | None = None,
                 deadline: float | None = None) -> Registration:
        """Register the patch to a north-up map crop centred on the candidate (larger than the
        patch by the search margin). `map_valid` (optional) marks map pixels holding data.
        `deadline` (a time.monotonic() value, optional): no further hypothesis is started once it
        has passed; the best found so far comes back unverified (SearchClock)."""


# --- a deadline inside one call -----------------------------------------------------------------

DEADLINE_REASON = "deadline"  # a Registration.reason starting with this: the search was cut short


def check_deadline(deadline: float | None) -> None:
    if deadline is not None and not (isinstance(deadline, (int, float, np.floating))
                                     and not isinstance(deadline, bool) and math.isfinite(deadline)):
        raise SkylocError(f"register: deadline must be a finite time.monotonic() value or None (got {deadline!r})")


class SearchClock:
    """The hypotheses (rotations, scales) one registration call has tried, and whether its
    deadline stopped it. The first hypothesis always runs (a call always has a best so far); the
    deadline is checked before each further one, so a call ends within the deadline plus one
    hypothesis' time."""

    def __init__(self, deadline: float | None) -> None:
        check_deadline(deadline)
        self.deadline, self.tried, self.stopped = deadline, 0, False

    def next(self) -> bool:
        """True when one more hypothesis may start (and counts it); False once the deadline passed."""
        if self.tried and self.deadline is not None and time.monotonic() >= self.deadline:
            self.stopped = True
        if self.stopped:
            return False
        self.tried += 1
        return True

    def left(self) -> bool:
        """Whether time is left before the deadline (always, without one)."""
        return self.deadline is None or time.monotonic() < self.deadline

    def reason(self) -> str:
        return f"{DEADLINE_REASON}: search stopped after {self.tried} hypotheses"

    def cut(self, reg: Registration) -> Registration:
        """`reg` from a search the deadline cut short: never verified. The gates (peak / second,
        inlier margin) were calibrated on the full search; a margin read over fewer hypotheses
        has seen fewer alternatives and would flatter the match."""
        why = self.reason() + (f"; {reg.reason}" if reg.reason else "")
        return replace(reg, verified=False, accuracy_m=float("inf"), reason=why)


# --- input checks shared by the plugins --------------------------------------------------------


def check_inputs(patch: PatchLike, map_rgb: np.ndarray, map_mpp: float, heading_prior_deg: float | None,
                 heading_tol_deg: float, scale_tol: float, map_valid: np.ndarray | None) -> None:
    img, valid = np.asarray(patch.image), np.asarray(patch.valid)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or valid.shape != img.shape[:2]:
        raise SkylocError(f"register: patch must be HxWx3 uint8 with an HxW valid mask "
                          f"(got {img.shape} {img.dtype}, mask {valid.shape})")
    m = np.asarray(map_rgb)
    if m.ndim != 3 or m.shape[2] != 3 or m.dtype != np.uint8:
        raise SkylocError(f"register: map crop must be HxWx3 uint8 (got {m.shape} {m.dtype})")
    if map_valid is not None and np.asarray(map_valid).shape != m.shape[:2]:
        raise SkylocError(f"register: map_valid {np.asarray(map_valid).shape} != map crop {m.shape[:2]}")
    for name, v in (("patch mpp", patch.mpp), ("map mpp", map_mpp)):
        if not (isinstance(v, (int, float, np.floating)) and math.isfinite(v) and v > 0):
            raise SkylocError(f"register: {name} must be a finite number > 0 (got {v!r})")
    if heading_prior_deg is not None and not math.isfinite(heading_prior_deg):
        raise SkylocError(f"register: heading prior must be finite or None (got {heading_prior_deg!r})")
    if patch.heading_deg is not None and not math.isfinite(patch.heading_deg):
        raise SkylocError(f"register: patch heading must be finite or None (got {patch.heading_deg!r})")
    if not (math.isfinite(heading_tol_deg) and 0 <= heading_tol_deg <= 180):
        raise SkylocError(f"register: heading tolerance must be in [0, 180] deg (got {heading_tol_deg!r})")
    if not (math.isfinite(scale_tol) and 0 <= scale_tol < 0.5):
        raise SkylocError(f"register: scale tolerance must be in [0, 0.5) (got {scale_tol!r})")


def rotation_search(patch: PatchLike, heading_prior_deg: float | None, heading_tol_deg: float
                    ) -> tuple[float, float]:
    """(centre, half-range) in degrees of the bearing of the patch's up axis to search."""
    if patch.heading_deg is not None:
        return 0.0, heading_tol_deg
    if heading_prior_deg is None:
        return 0.0, 180.0
    return float(heading_prior_deg), heading_tol_deg


def aircraft_heading(patch: PatchLike, up_bearing_deg: float) -> float:
    return float(((patch.heading_deg or 0.0) + up_bearing_deg) % 360.0)


# --- pure pieces (tested against naive references) ---------------------------------------------


def to_gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32)


def gradient_magnitude(gray: np.ndarray, sigma_px: float = 1.0) -> np.ndarray:
    """|grad| of a Gaussian-smoothed float image (Sobel 3x3, i.e. 8x the central difference)."""
    g = np.asarray(gray, np.float32)
    if sigma_px > 0:
        g = cv2.GaussianBlur(g, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
    return np.sqrt(gx * gx + gy * gy)


def subpixel_peak(res: np.ndarray, x: int, y: int) -> tuple[float, float, float, float]:
    """(dx, dy, curv_x, curv_y): a 1-D parabola through the peak and its two neighbours along
    each axis; dx, dy in [-0.5, 0.5] px; curvatures are the (negative) second differences, 0 at
    the border or where the surface is not a maximum."""
    h, w = res.shape

    def along(m1: float, c: float, p1: float) -> tuple[float, float]:
        d2 = m1 - 2 * c + p1
        if not (math.isfinite(d2) and d2 < 0):
            return 0.0, 0.0
        return float(np.clip(0.5 * (m1 - p1) / d2, -0.5, 0.5)), float(d2)

    c = float(res[y, x])
    dx, cx = along(float(res[y, x - 1]), c, float(res[y, x + 1])) if 0 < x < w - 1 else (0.0, 0.0)
    dy, cy = along(float(res[y - 1, x]), c, float(res[y + 1, x])) if 0 < y < h - 1 else (0.0, 0.0)
    return dx, dy, cx, cy


def parabola_vertex(values: np.ndarray, i: int) -> float:
    """Offset in [-0.5, 0.5] (in steps) of the vertex through values[i-1..i+1]; 0 at the ends."""
    if i <= 0 or i >= len(values) - 1:
        return 0.0
    d2 = values[i - 1] - 2 * values[i] + values[i + 1]
    if not (math.isfinite(d2) and d2 < 0):
        return 0.0
    return float(np.clip(0.5 * (values[i - 1] - values[i + 1]) / d2, -0.5, 0.5))


def second_peak(res: np.ndarray, x: int, y: int, radius_px: float) -> float:
    """Highest local maximum (5x5 neighbourhood) of `res` farther than radius_px from (x, y): the
    best distinct alternative place. Local maxima only, so the main peak's own shoulder, still
    rising towards it at the exclusion radius, is not mistaken for a second place."""
    h, w = res.shape
    r = np.where(np.isfinite(res), res, -np.inf).astype(np.float32)
    is_max = r >= cv2.dilate(r, np.ones((5, 5), np.uint8))
    yy, xx = np.ogrid[:h, :w]
    far = (xx - x) ** 2 + (yy - y) ** 2 > radius_px ** 2
    vals = r[is_max & far & np.isfinite(r)]
    return float(vals.max()) if vals.size else -1.0
