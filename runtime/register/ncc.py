"""`NccRegistrar`: DSMAC-style registration by NCC of gradient-magnitude images (see register.py).

The patch is warped (rotation x scale, one affine from its own pixels, anti-aliased first) into
a fixed box at the working resolution for every hypothesis of the search grid, so all the NCC
surfaces share one geometry: their element-wise maximum is the best score of each map position
over all hypotheses, and the second peak is read from it outside an exclusion radius around the
best (a distinct place, whatever rotation it needed). Wide heading searches (unknown heading)
run coarse-to-fine: a coarse rotation step over the range, then the fine step around the best.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from skyloc.core.options import check_options, opt
from skyloc.runtime.register.base import PatchLike, Registrar, Registration, SearchClock, aircraft_heading, check_inputs, failed, gradient_magnitude, parabola_vertex, rotation_search, second_peak, subpixel_peak, to_gray


@dataclass
class NccConf:
    """The NCC registrar's options (`skyloc run --ncc-*`, the `[run.ncc]` table of a `--config` TOML)."""

    option_prefix = "ncc"  # flags --ncc-FIELD (skyloc/core/options.py opt_group)
    work_mpp: float = opt(1.0, "working resolution, m/px (never finer than the patch or the map)", gt=0, le=100)
    sigma_px: float = opt(1.0, "Gaussian smoothing before the gradient, working pixels", gt=0, le=20)
    rot_step_deg: float = opt(1.0, "fine rotation step, degrees (the real pair's peak falls ~13 percent a "
                                   "degree)", gt=0, le=90)
    coarse_rot_step_deg: float = opt(4.0, "first-pass rotation step when the heading range is wider than "
                                          "--ncc-fine-range-deg, degrees", gt=0, le=90)
    fine_range_deg: float = opt(8.0, "heading half-ranges up to this skip the coarse rotation pass, degrees",
                                ge=0, le=180)
    narrow_step_factor: float = opt(2.5, "...and are first searched at this many fine steps (1: the full grid)",
                                    ge=1, le=100)
    # the two-pass search reads its second peak over fewer hypotheses (wrong places of Turku /
    # aerovloc: ratios up to 10 % higher, at most 1.50)
    narrow_min_ratio: float = opt(1.55, "peak / second needed for `verified` after that two-pass search",
                                  ge=1, le=100)
    scale_step: float = opt(0.03, "relative scale step within +-scale_tol", gt=0, le=0.5)
    min_peak: float = opt(0.2, "NCC peak needed for `verified` (real cross-season pair: 0.28)", ge=-1, le=1)
    min_ratio: float = opt(1.4, "peak / second peak needed for `verified`", ge=1, le=100)
    exclusion_m: float = opt(10.0, "the second peak is searched farther than this from the best, metres",
                             ge=0, le=10000)
    min_valid_px: int = opt(400, "valid template pixels needed at the working resolution", ge=1)
    min_texture: float = opt(2.0, "std of the template's gradient image needed (featureless: below)", ge=0)
    acc_floor_m: float = opt(1.0, "accuracy never claimed better than this (map georeference, rectification), "
                                  "metres", ge=0, le=1000)
    acc_k: float = opt(0.6, "scale of the peak-curvature accuracy term (real pair: 0.9 m off, 3.2 m claimed)",
                       gt=0, le=100)
    pyramid_min_px: int = opt(320, "windows this large (working px, shorter side) go coarse-to-fine", ge=1)
    candidates: int = opt(6, "coarse places refined at the working resolution", ge=1, le=1000)

    def __post_init__(self) -> None:
        check_options(self)


class NccRegistrar(Registrar):
    name = "ncc"
    Conf = NccConf

    def register(self, patch: PatchLike, map_rgb: np.ndarray, map_mpp: float,
                 heading_prior_deg: float | None = None, heading_tol_deg: float = 5.0,
                 scale_tol: float = 0.05, map_valid: np.ndarray | None = None,
                 deadline: float | None = None) -> Registration:
        check_inputs(patch, map_rgb, map_mpp, heading_prior_deg, heading_tol_deg, scale_tol, map_valid)
        clock = SearchClock(deadline)
        c = self.conf
        work = max(float(c.work_mpp), float(patch.mpp), float(map_mpp))
        mfeat, mpp_x, mpp_y = _map_features(map_rgb, map_valid, map_mpp, work, c.sigma_px)
        centre, half = rotation_search(patch, heading_prior_deg, heading_tol_deg)
        n_s = 2 * math.ceil(scale_tol / c.scale_step) + 1 if scale_tol > 0 else 1
        scales = np.linspace(1 - scale_tol, 1 + scale_tol, n_s)
        gray = to_gray(patch.image)
        valid = np.asarray(patch.valid, bool)
        fail = "patch too small or featureless at the working resolution"
        prior, wide = (centre, half), None
        # coarse-to-fine only when the patch keeps enough pixels at twice the working m/px
        coarse_px = float(valid.sum()) * (patch.mpp / (2.0 * work)) ** 2
        if min(mfeat.shape) >= c.pyramid_min_px and coarse_px >= 2 * c.min_valid_px:
            return self._coarse_to_fine(gray, valid, patch, map_rgb, map_valid, map_mpp, work, centre, half,
                                        scales, mfeat, mpp_x, mpp_y, clock) or failed(self.name, fail)
        if half > c.fine_range_deg:
            coarse = _angles(centre, half, c.coarse_rot_step_deg)
            best = self._search(gray, valid, patch.mpp, work, coarse, scales, mfeat, clock=clock)
            if clock.stopped:
                return self._stopped(clock, best, mfeat.shape, patch, mpp_x, mpp_y, work, prior)
            if best is None:
                return failed(self.name, fail)
            centre, half, wide = best["angle"], c.coarse_rot_step_deg, best
        # one box for the passes below (room for one more rotation and scale step), so their NCC
        # surfaces share one geometry and the second peak is read over every hypothesis tried
        k0, grow = patch.mpp / work, scales.max() + (c.scale_step if len(scales) > 1 else 0.0)
        box = _box(gray.shape[1] * k0 * grow, gray.shape[0] * k0 * grow,
                   _angles(centre, half + c.rot_step_deg, c.rot_step_deg))
        tried = []
        if prior[1] <= c.fine_range_deg and c.narrow_step_factor > 1 and half > c.narrow_step_factor * c.rot_step_deg:
            # a narrow range (heading known to a few degrees): its rotations every narrow_step_factor
            # fine steps at the middle scale, then the fine grid (every scale) around the best of
            # them: about 2.5x fewer correlations than the full grid, the same fine peak
            coarse = _angles(centre, half, c.narrow_step_factor * c.rot_step_deg)
            first = self._search(gray, valid, patch.mpp, work, coarse, scales[len(scales) // 2:][:1], mfeat, box,
                                 clock)
            if clock.stopped:
                return self._stopped(clock, first, mfeat.shape, patch, mpp_x, mpp_y, work, prior)
            if first is None:
                return failed(self.name, fail)
            tried.append(first)
            centre, half = first["angle"], c.rot_step_deg
        fine = _angles(centre, half, c.rot_step_deg)
        best = self._search(gray, valid, patch.mpp, work, fine, scales, mfeat, box, clock)
        if best is None:
            return (self._stopped(clock, tried[-1] if tried else wide, mfeat.shape, patch, mpp_x, mpp_y, work, prior)
                    if clock.stopped else failed(self.name, fail))
        if len(scales) > 1 and best["j"] in (0, len(scales) - 1) and not clock.stopped:
            # best scale on the edge: the peak may lie one step beyond (a flat scale response does
            # that often with small patches); look there before calling it an edge
            best = self._extend_scale(best, gray, valid, patch.mpp, work, fine, mfeat, box, clock)
        tried.append(best)
        envelope = np.maximum.reduce([t["envelope"] for t in tried])
        best["min_ratio"] = c.min_ratio if len(tried) == 1 else max(c.min_ratio, c.narrow_min_ratio)
        second = second_peak(envelope, best["x"], best["y"], max(3.0, c.exclusion_m / work))
        reg = self._result(best, second, (0, 0), mfeat.shape, patch, mpp_x, mpp_y, work, *prior)
        return clock.cut(reg) if clock.stopped else reg

    def _stopped(self, clock: SearchClock, found: dict | None, mshape: tuple[int, int], patch: PatchLike,
                 mpp_x: float, mpp_y: float, work: float, prior: tuple[float, float]) -> Registration:
        """The best of a search the deadline stopped (never verified), or a failure saying so."""
        if found is None:
            return failed(self.name, clock.reason())
        second = second_peak(found["envelope"], found["x"], found["y"], max(3.0, self.conf.exclusion_m / work))
        return clock.cut(self._result(found, second, (0, 0), mshape, patch, mpp_x, mpp_y, work, *prior))

    def _extend_scale(self, best: dict, gray: np.ndarray, valid: np.ndarray, patch_mpp: float, work: float,
                      angles: np.ndarray, mfeat: np.ndarray, box: tuple[int, int], clock: SearchClock) -> dict:
        """The search of `best` with one more scale step beyond the edge its best scale is on."""
        scales, low = best["scales"], best["j"] == 0
        s_new = scales[0] - self.conf.scale_step if low else scales[-1] + self.conf.scale_step
        extra = self._search(gray, valid, patch_mpp, work, angles, np.array([s_new]), mfeat, box, clock)
        if extra is None:
            return best
        merged = np.concatenate([[s_new], scales]) if low else np.concatenate([scales, [s_new]])
        table = np.hstack([extra["table"], best["table"]] if low else [best["table"], extra["table"]])
        if extra["peak"] > best["peak"]:
            out = dict(extra, j=0 if low else len(merged) - 1)
        else:
            out = dict(best, j=best["j"] + 1 if low else best["j"])
        out.update(table=table, scales=merged, envelope=np.maximum(best["envelope"], extra["envelope"]))
        return out

    def _coarse_to_fine(self, gray, valid, patch, map_rgb, map_valid, map_mpp, work, centre, half, scales,
                        mfeat, mpp_x, mpp_y, clock: SearchClock) -> Registration | None:
        """Large windows: every hypothesis at twice the working m/px, then the best few distinct
        places (local maxima of the coarse envelope) refined at the working m/px in small
        sub-windows; peak and second are both fine-level NCC values."""
        c = self.conf
        cwork = 2.0 * work
        cfeat, cmx, cmy = _map_features(map_rgb, map_valid, map_mpp, cwork, c.sigma_px)
        cstep = c.coarse_rot_step_deg if half > c.fine_range_deg else 2.0 * c.rot_step_deg
        cb = self._search(gray, valid, patch.mpp, cwork, _angles(centre, half, cstep), scales, cfeat, clock=clock)
        if clock.stopped:  # the best so far at the coarse level
            return self._stopped(clock, cb, cfeat.shape, patch, cmx, cmy, cwork, (centre, half))
        if cb is None:
            return None
        env, hyp = cb["envelope"], cb["hyp"]
        r = np.where(np.isfinite(env), env, -np.inf).astype(np.float32)
        is_max = r >= cv2.dilate(r, np.ones((5, 5), np.uint8))
        ys, xs = np.nonzero(is_max & (r > -1.0))
        order = np.argsort(-r[ys, xs])
        excl = max(2.0, c.exclusion_m / cwork)
        picked: list[tuple[int, int]] = []
        for i in order:
            if all((xs[i] - px) ** 2 + (ys[i] - py) ** 2 > excl ** 2 for px, py in picked):
                picked.append((int(xs[i]), int(ys[i])))
            if len(picked) >= c.candidates:
                break
        cbw, cbh = cb["box"]
        fine = []
        for x, y in picked:
            if clock.stopped:
                break
            a0 = float(cb["angles"][hyp[y, x] // len(scales)])
            # the true angle is within half a coarse step of the coarse best
            angles = _angles(a0, cstep / 2, c.rot_step_deg) if len(cb["angles"]) > 1 else cb["angles"]
            # the place's box centre in working pixels; the sub-window holds that box +- pad
            cx, cy = (x + cbw / 2) * cmx / mpp_x, (y + cbh / 2) * cmy / mpp_y
            k0 = patch.mpp / work
            bw, bh = _box(gray.shape[1] * k0 * scales.max(), gray.shape[0] * k0 * scales.max(), angles)
            pad = 6
            x0, y0 = max(0, int(round(cx - bw / 2)) - pad), max(0, int(round(cy - bh / 2)) - pad)
            x1, y1 = min(mfeat.shape[1], x0 + bw + 2 * pad + 1), min(mfeat.shape[0], y0 + bh + 2 * pad + 1)
            fb = self._search(gray, valid, patch.mpp, work, angles, scales, mfeat[y0:y1, x0:x1], clock=clock)
            if fb is not None:
                fine.append((fb, (x0, y0)))
        if not fine:
            return self._stopped(clock, cb, cfeat.shape, patch, cmx, cmy, cwork, (centre, half)) if clock.stopped else None
        fine.sort(key=lambda t: -t[0]["peak"])
        best, off = fine[0]
        excl = max(3.0, c.exclusion_m / work)
        bx, by = off[0] + best["x"], off[1] + best["y"]
        # a neighbour's refinement may climb onto the best peak itself: only distinct places count
        others = [fb["peak"] for fb, (ox, oy) in fine[1:]
                  if (ox + fb["x"] - bx) ** 2 + (oy + fb["y"] - by) ** 2 > excl ** 2]
        second = max(others + [second_peak(best["envelope"], best["x"], best["y"], excl)])
        reg = self._result(best, second, off, mfeat.shape, patch, mpp_x, mpp_y, work, centre, half)
        return clock.cut(reg) if clock.stopped else reg

    def _search(self, gray: np.ndarray, valid: np.ndarray, patch_mpp: float, work: float,
                angles: np.ndarray, scales: np.ndarray, mfeat: np.ndarray,
                box: tuple[int, int] | None = None, clock: SearchClock | None = None) -> dict | None:
        """Every (angle, scale) hypothesis correlated over the window, in a box holding them all
        (or the given one); those the clock's deadline leaves (clock.stopped) stay untried."""
        c = self.conf
        k0 = patch_mpp / work
        h, w = gray.shape
        box = box or _box(w * k0 * scales.max(), h * k0 * scales.max(), angles)
        if box[0] >= mfeat.shape[1] or box[1] >= mfeat.shape[0]:
            return None
        src = cv2.GaussianBlur(gray, (0, 0), 0.45 / k0) if k0 < 0.8 else gray  # anti-alias
        vmask = valid.astype(np.uint8) * 255
        erode = np.ones((2 * math.ceil(2 * c.sigma_px) + 3,) * 2, np.uint8)
        envelope = None
        table = np.full((len(angles), len(scales)), -1.0)
        best = None
        for i, a in enumerate(angles):
            if clock is not None and clock.stopped:
                break
            for j, s in enumerate(scales):
                if clock is not None and not clock.next():
                    break
                M = _affine(w, h, box, k0 * s, a)
                g = cv2.warpAffine(src, M, box, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                m = cv2.warpAffine(vmask, M, box, flags=cv2.INTER_NEAREST, borderValue=0)
                m = cv2.erode(m, erode) > 0
                if int(m.sum()) < c.min_valid_px:
                    continue
                t = gradient_magnitude(g, c.sigma_px)
                if float(t[m].std()) < c.min_texture:
                    continue
                res = cv2.matchTemplate(mfeat, t, cv2.TM_CCOEFF_NORMED, mask=m.astype(np.float32))
                res[~np.isfinite(res)] = -1.0
                np.clip(res, -1.0, 1.0, out=res)
                if envelope is None:
                    envelope, hyp = res.copy(), np.full(res.shape, i * len(scales) + j, np.int32)
                else:
                    better = res > envelope
                    envelope[better] = res[better]
                    hyp[better] = i * len(scales) + j
                y, x = np.unravel_index(int(np.argmax(res)), res.shape)
                table[i, j] = float(res[y, x])
                if best is None or table[i, j] > best["peak"]:
                    best = {"peak": table[i, j], "x": int(x), "y": int(y), "i": i, "j": j, "angle": float(a),
                            "scale": float(s), "res": res.copy(), "valid_px": int(m.sum())}
        if best is None:
            return None
        best.update(envelope=envelope, hyp=hyp, table=table, angles=angles, scales=scales, box=box)
        return best

    def _result(self, b: dict, second: float, off: tuple[int, int], mshape: tuple[int, int], patch: PatchLike,
                mpp_x: float, mpp_y: float, work: float, centre: float, half: float) -> Registration:
        """`centre` +- `half`: the rotation range of the prior (a best on its edge may lie beyond)."""
        c = self.conf
        res, x, y = b["res"], b["x"], b["y"]
        dx, dy, cx, cy = subpixel_peak(res, x, y)
        bw, bh = b["box"]
        east = (off[0] + x + dx + bw / 2 - mshape[1] / 2) * mpp_x
        north = -(off[1] + y + dy + bh / 2 - mshape[0] / 2) * mpp_y
        angles, scales, table = b["angles"], b["scales"], b["table"]
        step_a = float(angles[1] - angles[0]) if len(angles) > 1 else 0.0
        step_s = float(scales[1] - scales[0]) if len(scales) > 1 else 0.0
        angle = b["angle"] + step_a * parabola_vertex(table[:, b["j"]], b["i"])
        scale = b["scale"] + step_s * parabola_vertex(table[b["i"], :], b["j"])
        peak = b["peak"]
        ratio = peak / max(second, 1e-3)
        # Peak sharpness -> position sigma: the surface drops by (1 - peak) (how far from a
        # perfect match the best is) over sigma_px = sqrt((1 - peak) / |curvature|).
        sig = [math.sqrt(max(1.0 - peak, 1e-3) / max(-cc, 1e-4)) for cc in (cx, cy)]
        acc = math.hypot(c.acc_floor_m, c.acc_k * work * math.hypot(*sig))
        h, w = res.shape
        full_w, full_h = mshape[1] - bw + 1, mshape[0] - bh + 1  # positions of the whole window
        gx, gy = off[0] + x, off[1] + y
        reasons = []
        if peak < c.min_peak:
            reasons.append(f"peak {peak:.3f} < {c.min_peak}")
        min_ratio = b.get("min_ratio", c.min_ratio)
        if ratio < min_ratio:
            reasons.append(f"peak/second {ratio:.2f} < {min_ratio}")
        if gx in (0, full_w - 1) or gy in (0, full_h - 1):
            reasons.append("peak on the edge of the search window")
        elif x in (0, w - 1) or y in (0, h - 1):
            reasons.append("fine peak on the edge of its refinement window")
        if 0 < half < 180 and abs((b["angle"] - centre + 180) % 360 - 180) >= half - 1e-6:
            reasons.append("best rotation on the edge of the searched range")
        if len(scales) > 1 and b["j"] in (0, len(scales) - 1):
            reasons.append("best scale on the edge of the searched range")
        if cx >= 0 or cy >= 0:
            reasons.append("flat correlation peak")
            acc = float("inf")
        return Registration(not reasons, float(east), float(north), aircraft_heading(patch, angle), float(scale),
                            float(peak), float(second), b["valid_px"], float(acc), self.name, "; ".join(reasons))


def _angles(centre: float, half: float, step: float) -> np.ndarray:
    if half >= 180.0:
        n = max(1, round(360.0 / step))
        return centre + np.arange(n) * (360.0 / n) - 180.0
    n = math.ceil(half / step) if step > 0 else 0
    return centre + np.arange(-n, n + 1) * (half / n if n else 0.0)


def _box(w: float, h: float, angles: np.ndarray) -> tuple[int, int]:
    """(width, height) holding the w x h rectangle at every angle of the search."""
    r = np.radians(angles)
    c, s = np.abs(np.cos(r)), np.abs(np.sin(r))
    return int(math.ceil(float((w * c + h * s).max()))) + 2, int(math.ceil(float((w * s + h * c).max()))) + 2


def _affine(w: int, h: int, box: tuple[int, int], k: float, bearing_deg: float) -> np.ndarray:
    """Patch pixels -> box pixels: scale k, turned clockwise by the up axis' bearing (so the box
    is north-up), patch centre onto box centre (cv2 pixel centres are integers)."""
    t = math.radians(bearing_deg)
    R = k * np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    src_c = np.array([(w - 1) / 2, (h - 1) / 2])
    dst_c = np.array([(box[0] - 1) / 2, (box[1] - 1) / 2])
    return np.hstack([R, (dst_c - R @ src_c)[:, None]]).astype(np.float64)


def _map_features(map_rgb: np.ndarray, map_valid: np.ndarray | None, map_mpp: float, work: float,
                  sigma_px: float) -> tuple[np.ndarray, float, float]:
    """Gradient image of the map at the working resolution (0 off the map) and its true m/px."""
    gray = to_gray(map_rgb)
    H, W = gray.shape
    f = map_mpp / work
    valid = np.ones((H, W), np.uint8) if map_valid is None else np.asarray(map_valid, np.uint8)
    if abs(f - 1) > 1e-6:
        size = (max(1, round(W * f)), max(1, round(H * f)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        valid = cv2.resize(valid, size, interpolation=cv2.INTER_NEAREST)
    feat = gradient_magnitude(gray, sigma_px)
    if map_valid is not None:
        valid = cv2.erode(valid, np.ones((2 * math.ceil(2 * sigma_px) + 3,) * 2, np.uint8))
        feat[valid == 0] = 0.0
    return feat, map_mpp * W / gray.shape[1], map_mpp * H / gray.shape[0]
