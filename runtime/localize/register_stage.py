"""The register stage of `Localizer.step` (localizer.py): candidate places -> map registration ->
a verified fix to metres, or the retrieval-only estimate when nothing can be vouched for.

Candidates, in the order they are registered: the track's predicted place (confirmed track: taken
alone once it verifies; tentative: one candidate among the others), the whole start prior while
no fix has reached the filter (a map scan, `scan_m`), and the retrieved distinct places.
`RegisterStage` holds what does not change during a run (options, tile set, imagery, registrar,
map features, start prior); what changes per frame comes in as values (values.py).
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

from skyloc.core import geo
from skyloc.core.geo import haversine_m
from skyloc.runtime.localize.filter import FixCandidate, refine_position
from skyloc.runtime.localize.map_match import (candidate_tol, is_learned, register_stored, registration_view,
                                               whole_map_window)
from skyloc.runtime.localize.options import Fix, LocalizerOptions
from skyloc.runtime.localize.rectify import GroundPatch, rotate_patch
from skyloc.runtime.localize.retrieval import SearchWindow
from skyloc.runtime.localize.values import Candidate, Retrieval, TrackView
from skyloc.runtime.maps.tileset import TileSet
from skyloc.runtime.outputs.schema import HeadingSource, ScaleSource

SQRT2 = math.sqrt(2.0)


def rot_ne(n: float, e: float, angle_deg: float) -> tuple[float, float]:
    """(north, east) turned clockwise (towards east) by angle_deg."""
    a = math.radians(angle_deg)
    return n * math.cos(a) - e * math.sin(a), n * math.sin(a) + e * math.cos(a)


def scan_window(start: SearchWindow | None, view: TrackView, scan_m: float) -> SearchWindow | None:
    """The start prior, while no fix has reached the filter, when it is small enough to scan."""
    if start is None or view.has_fix or not 0 < start.radius_m <= scan_m:
        return None
    return start


class RegisterStage:
    """The `register` stage of `Localizer.step` and the track prediction it starts from."""

    def __init__(self, opt: LocalizerOptions, tiles: TileSet, imagery: Any, registrar: Any, map_features: Any,
                 tile_m: float, stride_m: float, register_px: int, start: SearchWindow | None) -> None:
        self.opt, self.ts, self.imagery, self.registrar = opt, tiles, imagery, registrar
        self.map_features, self.tile_m, self.stride_m = map_features, tile_m, stride_m
        self.register_px, self.start = register_px, start

    def register(self, patch: GroundPatch, angles: tuple[float, ...], retrieval: Retrieval, fix: Fix,
                 view: TrackView) -> FixCandidate:
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
        hits = retrieval.places
        score, tile, r = hits[0].score, hits[0].tile, hits[0].rotation
        side_m = self.tile_m * float(self.ts.scale[tile])
        fix.tile = tile
        fix.heading_deg = patch.heading_deg if known else angles[r] % 360.0
        fix.heading_source = HeadingSource.POSE if known else HeadingSource.ROTATION_SEARCH
        if self.imagery is not None and self.registrar is not None:
            ratio = float(getattr(getattr(self.registrar, "conf", None), "min_ratio", 1.4))
            tol = self.opt.heading_tol_deg if known else 180.0 / len(angles) + 1.0
            # the track's prediction first
            cands: list[Candidate] = []
            pred = self._predicted_ground(fix.time_s, patch, view)
            if pred is not None:
                turn = 0.0 if known else pred[2]
                cands.append(Candidate("track" if pred[3] else "tentative", score, tile, pred[0], pred[1], turn))
            scan = scan_window(self.start, view, self.opt.scan_m)
            if scan is not None:  # no fix yet: the whole start prior, whatever retrieval ranked
                cands.append(Candidate("prior-scan", score, tile, scan.lat, scan.lon, 0.0))
            # no track, no prior to scan, stored features of a small map: all of them (re-acquisition);
            # the retrieved places lie inside it, registering them again would find nothing new
            whole = whole_map_window(self) if pred is None and scan is None else None
            if whole is not None:
                cands.append(Candidate("whole-map", score, tile, whole[0], whole[1], 0.0))
            for h in (hits if whole is None else ()):
                lat, lon = (float(v) for v in self.ts.centers[h.tile])
                if scan is not None and self.map_features is not None and \
                        haversine_m(lat, lon, scan.lat, scan.lon) <= scan.radius_m:
                    continue  # inside the scanned prior: its stored features were all matched already
                cands.append(Candidate("retrieval", h.score, h.tile, lat, lon, 0.0 if known else angles[h.rotation]))
            regs: list[tuple[int, Any, GroundPatch]] = []
            # no track to say the heading: the rotation search's 45-degree guess may be wrong, so
            # registration searches the whole circle (costlier, only until the first verified fix)
            acquire = not known and pred is None and self.opt.acquire_full_circle
            t_start, deadline = time.monotonic(), self.opt.register_deadline_s
            left = 0
            for n, cand in enumerate(cands):
                label, lat, lon, turn = cand.kind, cand.lat, cand.lon, cand.turn_deg
                if n and deadline and time.monotonic() - t_start >= deadline:
                    left = len(cands) - n  # bounded per frame: a map scan without altitude can take tens of s
                    break
                if acquire:
                    reg_patch, tol_n = registration_view(self, patch), 180.0
                    scale_tol = 0.0 if fix.scale_source != ScaleSource.SEARCH else 0.3
                else:
                    reg_patch = registration_view(self, rotate_patch(patch, turn) if turn else patch)
                    # unknown altitude: the level only brackets the scale, registration must find it
                    tol_n = candidate_tol(self, label, tol)
                    scale_tol = self.opt.scale_tol if fix.scale_source != ScaleSource.SEARCH else max(self.opt.scale_tol, 0.3)
                margin = {"retrieval": side_m, "prior-scan": scan.radius_m if scan else 0.0}.get(label, 0.5 * side_m)
                # the same deadline inside the registrar: a scan already running stops there too
                reg = self._register_one(reg_patch, lat, lon, side_m, tol_n, scale_tol, margin,
                                         whole if label == "whole-map" else None,
                                         t_start + deadline if deadline else None)
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
            best = cands[n]
            label, sc, t, lat, lon = best.kind, best.score, best.tile, best.lat, best.lon
            if not why and left and len(regs) == 1 and label == "retrieval":
                why = f"deadline: {left} candidate places not registered, look-alikes unchecked"
            fix.registration = {"method": reg.method, "candidate": label, "rank": n, "score": reg.score,
                                "second": reg.second, "other_place": others if others > -1 else None,
                                "scale": reg.scale, "inliers": reg.inliers, "accuracy_m": reg.accuracy_m,
                                "tried": len(regs), "verified": not why, "reason": why}
            if left:
                fix.registration["deadline_left"] = left
            if not why:
                glat, glon = geo.offset_latlon(lat, lon, reg.east_m, reg.north_m)
                fix.tile, fix.ground_lat, fix.ground_lon = t, float(glat), float(glon)
                fix.heading_deg, fix.heading_source = reg.heading_deg % 360.0, HeadingSource.REGISTRATION
                acc = max(float(reg.accuracy_m), 0.5 * reg_patch.mpp)
                return self._aircraft(patch, fix, FixCandidate(float(glat), float(glon), acc, True, sc,
                                                               fix.confidence or 0.0, t))
        s_row, i_row = retrieval.best_scores, retrieval.best_ids
        refine = 1.5 * self.stride_m if self.opt.refine_m is None else self.opt.refine_m
        glat, glon = refine_position(s_row, i_row, self.ts.centers, refine)
        fix.ground_lat, fix.ground_lon = glat, glon
        # the filter's weight if retrieval ranked the right place (about a stride); a look-alike is off by
        # any distance, which nothing here measures: such a fix is never accepted (Localizer.filter)
        acc = max(self.stride_m, 0.25 * side_m)
        return self._aircraft(patch, fix, FixCandidate(glat, glon, acc, False, score, fix.confidence or 0.0, tile))

    @staticmethod
    def _registered_at(cand: Candidate, reg: Any) -> tuple[float, float] | None:
        if not (math.isfinite(reg.east_m) and math.isfinite(reg.north_m)):
            return None
        lat, lon = geo.offset_latlon(cand.lat, cand.lon, reg.east_m, reg.north_m)
        return float(lat), float(lon)

    @staticmethod
    def _near(a: tuple[float, float] | None, b: tuple[float, float] | None, within_m: float) -> bool:
        return a is not None and b is not None and float(haversine_m(a[0], a[1], b[0], b[1])) <= within_m

    def _predicted_ground(self, t: float, patch: GroundPatch, view: TrackView
                          ) -> tuple[float, float, float, bool] | None:
        """(lat, lon, heading, confirmed) where the track puts this patch's centre now: the last
        verified aircraft position the filter took, moved by the track's velocity, plus this frame's
        nadir -> patch-centre offset (attitude moves the ground point far more than the aircraft
        moves between frames at altitude); None without a recent one."""
        g = view.track
        if g is None:
            return None
        v = view.velocity_ne or (0.0, 0.0)
        n, e = patch.ref_offset_m
        if patch.heading_deg is None:  # heading-up patch: its offset turns with the heading
            n, e = rot_ne(n, e, g.heading_deg)
        dt = t - g.time_s
        lat, lon = geo.offset_latlon(g.lat, g.lon, v[1] * dt + e, v[0] * dt + n)
        return float(lat), float(lon), g.heading_deg, g.confirmed

    def _trusted(self, reg: Any) -> bool:
        return bool(reg.verified and all(math.isfinite(v) for v in (reg.east_m, reg.north_m, reg.heading_deg))
                    and math.isfinite(reg.accuracy_m) and reg.accuracy_m <= self.opt.max_accuracy_m)

    def _register_one(self, reg_patch: GroundPatch, lat: float, lon: float, side_m: float, tol: float,
                      scale_tol: float, margin: float, whole: tuple[float, ...] | None = None,
                      deadline: float | None = None) -> Any:
        """Register against the map crop around (lat, lon) holding the patch turned by up to tol,
        shifted by up to `margin` metres (distinct places are a tile side apart: a margin of one
        side leaves no ground between candidates unsearched); with stored map features, against
        those inside that crop (`whole`: the whole map's rectangle, map_match.whole_map_window)."""
        if whole is not None:
            return register_stored(self, reg_patch, lat, lon, whole[2], whole[3], tol, scale_tol, deadline)
        work = float(getattr(getattr(self.registrar, "conf", None), "work_mpp", 0.0) or 0.0)
        # a big tile has pixels to spare: registration cost goes with the window's pixel count
        mpp = max(reg_patch.mpp, work, 0.0 if is_learned(self.registrar) else side_m / self.opt.register_max_px)
        margin = max(1.5 * self.stride_m, margin)
        turned = math.cos(math.radians(45.0 - min(tol, 45.0))) * SQRT2  # box of the patch turned by up to tol
        crop_m = side_m * turned + 2.0 * margin
        if self.map_features is not None:  # the learned registrar's patch may span more than a tile
            half = 0.5 * (max(side_m, reg_patch.side_m) * turned + 2.0 * margin)
            return register_stored(self, reg_patch, lat, lon, half, half, tol, scale_tol, deadline)
        map_rgb, map_valid = self.imagery.crop(lat, lon, crop_m, mpp)
        return self.registrar.register(reg_patch, map_rgb, crop_m / map_rgb.shape[1], None, tol,
                                       scale_tol, map_valid=map_valid, deadline=deadline)

    def _aircraft(self, patch: GroundPatch, fix: Fix, c: FixCandidate) -> FixCandidate:
        """The aircraft = the ground point minus the nadir -> patch-centre offset, turned to north/east."""
        n, e = patch.ref_offset_m
        if patch.heading_deg is None:  # heading-up patch: its frame is turned by the heading
            n, e = rot_ne(n, e, fix.heading_deg or 0.0)
        lat, lon = geo.offset_latlon(c.lat, c.lon, -e, -n)
        return replace(c, lat=float(lat), lon=float(lon))
