"""One frame -> one fix: quality gate -> rectify -> embed -> retrieve -> register -> filter.

`Localizer.step(frame, pose)` runs the whole per-frame pipeline and returns a `Fix` (the record
fields). Each stage is a method with the name of the stage that takes what it needs and returns a
value (values.py), timed into `fix.latency_ms` under the same name (embed: `preprocess` + `infer`):

- **quality**: unusable frames (corrupt, grayscale, low contrast or texture, saturated) are
  skipped with the reason, before the model; so is a frame whose embedding sits at the
  embedding of a blank image (`blank-embedding`);
- **rectify**: the frame goes through the flat-ground homography (camera model + pose) to a
  metric patch at the registration resolution, centred on the ground point under the optical
  axis, north-up when the heading is known, heading-up otherwise. The tile scale level is the
  largest whose tile side the frame covers (at every rotation when the heading is unknown).
  Without altitude or GSD the scale is unknown: the same patch is matched as every level and the
  best level wins (`scale_source` = search). Without a camera model the frame's centre square
  stands in for a nadir view;
- **embed**: the patch cut to exactly the level's tile side, at the model's input size; with an
  unknown heading R rotations (default 8) go through the model in one batch;
- **retrieve**: cosine search over the level's tiles, inside the start prior / the window around
  the track when one applies; the hits of every rotation are pooled and reduced to distinct
  places (centres more than `distinct_m` apart), best first;
- **register**: the track's predicted place and the top few retrieved places are registered
  against the map imagery around them (`register` doc); a trusted registration gives the ground
  point to metres, the heading and `accuracy_m`, and makes the fix `verified`. Without imagery
  (or when nothing verifies) the fix is retrieval-only and unverified, weighted by the tile stride;
- **filter**: the temporal filter (runtime/localize/filter.py) gates and smooths by accuracy; with map
  imagery only verified fixes reach it; only verified fixes are ever `accepted`.

A fix goes out as a 3D position only when `send_3d`: verified, accepted, and every number finite.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import cv2
import numpy as np

from skyloc.runtime.backends import Backend
from skyloc.runtime.localize.filter import FixCandidate, TemporalFilter, distinct_places, place_margin
from skyloc.core.geo import haversine_m
# Fix and LocalizerOptions live in localizer_options.py; imported here, the names callers use
from skyloc.runtime.localize.options import Fix, LocalizerOptions, parse_start
from skyloc.runtime.localize.map_match import open_registration, patch_pad_for, register_px_for
from skyloc.runtime.localize.nadir import even_pad, nadir_patch
from skyloc.runtime.localize.register_stage import SQRT2, RegisterStage, scan_window
from skyloc.runtime.localize.threads import cap_blas_threads
from skyloc.runtime.localize.values import Embedding, Place, Retrieval, TrackState, TrackView
from skyloc.runtime.localize.retrieval import EXACT_MAX_TILES, Matcher, SearchWindow, topk
from skyloc.runtime.localize.retrieval_faiss import make_matcher
from skyloc.core.metrics import l2_normalize
from skyloc.runtime.pose.frame_pose import FramePose
from skyloc.core.preprocess import check_frame, to_model_input
from skyloc.runtime.localize.quality import BlankEmbedding, QualityGate
from skyloc.runtime.localize.rectify import GroundPatch, crop_centre, ground_coverage_m, pick_scale_level, rectify, rotate_patch
from skyloc.runtime.maps.tileset import TILE_M, TileSet
from skyloc.runtime.outputs.schema import FixStatus, ScaleSource, SkipReason

__all__ = ["Fix", "Localizer", "LocalizerOptions", "nadir_patch"]


class Localizer:
    """Per-frame pipeline over one model, one tile set and (optionally) its map imagery."""

    def __init__(self, backend: Backend, tiles: TileSet, options: LocalizerOptions | None = None,
                 camera: Any = None, imagery: Any = None, registrar: Any = None,
                 matcher: Matcher | None = None, quality: Any = None, map_features: Any = None) -> None:
        self.opt = opt = options or LocalizerOptions()
        self.backend = backend
        self.ts = tiles
        self.camera = camera
        self.imagery = imagery if opt.register else None
        # the learned registrar on stored map features when the tile set carries them (map_match.py)
        self.registrar, self.map_features = open_registration(opt, tiles, self.imagery, registrar, map_features)
        self.start = parse_start(opt.start)
        self.quality_gate = quality if quality is not None else QualityGate()
        self.matcher = matcher or make_matcher(tiles, opt.index)
        meta = tiles.meta
        self.tile_m = float(meta.get("tile_m") or TILE_M)
        self.stride_m = float(meta.get("stride_m") or self.tile_m)
        self.levels = sorted({float(s) for s in np.unique(tiles.scale)})
        self.sides_m = [self.tile_m * s for s in self.levels]
        self.register_px = register_px_for(opt, self.map_features, self.sides_m)
        self.patch_pad = patch_pad_for(self.map_features, self.register_px, opt.use_heading)  # learned: + ground around
        self._level_ids = {s: np.flatnonzero(np.isclose(tiles.scale, s)) for s in self.levels}
        self.contract = backend.sidecar.input
        self._emb = np.ascontiguousarray(tiles.embeddings, dtype=np.float32)
        self.tracker = TemporalFilter(opt.max_speed_mps, opt.accel_mps2, opt.noise_m, opt.gate_sigmas,
                                      opt.max_rejections, opt.min_confidence, confirm=opt.confirm)
        self.registration = RegisterStage(opt, tiles, self.imagery, self.registrar, self.map_features, self.tile_m,
                                          self.stride_m, self.register_px, self.start)
        self._cameras: dict[tuple[int, int], Any] = {}
        # the last verified fix the filter took into its track (the filter stage's output the next
        # frame's register stage predicts from)
        self.track_state: TrackState | None = None
        self.blank = BlankEmbedding(backend, threshold=opt.blank_cos)
        self.blas_limit = cap_blas_threads(opt.blas_threads)  # the demo and Python callers too, not only the CLI

    # ---- the pipeline ------------------------------------------------------------------

    def step(self, frame: Any, pose: FramePose, camera: Any = None) -> Fix:
        """Localize one frame (runtime.sources.Frame, BGR image) taken at `pose`; `camera` overrides
        the localizer's camera for this frame (intrinsics read from the image file)."""
        fix = Fix(frame.index, float(frame.time_s), frame.source_name)
        lat = fix.latency_ms
        clock = time.perf_counter
        t = clock()

        def lap(name: str) -> None:
            nonlocal t
            now = clock()
            lat[name] = round((now - t) * 1000.0, 3)
            t = now

        fix.skipped = self.quality(frame)
        lap("quality")
        if fix.skipped:
            return fix
        if not self.opt.use_heading and pose.yaw_deg is not None:
            pose = pose.with_(yaw_deg=None)
        rgb = cv2.cvtColor(np.ascontiguousarray(frame.image[:, :, :3]), cv2.COLOR_BGR2RGB)
        patches = self.rectify(rgb, pose, fix, camera)
        lap("rectify")
        if not patches:
            return fix
        emb = self.embed(patches[0][1], lap)
        if emb is None:
            fix.skipped = SkipReason.NAN
            return fix
        if self.blank.is_blank(emb.vectors[:1]):
            fix.skipped = SkipReason.BLANK_EMBEDDING  # no place information: its match would be the same tile every time
            return fix
        view = self.track_view(fix.time_s)
        found = self.retrieve(emb, [lv for lv, _ in patches], fix, view)
        lap("retrieve")
        if found is None:
            fix.skipped = SkipReason.NO_MATCH
            return fix
        cand = self.registration.register(dict(patches)[found.level], emb.angles, found, fix, view)
        lap("register")
        self.track_state = self.filter(cand, fix)
        lap("filter")
        return fix

    def embed(self, patch: GroundPatch, lap: Any) -> Embedding | None:
        """The model's embedding of the patch cut to one tile, at every rotation when the heading is
        unknown; None when the model gave a non-finite number."""
        known = patch.heading_deg is not None
        angles = (0.0,) if known else tuple(360.0 * r / self.opt.rotations for r in range(self.opt.rotations))
        batch = to_model_input(self.views(patch, list(angles)), self.contract, bgr=False)
        lap("preprocess")
        emb = self.backend.embed(batch)
        lap("infer")
        if not np.isfinite(emb).all():
            return None
        return Embedding(l2_normalize(emb), angles)

    def track_view(self, t: float) -> TrackView:
        """What the register stage may know of the filter at time t."""
        g = self.track_state
        recent = g if g is not None and 0.0 <= t - g.time_s <= self.opt.track_s else None
        return TrackView(recent, self.tracker.velocity_ne(), self.tracker.last is not None)

    def quality(self, frame: Any) -> str | None:
        reason = frame.error or check_frame(frame.image)
        if reason is None and self.quality_gate is not None:
            reason = self.quality_gate(frame.image)
        return reason

    def camera_for(self, w: int, h: int) -> Any:
        """The camera model for frames of this size (the size may change mid-run)."""
        if self.camera is None:
            return None
        cam = self._cameras.get((w, h))
        if cam is None:
            cam = self._cameras[(w, h)] = self.camera.scaled_to(w, h)
        return cam

    def rectify(self, rgb: np.ndarray, pose: FramePose, fix: Fix, camera: Any = None
                ) -> list[tuple[float, GroundPatch]]:
        """[(scale level, ground patch)]: one level when the scale is known, every level otherwise.

        The patch's central `register_px` square is one tile of its level; with an unknown heading
        the patch is sqrt(2) larger so that every rotation of that square stays on the picture.
        """
        h, w = rgb.shape[:2]
        heading = pose.yaw_deg
        inner = self.register_px
        side_px = even_pad(inner, max(self.patch_pad, 1.0 if heading is not None else SQRT2))
        cam = camera.scaled_to(w, h) if camera is not None else self.camera_for(w, h)
        if cam is None:
            return self._rectify_without_camera(rgb, pose, fix, inner, side_px)
        if pose.altitude_m is None and pose.gsd_m is None:
            # unknown scale: the covered square is each level's tile in turn (same pixels, other mpp)
            unit = pose.with_(altitude_m=1.0)
            cov1 = ground_coverage_m(cam, unit)
            if not cov1 > 0:
                fix.skipped = SkipReason.NO_COVERAGE
                return []
            base = rectify(rgb, cam, unit, cov1 / inner, side_px, heading)
            fix.scale_source = ScaleSource.SEARCH
            return [(lv, replace(base, mpp=side / inner,
                                 ref_offset_m=(base.ref_offset_m[0] * side / cov1, base.ref_offset_m[1] * side / cov1)))
                    for lv, side in zip(self.levels, self.sides_m)]
        coverage = ground_coverage_m(cam, pose)
        fix.coverage_m = coverage
        i = pick_scale_level(coverage, self.sides_m)
        if i is None:
            fix.skipped = SkipReason.NO_COVERAGE  # the frame sees less ground than the smallest tile
            return []
        fix.scale_level, fix.scale_source = self.levels[i], ScaleSource.COVERAGE
        return [(self.levels[i], rectify(rgb, cam, pose, self.sides_m[i] / inner, side_px, heading))]

    def _rectify_without_camera(self, rgb: np.ndarray, pose: FramePose, fix: Fix, inner: int, side_px: int
                                ) -> list[tuple[float, GroundPatch]]:
        h, w = rgb.shape[:2]
        usable = min(h, w) / (1.0 if pose.yaw_deg is not None else SQRT2)  # ground the tile may use, px
        if pose.gsd_m is not None:
            coverage = usable * pose.gsd_m
            fix.coverage_m = coverage
            i = pick_scale_level(coverage, self.sides_m)
            if i is None:
                fix.skipped = SkipReason.NO_COVERAGE
                return []
            side = self.sides_m[i]
            fix.scale_level, fix.scale_source = self.levels[i], ScaleSource.GSD
            src = int(round(side / pose.gsd_m * side_px / inner))
            return [(self.levels[i], nadir_patch(rgb, side_px, side / inner, pose.yaw_deg, src))]
        src = None if self.patch_pad <= 1.0 else int(round(usable * side_px / inner))  # inner = usable
        base = nadir_patch(rgb, side_px, 1.0, pose.yaw_deg, src)
        fix.scale_source = ScaleSource.SEARCH
        return [(lv, replace(base, mpp=side / inner)) for lv, side in zip(self.levels, self.sides_m)]

    def views(self, patch: GroundPatch, angles: list[float]) -> list[np.ndarray]:
        """The model's views: the patch turned by each angle (clockwise), cut to one tile."""
        inner = self.register_px
        return [crop_centre(rotate_patch(patch, a) if a else patch, inner).image for a in angles]

    def _window(self, t: float) -> SearchWindow | None:
        last = self.tracker.last
        if last is None:
            return self.start
        if self.opt.window_m == 0:
            return None
        extra = self.tile_m * max(self.levels) if self.opt.window_m is None else self.opt.window_m
        radius = self.tracker.search_radius_m(t, extra)
        return None if radius is None else SearchWindow(last[0], last[1], radius)

    def _places(self, s: np.ndarray, i: np.ndarray, distinct: float, limit: int) -> list[Place]:
        """Distinct places over every rotation's hits, best first."""
        flat_s, flat_i = s.ravel(), i.ravel()
        order = np.argsort(-flat_s, kind="stable")
        flat_s, flat_i, rot = flat_s[order], flat_i[order], order // s.shape[1]
        keep = distinct_places(flat_s, flat_i, self.ts.centers, distinct, limit)
        return [Place(float(flat_s[j]), int(flat_i[j]), int(rot[j])) for j in keep]

    def retrieve(self, emb: Embedding, levels: list[float], fix: Fix, view: TrackView) -> Retrieval | None:
        """The scale level and the distinct places to register, in order; None when nothing matched.

        Inside the search window (start prior / around the track) first, unless a place outside
        scores higher by more than window_margin: then that one first, so a track locked on a
        wrong place still sees (and the filter counts) the better match.
        """
        q = emb.vectors
        k = max(1, min(self.opt.k, len(self.ts)))
        window = self._window(fix.time_s)
        best = None
        for level in levels:
            ids = self._level_ids[level] if len(self.levels) > 1 else np.arange(len(self.ts))
            full = None
            if len(ids) <= EXACT_MAX_TILES:  # one product serves the global and the window search
                full = q @ self._emb[ids].T if len(ids) < len(self.ts) else q @ self._emb.T
                s, i = topk(full, k, ids)
            else:
                s, i = self.matcher.search(q, k) if len(self.levels) == 1 else topk(q @ self._emb[ids].T, k, ids)
            ws = wi = None
            if window is not None:
                wids = np.intersect1d(self.matcher.window_ids(window), ids, assume_unique=True)
                cols = np.searchsorted(ids, wids)  # ids are ascending
                ws, wi = topk(full[:, cols] if full is not None else q @ self._emb[wids].T, k, wids)
                if not (wi >= 0).any():
                    ws = wi = None
            top = float(s.max()) if ws is None else max(float(ws.max()) + self.opt.window_margin, float(s.max()))
            if best is None or top > best[0]:
                best = (top, level, s, i, ws, wi)
        assert best is not None
        _, level, s, i, ws, wi = best
        fix.scale_level = level
        distinct = self.tile_m * level if self.opt.distinct_m is None else self.opt.distinct_m
        n = max(1, self.opt.candidates)
        if self.imagery is not None and view.track is None and scan_window(self.start, view, self.opt.scan_m) is None:
            n = max(n, self.opt.acquire_candidates)  # no track to say where, no prior scan: look at more places
        places = self._places(s, i, distinct, n)
        in_window: set[int] = set()
        if ws is not None and wi is not None:
            fix.window_m = window.radius_m if window is not None else None
            inside = self._places(ws, wi, distinct, n)
            far_first = places and float(s.max()) - float(ws.max()) > self.opt.window_margin
            merged = ([places[0]] + inside) if far_first else (inside + places)
            places = []
            for p in merged:  # dedupe: the global list repeats the window's places
                if all(float(haversine_m(*self.ts.centers[p.tile], *self.ts.centers[o.tile])) > distinct for o in places):
                    places.append(p)
            places = places[:n]
            in_window = set() if far_first else {p.tile for p in inside}
        if not places:
            return None
        top_place = places[0]
        src_s, src_i = (ws, wi) if ws is not None and top_place.tile in in_window else (s, i)
        fix.score = top_place.score
        fix.confidence = place_margin(src_s[top_place.rotation], src_i[top_place.rotation], self.ts.centers, distinct)
        return Retrieval(level, tuple(places), src_s[top_place.rotation], src_i[top_place.rotation])

    def filter(self, c: FixCandidate, fix: Fix) -> TrackState | None:
        """The temporal filter. With map imagery only verified fixes reach it (an unverified one is
        reported, reason "unverified", never accepted); retrieval-only, every fix does (its track narrows
        the search) but none is accepted: retrieval is right to a stride or off by a look-alike's distance
        and no accuracy it could claim says which (tests/test_integrity.py). Returns the track state the
        next frame predicts from (unchanged when this fix did not enter the track)."""
        fix.raw_lat, fix.raw_lon, fix.raw_accuracy_m = c.lat, c.lon, c.accuracy_m
        outside = self._outside_prior(c)  # retrieval-only: a place outside the start prior never starts a track
        if not c.verified and (self.imagery is not None or outside):
            fix.lat, fix.lon, fix.accuracy_m = c.lat, c.lon, c.accuracy_m
            fix.accepted, fix.verified = False, False
            fix.reason = FixStatus.OUTSIDE_PRIOR if outside else FixStatus.UNVERIFIED
            return self.track_state
        out = self.tracker.update(c, fix.time_s)
        fix.lat, fix.lon, fix.accuracy_m = out.lat, out.lon, out.accuracy_m
        fix.accepted, fix.reason, fix.verified = out.accepted, out.reason, c.verified
        if fix.accepted and not c.verified:  # retrieval-only: on the track, never vouched for (see above)
            fix.accepted, fix.reason = False, FixStatus.UNVERIFIED
        fix.speed_mps = out.speed_mps
        v = self.tracker.velocity_ne() if fix.accepted else None
        fix.vn_mps, fix.ve_mps = (v if v is not None else (None, None))
        # a tentative track's verified fix is predicted too: registering there first is how the
        # confirming second fix is found when retrieval alone rarely ranks the place
        took = fix.accepted or out.reason in (FixStatus.INIT, FixStatus.REINIT, FixStatus.TENTATIVE)
        if took and fix.verified and fix.heading_deg is not None:
            return TrackState(c.lat, c.lon, fix.time_s, fix.heading_deg, fix.accepted)
        return self.track_state

    def _outside_prior(self, c: FixCandidate) -> bool:
        """An unverified fix, before any fix reached the filter, farther from the start prior's centre
        than its radius plus the fix's own accuracy: retrieval ranked a place the prior rules out."""
        w = self.start
        if c.verified or w is None or self.tracker.last is not None:
            return False
        return float(haversine_m(w.lat, w.lon, c.lat, c.lon)) > w.radius_m + c.accuracy_m
