"""Onboard local-feature extraction from an exported matcher ONNX (`skyloc export matcher`).

The ONNX holds the dense network only (export/xfeat_net.py, export/disk_net.py): uint8 RGB NHWC
in, a full resolution keypoint map (XFeat: a probability; DISK: a detection logit) and an
L2-normalised descriptor map (XFeat: 64-d at 1/8 resolution, with a reliability map at 1/8;
DISK: 128-d at every pixel) out. The
image-dependent part runs here in numpy/OpenCV, torch-free:

- pad to the net's multiple (reflected, so the border does not read as an edge), with pixels
  outside `valid` filled by the mean valid colour (so the mask border is not an edge either);
- NMS: a pixel is a keypoint when it is the maximum of its 5x5 neighbourhood and above the
  net's detection threshold, inside the image and at least MASK_MARGIN_PX (or a cell, if larger)
  away from invalid pixels;
- score = the keypoint map x bilinear reliability (XFeat's ranking; DISK: its logit), top-k by score;
- descriptors sampled bilinearly from the descriptor map at the keypoint, re-normalised.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import cv2
import numpy as np

from skyloc.core.errors import SkylocError

MATCHER_FORMAT = "skyloc-matcher/1"
MatcherKind = Literal["xfeat", "disk"]
MATCHER_KINDS: tuple[str, ...] = get_args(MatcherKind)
OUTPUTS_BY_KIND: dict[str, tuple[str, ...]] = {"xfeat": ("heatmap", "descriptors", "reliability"),
                                               "disk": ("heatmap", "descriptors")}
# each net's own default floor: XFeat's keypoint probability 0.05; DISK's detection logit 0
DETECTION_THRESHOLDS = {"xfeat": 0.05, "disk": 0.0}
NMS_KERNEL = 5
MASK_MARGIN_PX = 8  # keypoints keep this far from invalid pixels (their descriptors would read the fill)


@dataclass
class Keypoints:
    xy: np.ndarray     # (N, 2) float32 pixel coords (x right, y down; pixel i's centre at i + 0.5)
    desc: np.ndarray   # (N, D) float32, rows L2-normalised
    score: np.ndarray  # (N,) float32, higher is better

    def __len__(self) -> int:
        return int(self.xy.shape[0])

    def take(self, idx: np.ndarray) -> "Keypoints":
        return Keypoints(self.xy[idx], self.desc[idx], self.score[idx])


def read_sidecar(onnx_path: Path) -> dict[str, Any]:
    side = onnx_path.with_suffix(".json")
    try:
        meta = json.loads(side.read_text())
    except FileNotFoundError:
        raise SkylocError(f"matcher {onnx_path}: its sidecar {side} is missing; re-export with "
                          "`skyloc export matcher --out ...`") from None
    except (OSError, ValueError) as e:
        raise SkylocError(f"matcher sidecar {side} is unreadable ({e}); re-export the matcher") from None
    if not isinstance(meta, dict) or meta.get("format") != MATCHER_FORMAT:
        raise SkylocError(f"{side} is not a matcher sidecar (format {meta.get('format') if isinstance(meta, dict) else None!r}, "
                          f"expected {MATCHER_FORMAT!r}); pass a model from `skyloc export matcher`")
    if meta.get("kind") not in MATCHER_KINDS:
        raise SkylocError(f"{side}: matcher kind {meta.get('kind')!r} is not one of {MATCHER_KINDS}")
    inp = meta.get("input") or {}
    if (inp.get("layout"), inp.get("dtype"), inp.get("color")) != ("NHWC", "uint8", "RGB") \
            or not (isinstance(inp.get("multiple"), int) and inp["multiple"] > 0):
        raise SkylocError(f"{side}: input contract {inp} is not uint8 RGB NHWC with a positive 'multiple'")
    want = list(OUTPUTS_BY_KIND[meta["kind"]])
    if list(meta.get("outputs", {})) != want:
        raise SkylocError(f"{side}: outputs {list(meta.get('outputs', {}))} != {want} of a {meta['kind']} matcher")
    thr = meta.get("detection_threshold", DETECTION_THRESHOLDS[meta["kind"]])
    if not (isinstance(thr, (int, float)) and math.isfinite(thr)):
        raise SkylocError(f"{side}: detection_threshold {thr!r} is not a finite number; re-export the matcher")
    return meta


class FeatureExtractor:
    """Keypoints + descriptors of an image through an exported matcher ONNX (ONNX Runtime)."""

    def __init__(self, onnx_path: str | Path, threads: int = 0, providers: list[str] | None = None) -> None:
        """`providers`: ONNX Runtime execution providers in order of preference (e.g.
        ["CUDAExecutionProvider", "CPUExecutionProvider"]); None = CPU only."""
        from skyloc.core.sidecar import sha256_file
        from skyloc.runtime.backends.onnxruntime_backend import cpu_session

        path = Path(onnx_path)
        if not path.is_file():
            raise SkylocError(f"matcher model {path} does not exist; export one with "
                              "`skyloc export matcher --kind xfeat --out M.onnx`")
        self.sidecar = read_sidecar(path)
        self.fingerprint = sha256_file(path)
        if self.sidecar.get("onnx_sha256") not in (None, self.fingerprint):
            raise SkylocError(f"matcher {path} does not match its sidecar's onnx_sha256 (modified or mixed up "
                              "with another export); re-export it")
        self.path = path
        self.kind: str = self.sidecar["kind"]
        self.multiple: int = int(self.sidecar["input"]["multiple"])
        self.cell: int = int(self.sidecar.get("cell", 8))
        self.outputs: tuple[str, ...] = OUTPUTS_BY_KIND[self.kind]
        self.threshold: float = float(self.sidecar.get("detection_threshold", DETECTION_THRESHOLDS[self.kind]))
        self.input_name: str = self.sidecar["input"].get("name", "image")
        self.session = cpu_session(path, threads=threads) if not providers else _session(path, threads, providers)

    def dense(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Run the net on an (H, W, 3) uint8 image whose sides are multiples of `multiple`:
        (heatmap, descriptor map, reliability map or None where the net has none)."""
        got = self.session.run(list(self.outputs), {self.input_name: rgb[None]})
        if not all(np.isfinite(a).all() for a in got):
            raise SkylocError(f"matcher {self.path} produced NaN/Inf on a {rgb.shape[1]}x{rgb.shape[0]} image: "
                              "the model file is damaged or the backend is faulty; re-export it")
        return got[0][0, 0], got[1][0], (got[2][0, 0] if len(got) > 2 else None)

    def extract(self, image: np.ndarray, valid: np.ndarray | None = None, max_kpts: int = 2048,
                threshold: float | None = None) -> Keypoints:
        """Keypoints of `image`, best first; `threshold`: the detection floor (None: the net's own)."""
        threshold = self.threshold if threshold is None else threshold
        rgb, valid = _check_image(image, valid)
        if not (isinstance(max_kpts, (int, np.integer)) and max_kpts > 0):
            raise SkylocError(f"extract: max_kpts must be a positive int (got {max_kpts!r})")
        h, w = rgb.shape[:2]
        ph, pw = -h % self.multiple, -w % self.multiple
        if valid is not None and not valid.all():
            if not valid.any():
                return empty_keypoints(self.sidecar.get("descriptor_dim", 64))
            rgb = rgb.copy()
            rgb[~valid] = rgb[valid].mean(axis=0).round().astype(np.uint8)
        padded = cv2.copyMakeBorder(rgb, 0, ph, 0, pw, cv2.BORDER_REFLECT_101) if (ph or pw) else rgb
        heat, dmap, rel = self.dense(np.ascontiguousarray(padded))
        keep = np.zeros(heat.shape, bool)
        keep[:h, :w] = True
        if valid is not None and not valid.all():
            # a keypoint whose cell reaches outside the data describes the fill, not the ground
            margin = max(self.cell, MASK_MARGIN_PX)
            keep[:h, :w] &= cv2.erode(valid.astype(np.uint8), np.ones((2 * margin + 1,) * 2, np.uint8)) > 0
        ys, xs = nms(heat, threshold, keep)
        cx, cy = xs + 0.5, ys + 0.5  # pixel centres
        score = heat[ys, xs]
        if rel is not None:
            score = score * bilinear(rel[None], cx / self.cell, cy / self.cell)[:, 0]
        order = np.argsort(-score, kind="stable")[:max_kpts]
        cx, cy, score = cx[order], cy[order], score[order]
        d = bilinear(dmap, cx / self.cell, cy / self.cell)
        d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
        return Keypoints(np.stack([cx, cy], 1).astype(np.float32), d.astype(np.float32),
                         score.astype(np.float32))


def _session(path: Path, threads: int, providers: list[str]) -> Any:
    import onnxruntime as ort

    missing = [p for p in providers if p not in ort.get_available_providers()]
    if missing:
        raise SkylocError(f"matcher {path}: ONNX Runtime here has no {missing} (available: "
                          f"{ort.get_available_providers()}); install onnxruntime-gpu or drop them")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads > 0:
        so.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), sess_options=so, providers=list(providers))


def empty_keypoints(dim: int = 64) -> Keypoints:
    return Keypoints(np.zeros((0, 2), np.float32), np.zeros((0, dim), np.float32), np.zeros(0, np.float32))


def _check_image(image: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    img = np.asarray(image)
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise SkylocError(f"extract: image must be (H, W, 3) RGB or (H, W) gray uint8 (got {img.shape} {img.dtype})")
    if min(img.shape[:2]) < 8:
        raise SkylocError(f"extract: image {img.shape[:2]} is smaller than one 8x8 cell")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if valid is not None:
        valid = np.asarray(valid)
        if valid.shape != img.shape[:2]:
            raise SkylocError(f"extract: valid mask {valid.shape} != image {img.shape[:2]}")
        valid = valid.astype(bool)
    return np.ascontiguousarray(img), valid


def nms(heat: np.ndarray, threshold: float, keep: np.ndarray, kernel: int = NMS_KERNEL) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) of pixels that equal the max of their kernel x kernel neighbourhood, exceed
    `threshold` and lie where `keep`; row-major order."""
    if not math.isfinite(threshold):
        raise SkylocError(f"extract: detection threshold must be finite (got {threshold!r})")
    h = np.nan_to_num(heat.astype(np.float32), nan=-np.inf)
    # -inf outside: a logit map (DISK) has negative values, so a 0 border would hide nothing
    local_max = cv2.dilate(h, np.ones((kernel, kernel), np.uint8), borderType=cv2.BORDER_CONSTANT,
                           borderValue=-np.inf)
    return np.nonzero((h == local_max) & (h > threshold) & keep)


def bilinear(fmap: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample a (C, h, w) map at continuous coords (u, v) where cell j's centre is at j + 0.5;
    border cells are extended. Returns (N, C)."""
    c, h, w = fmap.shape
    x = np.clip(np.asarray(u, np.float64) - 0.5, 0, w - 1)
    y = np.clip(np.asarray(v, np.float64) - 0.5, 0, h - 1)
    x0, y0 = np.minimum(np.floor(x).astype(int), w - 2 if w > 1 else 0), np.minimum(np.floor(y).astype(int), h - 2 if h > 1 else 0)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    f = fmap.reshape(c, -1)
    at = lambda yy, xx: f[:, yy * w + xx].T  # noqa: E731
    return ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x1)) + fy * ((1 - fx) * at(y1, x0) + fx * at(y1, x1)))


def open_extractor(path: str | Path, threads: int = 0, providers: list[str] | None = None) -> FeatureExtractor:
    return FeatureExtractor(path, threads=threads, providers=providers)
