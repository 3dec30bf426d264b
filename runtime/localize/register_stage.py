"""The register stage of `Localizer.step` (localizer.py): candidate places -> map registration ->
a verified fix to metres, or the retrieval-only estimate when nothing can be vouched for.

Candidates, in the order they are registered: the track's predicted place (confirmed track: taken
alone once it verifies; tentative: one candidate among the others), the whole start prior while
no fix has reached the filter (a map scan, `scan_m`), and the retrieved distinct places.
`RegisterStage` is a mixin: it reads the Localizer's options, tile set, imagery, registrar,
filter and start window.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from skyloc.core import geo
from skyloc.runtime.localize.filter import FixCandidate, refine_position
from skyloc.core.geo import haversine_m
from skyloc.runtime.localize.options import Fix
from skyloc.runtime.localize.retrieval import SearchWindow
from skyloc.runtime.localize.rectify import GroundPatch, crop_centre, rotate_patch

SQRT2 = math.sqrt(2.0)


def rot_ne(n: float, e: float, angle_deg: float) -> tuple[float, float]:
    """(north, east) turned clockwise (towards east) by angle_deg."""
    a = math.radians(angle_deg)
    return n * math.cos(a) - e * math.sin(a), n * math.sin(a) + e * math.cos(a)


class RegisterStage:
    """Mixin of `Localizer`: its `register` stage and the track prediction it starts from."""

    def register(self, patch: GroundPatch, angles: list[float], hits: list[tuple[float, int, int]],
                 fix: Fix) -> FixCandidate:
        """Register the candidate places against the map imagery; retrieval-only (unverified) when
        there is no imagery or nothing verifies.

        A registration is trusted when the registrar verifies it (peak and peak / second peak
        inside its crop), it claims an accuracy of at most max_accuracy_m, and it beats every other
        candidate place's peak by the registrar's ratio (a look-alike elsewhere makes it
        ambiguous). While a verified track is recent (track_s), the place it predicts is registered
        first and, once the track is confirmed, taken as soon as it verifies (the track vouches for
        it); otherwise every candidate place is registered too (a tentative track's prediction is one
        candidate among them: it finds the confirming fix, it never vouches). Heading unknown and no
        track yet: the whole circle.
        """
        known = patch.heading_deg is not None
        score, tile, r = hits[0]
        side_m = self.tile_m * float(self.ts.scale[tile])
        fix.tile = tile
        fix.heading_deg = patch.heading_deg if known else angles[r] % 360.0
        fix.heading_source = "pose" if known else "rotation-search"
        if self.imagery is not None and self.registrar is not None:
            ratio = float(getattr(getattr(self.registrar, "conf", None), "min_ratio", 1.4))
            tol = self.opt.heading_tol_deg if known else 180.0 / len(angles) + 1.0
            # (label, retrieval score, tile or -1, lat, lon, patch turn): the track's prediction first
            cands: list[tuple[str, float, int, float, float, float]] = []
            pred = self._predicted_ground(fix.time_s, patch)
            if pred is not None:
                turn = 0.0 if known else pred[2]
                cands.append(("track" if pred[3] else "tentative", score, tile, pred[0], pred[1], turn))
            scan = self._scan_window()
            if scan is not None:  # no fix yet: the whole start prior, whatever retrieval ranked
                cands.append(("prior-scan", score, tile, scan.lat, scan.lon, 0.0))
            for sc, t, rr in hits:
                lat, lon = (float(v) for v in self.ts.centers[t])
                cands.append(("retrieval", sc, t, lat, lon, 0.0 if known else angles[rr]))
            regs: list[tuple[int, Any, GroundPatch]] = []
            # no track to say the heading: the rotation search's 45-degree guess may be wrong, so
            # registration searches the whole circle (costlier, only until the first verified fix)
            acquire = not known and pred is None and self.opt.acquire_full_circle
            for n, (label, sc, t, lat, lon, turn) in enumerate(cands):
                if acquire:
                    reg_patch, tol_n = crop_centre(patch, self.opt.register_px), 180.0
                    scale_tol = 0.0 if fix.scale_source != "search" else 0.3
                else:
                    reg_patch = crop_centre(rotate_patch(patch, turn) if turn else patch, self.opt.register_px)
                    # unknown altitude: the level only brackets the scale, registration must find it
                    tol_n = tol
                    scale_tol = self.opt.scale_tol if fix.scale_source != "search" else max(self.opt.scale_tol, 0.3)
                margin = {"retrieval": side_m, "prior-scan": scan.radius_m if scan else 0.0}.get(label, 0.5 * side_m)
                reg = self._register_one(reg_patch, lat, lon, side_m, tol_n, scale_tol, margin)
                regs.append((n, reg, reg_patch))
                if label == "track" and self._trusted(reg):
                    break  # the track vouches for the place: no need to look at look-alikes
            n, reg, reg_patch = max(regs, key=lambda x: x[1].score)
            # crops overlap: a candidate whose peak lands on the same ground is the same match, not
            # a look-alike; only peaks at other places make the best one ambiguous
            found = [self._registered_at(cands[x[0]], x[1]) for x in regs]
            others = max((x[1].score for x, p in zip(regs, found)
                          if x[0] != n and not self._near(p, found[n], 0.25 * side_m)), default=-1.0)
            why = reg.reason if not reg.verified else (
                f"accuracy {reg.accuracy_m:.1f} m > {self.opt.max_accuracy_m:g} m" if not self._trusted(reg)
                else (f"ambiguous: another place peaks at {others:.3f}" if reg.score < ratio * others else ""))
            label, sc, t, lat, lon, _ = cands[n]
            fix.registration = {"method": reg.method, "candidate": label, "rank": n, "score": reg.score,
                                "second": reg.second, "other_place": others if others > -1 else None,
                                "scale": reg.scale, "inliers": reg.inliers, "accuracy_m": reg.accuracy_m,
                                "tried": len(regs), "verified": not why, "reason": why}
            if not why:
                glat, glon = geo.offset_latlon(lat, lon, reg.east_m, reg.north_m)
                fix.tile, fix.ground_lat, fix.ground_lon = t, float(glat), float(glon)
                fix.heading_deg, fix.heading_source = reg.heading_deg % 360.0, "registration"
                acc = max(float(reg.accuracy_m), 0.5 * reg_patch.mpp)
                return self._aircraft(patch, fix, FixCandidate(float(glat), float(glon), acc, True, sc,
                                                               fix.confidence or 0.0, t))
        s_row, i_row = self._best_row
        refine = 1.5 * self.stride_m if self.opt.refine_m is None else self.opt.refine_m
        glat, glon = refine_position(s_row, i_row, self.ts.centers, refine)
        fix.ground_lat, fix.ground_lon = glat, glon
        acc = max(self.stride_m, 0.25 * side_m)  # right place: within about a stride; the filter gates the rest
        return self._aircraft(patch, fix, FixCandidate(glat, glon, acc, False, score, fix.confidence or 0.0, tile))

    def _scan_window(self) -> SearchWindow | None:
        """The start prior, while no fix has reached the filter, when it is small enough to scan."""
        w = self.start
        if w is None or self.filter.last is not None or not 0 < w.radius_m <= self.opt.scan_m:
            return None
        return w

    @staticmethod
    def _registered_at(cand: tuple, reg: Any) -> tuple[float, float] | None:
        if not (math.isfinite(reg.east_m) and math.isfinite(reg.north_m)):
            return None
        lat, lon = geo.offset_latlon(cand[3], cand[4], reg.east_m, reg.north_m)
        return float(lat), float(lon)

    @staticmethod
    def _near(a: tuple[float, float] | None, b: tuple[float, float] | None, within_m: float) -> bool:
        return a is not None and b is not None and float(haversine_m(a[0], a[1], b[0], b[1])) <= within_m

    def _recent_track(self, t: float) -> tuple[float, float, float, float, bool] | None:
        g = self._track_fix
        return g if g is not None and 0.0 <= t - g[2] <= self.opt.track_s else None

    def _predicted_ground(self, t: float, patch: GroundPatch) -> tuple[float, float, float, bool] | None:
        """(lat, lon, heading, confirmed) where the track puts this patch's centre now: the last
        verified aircraft position the filter took, moved by the track's velocity, plus this frame's
        nadir -> patch-centre offset (attitude moves the ground point far more than the aircraft
        moves between frames at altitude); None without a recent one."""
        g = self._recent_track(t)
        if g is None:
            return None
        v = self.filter.velocity_ne() or (0.0, 0.0)
        n, e = patch.ref_offset_m
        if patch.heading_deg is None:  # heading-up patch: its offset turns with the heading
            n, e = rot_ne(n, e, g[3])
        lat, lon = geo.offset_latlon(g[0], g[1], v[1] * (t - g[2]) + e, v[0] * (t - g[2]) + n)
        return float(lat), float(lon), g[3], g[4]

    def _trusted(self, reg: Any) -> bool:
        return bool(reg.verified and all(math.isfinite(v) for v in (reg.east_m, reg.north_m, reg.heading_deg))
                    and math.isfinite(reg.accuracy_m) and reg.accuracy_m <= self.opt.max_accuracy_m)

    def _register_one(self, reg_patch: GroundPatch, lat: float, lon: float, side_m: float, tol: float,
                      scale_tol: float, margin: float) -> Any:
        """Register against the map crop around (lat, lon) holding the patch turned by up to tol,
        shifted by up to `margin` metres (distinct places are a tile side apart: a margin of one
        side leaves no ground between candidates unsearched)."""
        work = float(getattr(getattr(self.registrar, "conf", None), "work_mpp", 0.0) or 0.0)
        # a big tile has pixels to spare: registration cost goes with the window's pixel count
        mpp = max(reg_patch.mpp, work, side_m / self.opt.register_max_px)
        margin = max(1.5 * self.stride_m, margin)
        turned = math.cos(math.radians(45.0 - min(tol, 45.0))) * SQRT2  # box of the patch turned by up to tol
        crop_m = side_m * turned + 2.0 * margin
        map_rgb, map_valid = self.imagery.crop(lat, lon, crop_m, mpp)
        return self.registrar.register(reg_patch, map_rgb, crop_m / map_rgb.shape[1], None, tol,
                                       scale_tol, map_valid=map_valid)

    def _aircraft(self, patch: GroundPatch, fix: Fix, c: FixCandidate) -> FixCandidate:
        """The aircraft = the ground point minus the nadir -> patch-centre offset, turned to north/east."""
        n, e = patch.ref_offset_m
        if patch.heading_deg is None:  # heading-up patch: its frame is turned by the heading
            n, e = rot_ne(n, e, fix.heading_deg or 0.0)
        lat, lon = geo.offset_latlon(c.lat, c.lon, -e, -n)
        return replace(c, lat=float(lat), lon=float(lon))
