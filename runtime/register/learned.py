"""The learned registrar (`xfeat`, alias `learned`): pretrained local features exported to ONNX
(`skyloc export matcher`), mutual nearest neighbours, a pose-constrained RANSAC similarity.

Both images are brought to one working resolution (default 0.5 m/px: on the real aerovloc pair,
photo against its other-season map, the right fit had 74 inliers there against 29 at the map's
0.338 m/px, 27 at 0.75 and 8 at 1.0). XFeat is not rotation invariant (inliers on that pair:
74 at 0 deg off, 55 at 10, 42 at 20, 28 at 30, 26 at 45, <= 10 at 90 / 180), so the frame patch
is turned over the headings to search, `rot_step_deg` apart, and matched at each; the map is
extracted once. Each fit is constrained to the pose: scale within 1 +- (scale_tol + 0.02) and a
residual rotation within half a step (+2 deg), so a wrong place rarely gathers inliers.

`verified` needs enough inliers, a clear margin over the best *distinct* alternative (another
rotation's, another voted place's or the outliers' best fit landing more than `distinct_m` away
or turned more than 10 deg), inliers that are a fair share of the putative matches (a wrong
place's are chance agreements among many), and heading / scale inside the prior. `accuracy_m`
comes from the inlier residuals, never below `acc_floor_m`. A window much larger than the frame
(the start prior's scan, the whole map) is first searched by translation voting (voting.py).
With a glue (`glue`, glue_refine.py) a verified fit's geometry is refined by LightGlue-family
matches at its place; the gate stays the mutual-NN fit's. Any matcher kind the extractor reads
(XFeat, DISK) works; the registrar reports itself as `xfeat` for XFeat, `learned` otherwise.
Offsets, headings and scale follow register/base.py.

Gate (benchmarks/results/learned_gate.md: 566 wrong-place trials, 284 of them heading unknown, and
144 right-place trials on the real Turku and aerovloc maps and the real aerovloc photo, two seeds):
wrong places reached at most 24 inliers (heading known, second 8: it cleared x2.5, hence the
ratio); those with 16 or more inliers held up to 8.8 % (median 6.2 %) of their putative matches,
and none of all 566 cleared both x2.5 and 8 %. With >= 24 inliers, x2.5 and >= 8 %: 0 of 566
wrong places verified, 139 of 144 right places (the 5 misses: photo squares with the heading
unknown, one of them, 26 of 364, refused by the ratio alone), verified error median 0.17 m, max
3.1 m, all within 2 x accuracy_m. (Before voting, 373 trials had at most 19 inliers:
voting finds the most consistent place of a crop, wrong or right, so wrong places gather more.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from skyloc.core.errors import SkylocError
from skyloc.core.options import check_options, opt
from skyloc.runtime.register.base import (
    PatchLike,
    Registrar,
    Registration,
    SearchClock,
    aircraft_heading,
    check_inputs,
    failed,
    rotation_search,
)
from skyloc.runtime.register.extractor import Keypoints, open_extractor
from skyloc.runtime.register.glue_refine import Seen, glue_for, refine
from skyloc.runtime.register.matching import mutual_nn, ransac_similarity, to_complex
from skyloc.runtime.register.voting import local_mutual_pairs, vote_places

ROT_SLACK_DEG = 2.0      # a fit may turn this much past half a rotation step
DISTINCT_TURN_DEG = 10.0
VOTE_BIN_M = 2.5       # translation-vote bins (3 x 3 summed)
VOTE_TURN_DEG = 5.0    # residual turns voted over inside one rotation hypothesis (2.5 deg off: 2 m at 50 m)
VOTE_CELL_M = 20.0     # pairs are mutual nearest neighbours within ~3 cells of this
VOTE_KPTS = 1024       # frame keypoints that vote
# voting only in windows over this many times the frame's reach (half-sizes): a track's window
# (~1.1x) is matched whole, as before voting (voting there cost 2.2x the register time: three places
# fitted per rotation; ResNet-50 INT8 flight, heading known: 13.6 -> 31.5 ms p50); the gate bench's
# 300 m crops around 150 m squares (1.3x) and a start prior's scan (~4x) vote
VOTE_WINDOW = 1.2
VOTE_SLACK_M = 10.0    # a voted place's sub-window reaches this far past the frame's keypoints


@dataclass
class LearnedConf:
    """The learned registrar's options (`skyloc run --xfeat-*`, the `[run.xfeat]` table of a `--config` TOML)."""

    option_prefix = "xfeat"  # flags --xfeat-FIELD (skyloc/core/options.py opt_group)
    # `skyloc run` sets it from --matcher / the tile set's map features (one option per value)
    onnx: str = opt("", "matcher ONNX from `skyloc export matcher` (required)", cli=False)
    glue: str = opt("", "LightGlue-family ONNX from `skyloc export glue`: re-matches a verified fit's rotation and "
                        "place to refine it (\"\": no refinement); must suit the matcher's kind")
    # LightGlue's cost grows with the product of the two sets (xfeat-lighterglue 1024 x 2048: 0.3 s, x 8192: 2.1 s
    # on this 2-core CPU): the strongest keypoints of each side go in
    glue_kpts: int = opt(2048, "frame keypoints the glue sees (the strongest)", ge=8)
    glue_map_kpts: int = opt(16384, "map keypoints around the fit the glue sees (the strongest)", ge=8)
    threads: int = opt(0, "ONNX Runtime intra-op threads (0: its default)", ge=0, le=1024)
    providers: str = opt("", "ONNX Runtime providers, comma-separated (\"\": CPU), e.g. "
                             "CUDAExecutionProvider,CPUExecutionProvider")
    work_mpp: float = opt(0.5, "working resolution, m/px (never finer than the patch or the map)", gt=0, le=100)
    max_kpts: int = opt(2048, "frame keypoints per rotation", ge=1)
    map_max_kpts: int = opt(16384, "map-crop keypoints when `register` extracts the crop itself", ge=1)
    min_cos: float = opt(0.5, "mutual nearest neighbours below this cosine are dropped", ge=-1, le=1)
    rot_step_deg: float = opt(30.0, "spacing of the frame rotations tried, degrees", gt=0, le=360)
    ransac_px: float = opt(3.0, "inlier threshold, working pixels", gt=0, le=100)
    ransac_iters: int = opt(2000, "RANSAC iterations", ge=1)
    # `skyloc bench learned-gate`: wrong places reached <= 24 inliers, none with x2.5 and 8 % (module doc)
    min_inliers: int = opt(24, "inliers needed for `verified`", ge=3)
    min_margin: float = opt(2.5, "inliers / inliers of the best distinct alternative needed", gt=0)
    # a wrong place's inliers are chance agreements among its putative matches (median 3-6 % of them);
    # `skyloc bench learned-gate`: no wrong place cleared both x2.5 and 8 % (module doc)
    min_inlier_ratio: float = opt(0.08, "inliers / putative (mutual) matches needed", ge=0, le=1)
    vote_places: int = opt(3, "places voted for in a window much larger than the frame, matched each", ge=1, le=32)
    distinct_m: float = opt(15.0, "an alternative fit farther than this is a distinct place, metres", gt=0)
    # The inlier residuals cannot see how far the map itself sits from what the camera sees: another
    # season moves the shadows (2-6 m in the flights' appearance model), and keypoints on shadow edges
    # move with them. Cross-domain flights, 6 runs of 20 frames (benchmarks/results/flight-crossdomain.md):
    # verified errors within 2 x accuracy_m in the worst run 7 of 11 with a 1.5 m floor (aerovloc at
    # 80 m, errors 1.3-3.7 m, all on the side away from the moved shadows), 10 of 11 with 1.75 m,
    # 11 of 11 with 2.0 m (every run 100 %).
    acc_floor_m: float = opt(2.0, "accuracy never claimed better than this, metres", ge=0, le=1000)
    acc_k: float = opt(1.0, "scale of the inlier-residual accuracy term", gt=0, le=100)
    seed: int = opt(0, "RANSAC random seed", ge=0)

    def __post_init__(self) -> None:
        check_options(self)


@dataclass
class _Fit:
    q: complex          # patch working px -> map px (composite of the turn and the fit)
    t: complex
    n: int
    rms_px: float
    matches: int
    alternatives: list[tuple[int, complex, complex]] = field(default_factory=list)
    seen: Seen | None = None  # what the fit was drawn from, for the glue's refinement


class LearnedRegistrar(Registrar):
    name = "xfeat"
    Conf = LearnedConf

    def __init__(self, **conf) -> None:
        super().__init__(**conf)
        c = self.conf
        if not c.onnx:
            raise SkylocError("learned registrar: no matcher model: export one with `skyloc export matcher "
                              "--kind xfeat --out M.onnx` and pass onnx=M.onnx")
        for name in ("work_mpp", "rot_step_deg", "ransac_px", "min_margin", "distinct_m"):
            v = getattr(c, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise SkylocError(f"learned registrar: {name} must be a finite number > 0 (got {v!r})")
        if not (c.max_kpts > 0 and c.map_max_kpts > 0 and c.min_inliers >= 3 and c.ransac_iters > 0):
            raise SkylocError("learned registrar: max_kpts, map_max_kpts, ransac_iters must be > 0, min_inliers >= 3")
        providers = [p.strip() for p in c.providers.split(",") if p.strip()] or None
        self.extractor = open_extractor(Path(c.onnx), threads=c.threads, providers=providers)
        self.glue = glue_for(Path(c.glue), self.extractor, c.threads, providers) if c.glue else None
        # "disk" names the OpenCV-ONNX registrar in the registry: other kinds report as "learned"
        self.name = "xfeat" if self.extractor.kind == "xfeat" else "learned"

    def register(self, patch: PatchLike, map_rgb: np.ndarray, map_mpp: float,
                 heading_prior_deg: float | None = None, heading_tol_deg: float = 5.0,
                 scale_tol: float = 0.05, map_valid: np.ndarray | None = None,
                 deadline: float | None = None) -> Registration:
        check_inputs(patch, map_rgb, map_mpp, heading_prior_deg, heading_tol_deg, scale_tol, map_valid)
        clock = SearchClock(deadline)
        work = max(float(self.conf.work_mpp), float(patch.mpp), float(map_mpp))
        img, valid, mpx = _resample(np.asarray(map_rgb), map_valid, float(map_mpp), work)
        map_kp = self.extractor.extract(img, valid, max_kpts=self.conf.map_max_kpts)
        return self._register(patch, map_kp, mpx, img.shape[:2], heading_prior_deg, heading_tol_deg, scale_tol,
                              clock)

    def register_keypoints(self, patch: PatchLike, map_kp: Keypoints, map_mpp: float,
                           map_shape: tuple[int, int], heading_prior_deg: float | None = None,
                           heading_tol_deg: float = 5.0, scale_tol: float = 0.05,
                           deadline: float | None = None) -> Registration:
        """Register against stored map features (pixel coords of a virtual north-up crop of
        `map_shape` at `map_mpp`, centred on the candidate); offsets and `deadline` as in `register`."""
        clock = SearchClock(deadline)
        check_inputs(patch, np.zeros((1, 1, 3), np.uint8), map_mpp, heading_prior_deg, heading_tol_deg,
                     scale_tol, None)  # the crop is virtual: only its m/px is checked here
        _check_keypoints(map_kp, map_shape, self.extractor.sidecar.get("descriptor_dim", 64))
        return self._register(patch, map_kp, float(map_mpp), tuple(map_shape), heading_prior_deg,
                              heading_tol_deg, scale_tol, clock)

    # --- the shared core -------------------------------------------------------------------------

    def _register(self, patch: PatchLike, map_kp: Keypoints, mpx: float, map_shape: tuple[int, int],
                  heading_prior_deg: float | None, heading_tol_deg: float, scale_tol: float,
                  clock: SearchClock) -> Registration:
        c = self.conf
        img, valid, ppx = _resample(np.asarray(patch.image), np.asarray(patch.valid), float(patch.mpp), mpx)
        if len(map_kp) < c.min_inliers:
            return failed(self.name, f"{len(map_kp)} map keypoints (< {c.min_inliers}): no texture or no data")
        centre, half = rotation_search(patch, heading_prior_deg, heading_tol_deg)
        angles, spacing = _angles(centre, half, c.rot_step_deg)
        q0 = ppx / mpx
        tol = scale_tol + 0.02
        mxy = to_complex(map_kp.xy)
        fits = []
        for a in angles:
            if not clock.next():
                break
            fits.append(self._fit_at(img, valid, a, map_kp, mxy, map_shape, mpx, (q0 * (1 - tol), q0 * (1 + tol)),
                                     spacing / 2 + ROT_SLACK_DEG))
        done = [f for f in fits if f is not None]
        if not done:
            return failed(self.name, clock.reason() if clock.stopped else
                          "no rotation gave a similarity within the pose's scale / heading")
        best = max(done, key=lambda f: f.n)
        h, w = img.shape[:2]
        cp = complex(w / 2, h / 2)
        where = best.q * cp + best.t
        up = math.degrees(math.atan2(best.q.imag, best.q.real))
        alts = [(f.n, f.q, f.t) for f in done if f is not best] + best.alternatives
        second = max((n for n, q, t in alts if abs(q * cp + t - where) * mpx > c.distinct_m
                      or abs(_turn(math.degrees(math.atan2(q.imag, q.real)) - up)) > DISTINCT_TURN_DEG),
                     default=0)
        scale = abs(best.q) / q0
        reasons = []
        if best.n < c.min_inliers:
            reasons.append(f"{best.n} inliers < {c.min_inliers}")
        if best.n < c.min_margin * second:
            reasons.append(f"a distinct alternative has {second} inliers vs {best.n} (< x{c.min_margin:g})")
        if best.n < c.min_inlier_ratio * best.matches:
            reasons.append(f"{best.n} inliers of {best.matches} matches (< {100 * c.min_inlier_ratio:g} %)")
        if half < 180 and abs(_turn(up - centre)) > half + 1.0:
            reasons.append(f"rotation {up:.1f} deg outside the prior {centre:.1f} +- {half:.1f}")
        if abs(scale - 1) > tol:
            reasons.append(f"scale {scale:.3f} outside 1 +- {scale_tol}")
        # a refinement is one more glue call: never started past the deadline (the verified fit stands)
        refined = (refine(self.glue, c, best.q, best.t, best.n, best.seen, map_kp, mxy, cp, mpx)
                   if self.glue is not None and best.seen is not None and not reasons and clock.left() else None)
        geom = refined if refined is not None else best  # the gate's numbers stay the mutual-NN fit's
        where = geom.q * cp + geom.t
        up = math.degrees(math.atan2(geom.q.imag, geom.q.real))
        scale = abs(geom.q) / q0
        H, W = map_shape
        east, north = (where.real - W / 2) * mpx, -(where.imag - H / 2) * mpx
        acc = math.hypot(c.acc_floor_m, c.acc_k * geom.rms_px * mpx / math.sqrt(max(geom.n, 1)))
        reg = Registration(not reasons, float(east), float(north), aircraft_heading(patch, up), float(scale),
                           float(best.n), float(second), best.n, float(acc) if not reasons else float("inf"),
                           self.name, "; ".join(reasons), best.matches)
        return clock.cut(reg) if clock.stopped else reg

    def _fit_at(self, img: np.ndarray, valid: np.ndarray, angle_deg: float, map_kp: Keypoints, mxy: np.ndarray,
                map_shape: tuple[int, int], mpx: float, q_range: tuple[float, float], half_turn: float) -> _Fit | None:
        """Turn the patch clockwise by angle_deg, extract, match, fit; the fit composed with the turn.
        A window much larger than the frame is matched at its voted places (register/voting.py)."""
        c = self.conf
        r, off, canvas, cvalid = _turned(img, valid, angle_deg)
        kp = self.extractor.extract(canvas, cvalid, max_kpts=c.max_kpts)
        if len(kp) < 2:
            return None
        src = to_complex(kp.xy)
        q0 = math.sqrt(q_range[0] * q_range[1])
        centre = complex(canvas.shape[1] / 2, canvas.shape[0] / 2)
        reach = q0 * float(np.abs(src - centre).max()) + VOTE_SLACK_M / mpx  # map px the frame can overlap
        places: list[complex | None] = [None]
        if 0.5 * max(map_shape) > VOTE_WINDOW * reach:
            # the strongest frame keypoints vote (extract ranks them): the product with every map
            # keypoint of a large window is the cost, and a few hundred agreeing pairs are plenty
            i1, i2, _ = local_mutual_pairs(kp.desc[:VOTE_KPTS], map_kp.desc, mxy, VOTE_CELL_M / mpx, c.min_cos)
            turns = np.arange(-half_turn, half_turn + 1e-9, min(VOTE_TURN_DEG, 2 * half_turn) or 1.0)
            peaks = vote_places(src[i1], mxy[i2], q0, centre, turns, map_shape, VOTE_BIN_M / mpx,
                                c.vote_places, c.distinct_m / mpx)
            places = [p for p, _ in peaks]
        fits = []
        for place in places:
            # the whole window as it is (no copy of its descriptors), or a voted place's sub-window
            cols = None if place is None else np.flatnonzero(np.abs(mxy - place) <= reach)
            j1, j2, _ = mutual_nn(kp.desc, map_kp.desc if cols is None else map_kp.desc[cols], c.min_cos)
            s, d = src[j1], mxy[j2 if cols is None else cols[j2]]
            sim = ransac_similarity(s, d, c.ransac_px, q_range, 0.0, half_turn, c.ransac_iters, c.seed)
            if sim is None:
                continue
            # canvas = r * patch + off; map = q * canvas + t  =>  map = (q r) patch + (q off + t)
            fit = _Fit(sim.q * r, sim.q * off + sim.t, sim.n, sim.rms_px, len(s),
                       seen=Seen(kp, canvas.shape[:2], r, off, reach, q_range, half_turn))
            rest = ~sim.inliers
            if rest.sum() >= 2:
                alt = ransac_similarity(s[rest], d[rest], c.ransac_px, q_range, 0.0, half_turn,
                                        c.ransac_iters, c.seed + 1)
                if alt is not None:
                    fit.alternatives.append((alt.n, alt.q * r, alt.q * off + alt.t))
            fits.append(fit)
        if not fits:
            return None
        best = max(fits, key=lambda f: f.n)
        for f in fits:
            if f is not best:  # the other voted places compete with it for the margin
                best.alternatives += [(f.n, f.q, f.t)] + f.alternatives
        return best


def _turn(deg: float) -> float:
    return (deg + 180.0) % 360.0 - 180.0


def _angles(centre: float, half: float, step: float) -> tuple[list[float], float]:
    """Rotations covering centre +- half (the whole circle when half >= 180), at most `step`
    apart, and their spacing."""
    if half >= 180:
        n = max(1, math.ceil(360.0 / step))
        return [centre + k * 360.0 / n for k in range(n)], 360.0 / n
    n = max(1, math.ceil(2 * half / step))
    spacing = 2 * half / n
    return [centre - half + spacing * (k + 0.5) for k in range(n)], spacing


def _turned(img: np.ndarray, valid: np.ndarray, angle_deg: float
            ) -> tuple[complex, complex, np.ndarray, np.ndarray]:
    """The image turned clockwise by angle_deg on a canvas holding all of it, and (r, off) with
    canvas point = r * image point + off (pixel-centre coords, y down)."""
    h, w = valid.shape
    r = complex(math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg)))
    if abs(_turn(angle_deg)) < 1e-9:
        return 1 + 0j, 0j, img, valid
    W2 = int(math.ceil(w * abs(r.real) + h * abs(r.imag) - 1e-6))
    H2 = int(math.ceil(w * abs(r.imag) + h * abs(r.real) - 1e-6))
    off = complex(W2 / 2, H2 / 2) - r * complex(w / 2, h / 2)
    # cv2 works in pixel-index coords (centre of pixel i at i): shift by half a pixel both ways
    o = r * complex(0.5, 0.5) + off - complex(0.5, 0.5)
    M = np.array([[r.real, -r.imag, o.real], [r.imag, r.real, o.imag]])
    canvas = cv2.warpAffine(img, M, (W2, H2), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    cvalid = cv2.warpAffine(valid.astype(np.uint8), M, (W2, H2), flags=cv2.INTER_NEAREST) > 0
    return r, off, canvas, cvalid


def _resample(rgb: np.ndarray, valid: np.ndarray | None, mpp: float, work: float
              ) -> tuple[np.ndarray, np.ndarray | None, float]:
    """The image (and mask) at ~work m/px and its true m/px."""
    f = mpp / work
    if abs(f - 1) < 1e-6:
        return rgb, valid, mpp
    H, W = rgb.shape[:2]
    size = (max(8, round(W * f)), max(8, round(H * f)))
    out = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    v = None if valid is None else cv2.resize(np.asarray(valid, np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    return out, v, mpp * W / size[0]


def _check_keypoints(kp: Keypoints, shape: tuple[int, int], dim: int) -> None:
    if not isinstance(kp, Keypoints):
        raise SkylocError(f"register_keypoints: map features must be Keypoints (got {type(kp).__name__})")
    n = len(kp)
    if kp.xy.shape != (n, 2) or kp.desc.shape != (n, dim) or kp.score.shape != (n,):
        raise SkylocError(f"register_keypoints: map features have shapes xy {kp.xy.shape}, desc {kp.desc.shape}, "
                          f"score {kp.score.shape}; expected (N, 2), (N, {dim}), (N,) (another matcher's store?)")
    if len(shape) != 2 or min(shape) < 8:
        raise SkylocError(f"register_keypoints: map_shape {shape} must be (h, w) >= 8 px")
    if n and not (np.isfinite(kp.xy).all() and np.isfinite(kp.desc).all()):
        raise SkylocError("register_keypoints: map features hold NaN/Inf")
