"""Onboard learned matching of two keypoint sets through an exported glue ONNX (`skyloc export glue`).

The ONNX holds a LightGlue-family matcher with every layer run (no early exit, no point pruning,
so the graph is static apart from N0 and N1): normalised keypoints + descriptors of two images in,
LightGlue's log-assignment matrix out. What depends on the images stays here, torch-free:

- keypoints are normalised with their image's size as LightGlue does it in torch,
  (xy - size / 2) / (max(size) / 2) with size = (w, h), so the graph needs no size input;
- matches are LightGlue's own filter: mutual argmax over the inner N0 x N1 block and
  exp(log-assignment) > threshold (LightGlue's 0.1 unless told otherwise).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from skyloc.core.errors import SkylocError

GLUE_FORMAT = "skyloc-glue/1"
GlueKind = Literal["disk-lightglue", "xfeat-lighterglue"]
GLUE_KINDS: tuple[str, ...] = get_args(GlueKind)
INPUTS = ("kpts0", "desc0", "kpts1", "desc1")
OUTPUT = "scores"
FILTER_THRESHOLD = 0.1  # LightGlue's default match threshold (on exp of the log-assignment)
NORMALISATION = "(xy - size / 2) / (max(size) / 2); xy in pixels, size = (w, h) of that image in pixels"


def _reexport(kind: Any = None) -> str:
    k = kind if kind in GLUE_KINDS else "K"
    return f"re-export it with `skyloc export glue --kind {k} --out G.onnx`"


def read_glue_sidecar(path: str | Path) -> dict[str, Any]:
    """The validated sidecar of the glue ONNX `path` (read from `path`.json); the ONNX file's
    sha256 must equal the sidecar's onnx_sha256."""
    from skyloc.core.sidecar import sha256_file

    path = Path(path)
    side = path.with_suffix(".json")
    if not path.is_file():
        raise SkylocError(f"glue model {path} does not exist; {_reexport()}")
    try:
        meta = json.loads(side.read_text())
    except FileNotFoundError:
        raise SkylocError(f"glue model {path}: its sidecar {side} is missing; {_reexport()}") from None
    except (OSError, ValueError) as e:
        raise SkylocError(f"glue sidecar {side} is unreadable ({e}); {_reexport()}") from None
    if not isinstance(meta, dict) or meta.get("format") != GLUE_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise SkylocError(f"{side} is not a glue sidecar (format {got!r}, expected {GLUE_FORMAT!r}); "
                          f"pass a model from `skyloc export glue` or {_reexport()}")
    kind = meta.get("kind")
    if kind not in GLUE_KINDS:
        raise SkylocError(f"{side}: glue kind {kind!r} is not one of {GLUE_KINDS}; {_reexport()}")
    dim = meta.get("descriptor_dim")
    if not (isinstance(dim, int) and not isinstance(dim, bool) and dim > 0):
        raise SkylocError(f"{side}: descriptor_dim {dim!r} is not a positive int; {_reexport(kind)}")
    th = meta.get("filter_threshold", FILTER_THRESHOLD)
    if not (isinstance(th, (int, float)) and 0 <= th < 1):
        raise SkylocError(f"{side}: filter_threshold {th!r} is not in [0, 1); {_reexport(kind)}")
    if list(meta.get("inputs") or {}) != list(INPUTS) or list(meta.get("output") or {}) != [OUTPUT]:
        raise SkylocError(f"{side}: I/O {list(meta.get('inputs') or {})} -> {list(meta.get('output') or {})} "
                          f"is not {list(INPUTS)} -> [{OUTPUT!r}]; {_reexport(kind)}")
    digest = sha256_file(path)
    if meta.get("onnx_sha256") != digest:
        raise SkylocError(f"glue model {path} does not match its sidecar's onnx_sha256 (modified, or mixed up "
                          f"with another export); {_reexport(kind)}")
    return meta


class GlueMatcher:
    """Matches between two keypoint sets through an exported glue ONNX (ONNX Runtime)."""

    def __init__(self, onnx_path: str | Path, threads: int = 0, providers: list[str] | None = None) -> None:
        """`providers`: ONNX Runtime execution providers in order of preference; None = CPU only."""
        from skyloc.runtime.backends.onnxruntime_backend import cpu_session
        from skyloc.runtime.register.extractor import _session

        path = Path(onnx_path)
        self.sidecar = read_glue_sidecar(path)
        self.path = path
        self.kind: str = self.sidecar["kind"]
        self.descriptor_dim: int = int(self.sidecar["descriptor_dim"])
        self.fingerprint: str = self.sidecar["onnx_sha256"]
        self.threshold: float = float(self.sidecar.get("filter_threshold", FILTER_THRESHOLD))
        self.session = cpu_session(path, threads=threads) if not providers else _session(path, threads, providers)
        names = [i.name for i in self.session.get_inputs()]
        dims = [i.shape[-1] for i in self.session.get_inputs()]
        # a graph exported for another descriptor width would fail deep inside ORT on the first match
        if names != list(INPUTS) or dims[1] != self.descriptor_dim or dims[3] != self.descriptor_dim:
            raise SkylocError(f"glue model {path} has inputs {names} of widths {dims}, not {list(INPUTS)} with "
                              f"{self.descriptor_dim}-d descriptors as its sidecar says; {_reexport(self.kind)}")

    def log_assignment(self, xy0: np.ndarray, desc0: np.ndarray, size0: tuple[float, float],
                       xy1: np.ndarray, desc1: np.ndarray, size1: tuple[float, float]) -> np.ndarray:
        """LightGlue's (N0 + 1, N1 + 1) log-assignment (last row/column: unmatched); needs N0, N1 >= 1."""
        k0, d0 = self._check(xy0, desc0, size0, "0")
        k1, d1 = self._check(xy1, desc1, size1, "1")
        if not (len(k0) and len(k1)):
            raise SkylocError("glue: log_assignment needs at least one keypoint in each image")
        return self._run(k0, d0, k1, d1)

    def match(self, xy0: np.ndarray, desc0: np.ndarray, size0: tuple[float, float],
              xy1: np.ndarray, desc1: np.ndarray, size1: tuple[float, float],
              threshold: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(i0, i1, score): int64 indices into set 0 and set 1 and the float32 match probability
        of each mutual match above `threshold` (default: the sidecar's filter_threshold).
        xy*: (N, 2) pixel coordinates; desc*: (N, descriptor_dim); size*: (w, h) in pixels."""
        th = self.threshold if threshold is None else threshold
        if not (isinstance(th, (int, float, np.floating)) and math.isfinite(th) and 0 <= th < 1):
            raise SkylocError(f"glue: match threshold must be in [0, 1) (got {threshold!r})")
        k0, d0 = self._check(xy0, desc0, size0, "0")
        k1, d1 = self._check(xy1, desc1, size1, "1")
        if not (len(k0) and len(k1)):
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        return filter_matches(self._run(k0, d0, k1, d1), float(th))

    def _run(self, k0: np.ndarray, d0: np.ndarray, k1: np.ndarray, d1: np.ndarray) -> np.ndarray:
        (scores,) = self.session.run([OUTPUT], dict(zip(INPUTS, (k0[None], d0[None], k1[None], d1[None]))))
        want = (1, len(k0) + 1, len(k1) + 1)
        if scores.shape != want or not np.isfinite(scores).all():
            what = f"a {scores.shape}" if scores.shape != want else "NaN/Inf"
            raise SkylocError(f"glue model {self.path} produced {what} output for {len(k0)} x {len(k1)} keypoints: "
                              "the inputs are out of range (descriptors L2-normalised?), the model file is "
                              f"damaged or the backend is faulty; if the inputs are sane, {_reexport(self.kind)}")
        return scores[0]

    def _check(self, xy: np.ndarray, desc: np.ndarray, size: tuple[float, float], which: str
               ) -> tuple[np.ndarray, np.ndarray]:
        xy, desc = np.asarray(xy), np.asarray(desc)
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise SkylocError(f"glue: xy{which} must be (N, 2) pixel coordinates (got {xy.shape})")
        if desc.ndim != 2 or desc.shape != (len(xy), self.descriptor_dim):
            raise SkylocError(f"glue: desc{which} must be ({len(xy)}, {self.descriptor_dim}) for the {self.kind} "
                              f"model {self.path.name} (got {desc.shape})")
        wh = np.asarray(size, np.float64)
        if wh.shape != (2,) or not (np.isfinite(wh).all() and (wh > 0).all()):
            raise SkylocError(f"glue: size{which} must be the image's (w, h) in pixels, both > 0 (got {size!r})")
        if not (np.isfinite(xy).all() and np.isfinite(desc).all()):
            raise SkylocError(f"glue: xy{which} / desc{which} hold NaN or Inf")
        return normalise_keypoints(xy, wh), np.ascontiguousarray(desc, np.float32)


def normalise_keypoints(xy: np.ndarray, size: np.ndarray) -> np.ndarray:
    """LightGlue's keypoint normalisation (see NORMALISATION): the image centre goes to 0 and
    the longer side spans [-1, 1], keeping the aspect ratio."""
    wh = np.asarray(size, np.float64)
    return ((np.asarray(xy, np.float64) - wh / 2) / (wh.max() / 2)).astype(np.float32)


def filter_matches(scores: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LightGlue's match rule on an (N0 + 1, N1 + 1) log-assignment: i0 <-> i1 when each is the
    other's argmax in the inner block and exp(score) > threshold."""
    inner = scores[:-1, :-1]
    best0, best1 = inner.argmax(1), inner.argmax(0)
    i0 = np.arange(inner.shape[0])
    prob = np.exp(inner[i0, best0].astype(np.float64))
    keep = (best1[best0] == i0) & (prob > threshold)
    return i0[keep].astype(np.int64), best0[keep].astype(np.int64), prob[keep].astype(np.float32)


def open_glue(path: str | Path, threads: int = 0, providers: list[str] | None = None) -> GlueMatcher:
    return GlueMatcher(path, threads=threads, providers=providers)
