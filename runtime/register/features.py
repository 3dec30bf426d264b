"""Local-feature registrars (see register.py): SIFT / ORB + ratio test, or ALIKED / DISK +
LightGlue from user-supplied ONNX files; then a RANSAC similarity (cv2.estimateAffinePartial2D;
OpenCV 5 refuses MAGSAC there). `verified` needs enough inliers, a fair inlier share, a second
model (RANSAC again on the outliers) clearly weaker, and heading / scale inside the prior.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from skyloc.core.errors import SkylocError
from skyloc.core.options import check_options, opt
from skyloc.runtime.register.base import PatchLike, Registrar, Registration, aircraft_heading, check_deadline, check_inputs, failed, rotation_search, to_gray


@dataclass
class FeatureConf:
    """The SIFT / ORB registrar's options (`skyloc run --features-*`, the `[run.features]` table)."""

    option_prefix = "features"  # flags --features-FIELD (skyloc/core/options.py opt_group)
    # which detector is the registrar's name (registry.py: sift, orb), never a separate option
    detector: str = opt("sift", "keypoint detector", cli=False)
    work_mpp: float = opt(0.5, "working resolution, m/px (never finer than the patch or the map)", gt=0, le=100)
    max_features: int = opt(4000, "keypoints per image", ge=2)
    ratio: float = opt(0.8, "Lowe ratio test: best / second-best descriptor distance below this", gt=0, le=1)
    ransac_px: float = opt(3.0, "RANSAC reprojection threshold, working pixels", gt=0, le=100)
    min_inliers: int = opt(15, "RANSAC inliers needed for `verified`", ge=3)
    min_inlier_share: float = opt(0.25, "inliers / ratio-test matches needed for `verified`", ge=0, le=1)
    min_second_ratio: float = opt(2.0, "inliers / inliers of the best model on the outliers needed", ge=0)
    acc_floor_m: float = opt(1.0, "accuracy never claimed better than this, metres", ge=0, le=1000)
    acc_k: float = opt(1.0, "scale of the inlier-residual accuracy term", gt=0, le=100)

    def __post_init__(self) -> None:
        check_options(self)


class FeatureRegistrar(Registrar):
    name = "features"
    Conf = FeatureConf

    def __init__(self, **conf) -> None:
        super().__init__(**conf)
        self.name = getattr(self.conf, "detector", self.name)
        if self.name not in ("sift", "orb", "aliked", "disk"):
            raise SkylocError(f"feature registrar: detector {self.name!r} unknown; use sift or orb")

    # The part a plugin replaces: keypoints + descriptors + matching -> point pairs.
    def _pairs(self, pg: np.ndarray, pmask: np.ndarray, mg: np.ndarray, mmask: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        c = self.conf
        if self.name == "sift":
            det, norm = cv2.SIFT_create(nfeatures=c.max_features), cv2.NORM_L2
        else:
            det, norm = cv2.ORB_create(nfeatures=c.max_features), cv2.NORM_HAMMING
        kp1, d1 = det.detectAndCompute(pg, pmask)
        kp2, d2 = det.detectAndCompute(mg, mmask)
        if d1 is None or d2 is None or len(kp1) < 2 or len(kp2) < 2:
            return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
        knn = cv2.BFMatcher(norm).knnMatch(d1, d2, k=2)
        good = [m[0] for m in knn if len(m) == 2 and m[0].distance < c.ratio * m[1].distance]
        src = np.float32([kp1[m.queryIdx].pt for m in good]).reshape(-1, 2)
        dst = np.float32([kp2[m.trainIdx].pt for m in good]).reshape(-1, 2)
        return src, dst

    def register(self, patch: PatchLike, map_rgb: np.ndarray, map_mpp: float,
                 heading_prior_deg: float | None = None, heading_tol_deg: float = 5.0,
                 scale_tol: float = 0.05, map_valid: np.ndarray | None = None,
                 deadline: float | None = None) -> Registration:
        # one hypothesis (a free similarity, any rotation and scale): a call ends within one
        # hypothesis' time of any deadline by itself, so the deadline is only checked for its type
        check_inputs(patch, map_rgb, map_mpp, heading_prior_deg, heading_tol_deg, scale_tol, map_valid)
        check_deadline(deadline)
        c = self.conf
        work = max(float(c.work_mpp), float(patch.mpp), float(map_mpp))
        pg, pmask, ppx = _resample(patch.image, patch.valid, patch.mpp, work)
        mg, mmask, mpx = _resample(map_rgb, map_valid, map_mpp, work)
        src, dst = self._pairs(pg, pmask, mg, mmask)
        if len(src) < max(3, c.min_inliers):
            return failed(self.name, f"{len(src)} matches after the ratio test (< {c.min_inliers})")
        M, inl = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=c.ransac_px,
                                             maxIters=5000, confidence=0.999)
        if M is None or inl is None:
            return failed(self.name, "RANSAC found no similarity")
        inl = inl.ravel().astype(bool)
        n_in = int(inl.sum())
        second = 0
        rest_s, rest_d = src[~inl], dst[~inl]
        if len(rest_s) >= 3:
            M2, inl2 = cv2.estimateAffinePartial2D(rest_s, rest_d, method=cv2.RANSAC,
                                                   ransacReprojThreshold=c.ransac_px, maxIters=2000)
            second = 0 if inl2 is None else int(inl2.sum())
        a, b = float(M[0, 0]), float(M[1, 0])
        # M rotates patch pixels clockwise (y down) by the bearing of the patch's up axis.
        up = math.degrees(math.atan2(b, a))
        scale = math.hypot(a, b) * mpx[0] / ppx[0]
        h, w = pg.shape
        cx, cy = M @ np.array([(w - 1) / 2, (h - 1) / 2, 1.0])
        H, W = mg.shape
        east = (cx - (W - 1) / 2) * mpx[0]
        north = -(cy - (H - 1) / 2) * mpx[1]
        proj = src[inl] @ M[:, :2].T + M[:, 2]
        rms_m = float(np.sqrt(np.mean(np.sum((proj - dst[inl]) ** 2, axis=1)))) * work if n_in else float("inf")
        acc = math.hypot(c.acc_floor_m, c.acc_k * rms_m / math.sqrt(max(n_in, 1)))
        centre, half = rotation_search(patch, heading_prior_deg, heading_tol_deg)
        reasons = []
        if n_in < c.min_inliers:
            reasons.append(f"{n_in} inliers < {c.min_inliers}")
        if n_in < c.min_inlier_share * len(src):
            reasons.append(f"inlier share {n_in}/{len(src)} < {c.min_inlier_share}")
        if n_in < c.min_second_ratio * second:
            reasons.append(f"second model has {second} inliers vs {n_in}")
        if half < 180 and abs((up - centre + 180) % 360 - 180) > half + 1.0:
            reasons.append(f"rotation {up:.1f} deg outside the prior {centre:.1f} +- {half:.1f}")
        if abs(scale - 1) > scale_tol + 0.02:
            reasons.append(f"scale {scale:.3f} outside 1 +- {scale_tol}")
        shrink = len(src) + 20.0  # a handful of lucky matches must not score like a real fit
        return Registration(not reasons, float(east), float(north), aircraft_heading(patch, up), float(scale),
                            n_in / shrink, second / shrink, n_in, float(acc), self.name, "; ".join(reasons))


def _resample(rgb: np.ndarray, valid: np.ndarray | None, mpp: float, work: float
              ) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Grey uint8 image + mask (eroded off the no-data border) at ~work m/px, and its true m/px."""
    gray = to_gray(rgb)
    H, W = gray.shape
    mask = np.full((H, W), 255, np.uint8) if valid is None else np.asarray(valid, np.uint8) * 255
    f = mpp / work
    if abs(f - 1) > 1e-6:
        size = (max(1, round(W * f)), max(1, round(H * f)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
    mask = cv2.erode(mask, np.ones((7, 7), np.uint8))
    return (np.clip(gray, 0, 255).astype(np.uint8), mask,
            (mpp * W / gray.shape[1], mpp * H / gray.shape[0]))


@dataclass
class LightGlueConf(FeatureConf):
    """The ALIKED / DISK + LightGlue registrar's options (`skyloc run --lightglue-*`, `[run.lightglue]`)."""

    option_prefix = "lightglue"
    detector: str = opt("aliked", "keypoint extractor (the registrar's name: aliked, disk)", cli=False)
    extractor_onnx: str = opt("", "the ALIKED or DISK ONNX file", metavar="X.onnx")
    matcher_onnx: str = opt("", "the LightGlue ONNX file matching that extractor", metavar="LG.onnx")
    max_features: int = opt(2048, "keypoints per image", ge=2)
    match_threshold: float = opt(0.2, "LightGlue match confidence needed", ge=0, le=1)


class LightGlueRegistrar(FeatureRegistrar):
    """ALIKED / DISK keypoints + LightGlue matching through OpenCV 5's dnn feature classes. The
    networks are not shipped: pass the ONNX files (extractor_onnx=..., matcher_onnx=...)."""

    Conf = LightGlueConf

    def __init__(self, **conf) -> None:
        extractor = conf.pop("extractor", None)
        if extractor is not None:
            conf["detector"] = extractor
        super().__init__(**conf)
        c = self.conf
        if c.detector not in ("aliked", "disk"):
            raise SkylocError(f"lightglue registrar: extractor {c.detector!r} unknown; use aliked or disk")
        for what, p in (("extractor_onnx", c.extractor_onnx), ("matcher_onnx", c.matcher_onnx)):
            if not p or not Path(p).is_file():
                raise SkylocError(
                    f"lightglue registrar: {what} file {p or '(not given)'} not found: export "
                    f"{c.detector.upper() if what == 'extractor_onnx' else 'LightGlue'} to ONNX and pass "
                    f"{what}=PATH (or use the ncc / sift registrars, which need no model files)")
        if c.detector == "aliked":
            self._det = cv2.ALIKED_create(str(c.extractor_onnx))
        else:
            self._det = cv2.DISK_create(str(c.extractor_onnx), c.max_features)
        self._matcher = cv2.LightGlueMatcher_create(str(c.matcher_onnx), c.match_threshold)

    def _pairs(self, pg, pmask, mg, mmask):
        rgb1, rgb2 = (cv2.cvtColor(g, cv2.COLOR_GRAY2BGR) for g in (pg, mg))
        kp1, d1 = self._det.detectAndCompute(rgb1, pmask)
        kp2, d2 = self._det.detectAndCompute(rgb2, mmask)
        if d1 is None or d2 is None or not len(kp1) or not len(kp2):
            return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
        p1 = np.float32([k.pt for k in kp1])
        p2 = np.float32([k.pt for k in kp2])
        self._matcher.setPairInfo(p1, p2, (pg.shape[1], pg.shape[0]), (mg.shape[1], mg.shape[0]))
        ms = self._matcher.match(d1, d2)
        return (np.float32([p1[m.queryIdx] for m in ms]).reshape(-1, 2),
                np.float32([p2[m.trainIdx] for m in ms]).reshape(-1, 2))
