"""The learned registrar's optional refinement by a glue (`--xfeat-glue G.onnx`, `skyloc export glue`).

Mutual nearest neighbours find and verify the place (the gate calibrated on real maps is theirs);
a LightGlue-family matcher then re-matches the frame, at the verified fit's rotation, against the
map keypoints around the verified place, and its fit (same pose constraints) replaces the
geometry when it holds at least as many inliers and lands within AGREE_M of the verified fit.
It refines a verified place and never picks another, so the gate's trials stay valid for it.
It is one more glue call after the search: not started once the frame's deadline has passed.
Real aerovloc photo, heading known (600 m crop, 2048 frame x 16384 map keypoints,
xfeat-lighterglue): 0.67 -> 0.27 m and 1.08 -> 0.17 m from the truth, +4 s on this 2-core CPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skyloc.core.errors import SkylocError
from skyloc.runtime.register.extractor import Keypoints
from skyloc.runtime.register.matching import ransac_similarity, to_complex

AGREE_M = 5.0  # a refinement further than this from the verified fit is not taken


@dataclass
class Seen:
    """What a fit was drawn from: the turned frame's keypoints and the search's constraints."""

    kp: Keypoints                     # canvas px
    canvas_hw: tuple[int, int]
    r: complex                        # canvas = r * patch + off
    off: complex
    reach: float                      # map px the frame can overlap
    q_range: tuple[float, float]
    half_turn: float


@dataclass
class Refined:
    q: complex      # patch working px -> map px
    t: complex
    n: int
    rms_px: float


def glue_for(path: Path, extractor: Any, threads: int, providers: list[str] | None) -> Any:
    """The glue at `path`, refused unless it was trained on the extractor's features."""
    from skyloc.runtime.register.glue import open_glue

    glue = open_glue(path, threads=threads, providers=providers)
    if glue.kind.split("-")[0] != extractor.kind or glue.descriptor_dim != extractor.sidecar.get("descriptor_dim"):
        raise SkylocError(f"glue {path} is a {glue.kind} matcher ({glue.descriptor_dim}-d) but the matcher ONNX "
                          f"{extractor.path} extracts {extractor.kind} features: export the glue of that kind "
                          f"(`skyloc export glue --kind {extractor.kind}-...`)")
    return glue


def refine(glue: Any, conf: Any, q: complex, t: complex, n: int, seen: Seen, map_kp: Keypoints,
           mxy: np.ndarray, cp: complex, mpx: float) -> Refined | None:
    """The glue's fit at the verified fit (q, t: patch -> map px, n inliers) or None; cp is the
    patch centre, mpx the map's m/px; conf: glue_kpts, glue_map_kpts, ransac_px, ransac_iters, seed."""
    qc = q / seen.r  # the fit in canvas terms: map = qc * canvas + tc
    tc = t - qc * seen.off
    place = qc * complex(seen.canvas_hw[1] / 2, seen.canvas_hw[0] / 2) + tc
    cols = np.flatnonzero(np.abs(mxy - place) <= seen.reach)
    cols = cols[np.argsort(-map_kp.score[cols], kind="stable")[:conf.glue_map_kpts]]
    k = min(len(seen.kp), conf.glue_kpts)  # extract ranks keypoints best first
    if len(cols) < 2 or k < 2:
        return None
    xy = map_kp.xy[cols]
    origin = np.floor(xy.min(axis=0))  # the glue sees the map keypoints in the box that holds them
    size = tuple(int(v) + 1 for v in np.ceil(xy.max(axis=0) - origin))
    j1, j2, _ = glue.match(seen.kp.xy[:k], seen.kp.desc[:k], (seen.canvas_hw[1], seen.canvas_hw[0]),
                           (xy - origin).astype(np.float32), np.asarray(map_kp.desc[cols], np.float32), size)
    sim = ransac_similarity(to_complex(seen.kp.xy[j1]), mxy[cols[j2]], conf.ransac_px, seen.q_range, 0.0,
                            seen.half_turn, conf.ransac_iters, conf.seed)
    if sim is None or sim.n < n:
        return None
    out = Refined(sim.q * seen.r, sim.q * seen.off + sim.t, sim.n, sim.rms_px)
    return out if abs((out.q - q) * cp + out.t - t) * mpx <= AGREE_M else None
