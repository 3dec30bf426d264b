"""The onboard loop: frame -> preprocess -> embed -> search -> filter -> outputs.

One JSON record per frame (skipped frames included, with the reason), latency per stage, and
a RunStats at the end. Nothing but a signal (or the source ending, or --max-frames) stops it:
a bad frame is skipped and counted, an exception inside one frame is logged and counted.
SIGINT / SIGTERM set a flag; the loop leaves at the next frame and the outputs are closed
(flushed) in `finally`.

Record fields: frame, time_s, source, latency_ms {grab, preprocess, infer, search, filter,
total} (stages that ran); then either skipped (reason: corrupt, empty, grayscale, too-small,
wrong-size, nan, no-match, error [+ error text]) or lat/lon (filtered when accepted, else the
raw match), raw_lat/raw_lon, score, confidence (margin to the best distinct place), accepted,
reason (init / reinit / speed / low-confidence / null), tile, speed_mps, and when known
aircraft_lat/aircraft_lon, north_up_deg, window_m, truth_error_m.
"""
from __future__ import annotations

import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np

from skyloc.runtime.backends import Backend, open_backend
from skyloc.runtime.filter import FixCandidate, TemporalFilter, place_margin, refine_position
from skyloc.runtime.geo import haversine_m
from skyloc.runtime.matcher import SearchWindow, make_matcher
from skyloc.runtime.outputs import MavlinkOutput, Output
from skyloc.runtime.pose import PoseInputs, TelemetryLog
from skyloc.runtime.preprocess import check_frame, to_model_input
from skyloc.runtime.run_stats import STAGES, RunStats, load_truth
from skyloc.runtime.sources import Frame, FrameSource, ReconnectPolicy, open_source
from skyloc.runtime.tileset import TileSet

log = logging.getLogger(__name__)

@dataclass
class RunOptions:
    backend: str = "auto"
    backend_conf: dict[str, Any] | None = None
    index: str = "auto"  # matcher kind: auto | exact | flat | hnsw | ivfpq
    k: int = 10  # hits per query (confidence needs more than one)
    window_m: float | None = None  # prefer tiles near the last accepted fix (+ max_speed * elapsed)
    window_margin: float = 0.02  # ... unless a tile outside scores this much higher
    max_speed_mps: float = 30.0
    alpha: float = 0.5  # filter smoothing (1 = none)
    beta: float = 0.1
    max_rejections: int = 5
    noise_m: float | None = None  # retrieval position noise allowed by the speed gate; None: tile size
    distinct_m: float | None = None  # "another place" = tile centre farther than this; None: tile size
    min_confidence: float | None = None
    refine_m: float | None = None  # weighted centre of hits this close to the best; None: 1.5 x stride, 0: off
    max_frames: int | None = None
    fps: float | None = None  # image folders / videos without a frame rate
    live: bool | None = None  # force a video file to behave as a live source
    reconnect: ReconnectPolicy = field(default_factory=ReconnectPolicy)
    pose: PoseInputs = field(default_factory=PoseInputs)
    telemetry: str | Path | None = None  # CSV log of attitude / altitude per frame (runtime.pose.TelemetryLog)
    north_up: bool = True  # rotate each frame north-up when the heading is known (tiles are north-up)
    truth: str | Path | None = None  # truth.csv from `skyloc synth flight`
    handle_signals: bool = True  # only effective in the main thread


class _Stop:
    """Signal handlers that ask the loop (and a waiting live source) to stop."""

    def __init__(self, source: FrameSource, enable: bool) -> None:
        self.reason: str | None = None
        self._source = source
        self._old: dict[int, Any] = {}
        if enable and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.reason = signal.Signals(signum).name
        self._source.interrupt()

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def north_up(image: np.ndarray, yaw_deg: float, height: int, width: int) -> np.ndarray:
    """The centre square of a frame whose top points along `yaw_deg`, turned north-up, at HxW.

    The square's side is min(frame H, W) / sqrt(2): the largest that stays inside the frame at
    every heading, so the ground the model sees has the same size whatever the yaw (size the
    tile set for it) and no corner is ever filled from outside the picture. The frame is
    area-shrunk first so the rotation interpolates at about twice the model size; the final area
    resize averages the interpolation away.
    """
    h, w = image.shape[:2]
    side = min(h, w) / math.sqrt(2.0)
    work = int(min(round(side), 2 * max(height, width)))
    f = min(1.0, 1.5 * work / side)
    small = cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA) \
        if f < 1.0 else image
    sh, sw = small.shape[:2]
    # image up = heading; turning the picture clockwise by the heading puts north up
    m = cv2.getRotationMatrix2D(((sw - 1) / 2.0, (sh - 1) / 2.0), -float(yaw_deg), work / (side * sw / w))
    m[0, 2] += (work - sw) / 2.0
    m[1, 2] += (work - sh) / 2.0
    rot = cv2.warpAffine(small, m, (work, work), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return cv2.resize(rot, (width, height), interpolation=cv2.INTER_AREA) if (work, work) != (height, width) else rot


def _r(x: float, nd: int = 7) -> float:
    return round(float(x), nd)


def run(model: str | Path | Backend, tiles: str | Path | TileSet, source: str | FrameSource,
        outputs: Sequence[Output], options: RunOptions | None = None) -> RunStats:
    """Localize every frame of `source` against `tiles`; write one record per frame to `outputs`.

    Paths are opened here (backend per options.backend, tile set checked against the model's
    sidecar); objects passed in are used as they are and left open (outputs are always closed).
    """
    opt = options or RunOptions()
    stats = RunStats()
    opened: list[Any] = []
    try:
        backend = model if isinstance(model, Backend) else open_backend(model, opt.backend, opt.backend_conf)
        if not isinstance(model, Backend):
            opened.append(backend)
        if isinstance(tiles, TileSet):
            tiles.check_model(backend.sidecar)
            ts = tiles
        else:
            ts = TileSet.load(tiles, expect_model=backend.sidecar)
        matcher = make_matcher(ts, opt.index)
        src = source if isinstance(source, FrameSource) else open_source(
            str(source), live=opt.live, fps=opt.fps, reconnect=opt.reconnect, reuse_buffers=True)
        if not isinstance(source, FrameSource):
            opened.append(src)
    except BaseException:
        for o in [*opened, *outputs]:
            o.close()
        raise
    stats.backend = getattr(backend, "description", backend.name)
    log.info("run: %s, %d tiles, source %s", stats.backend, len(ts), src.name)
    stop = _Stop(src, opt.handle_signals)
    it = iter(src)
    try:
        _loop(backend, ts, matcher, it, src, outputs, opt, stats, stop)
    finally:
        close_it = getattr(it, "close", None)
        if close_it is not None:
            close_it()  # stops reader threads before the source is freed
        stop.restore()
        stats.reopens = src.stats.reopens
        stats.dropped = src.stats.dropped
        for o in [*outputs, *opened]:
            try:
                o.close()
            except Exception as exc:  # closing must not hide the run's own result
                log.warning("closing %s failed: %s", type(o).__name__, exc)
    return stats


def _loop(backend: Backend, ts: TileSet, matcher: Any, it: Iterator[Frame], src: FrameSource,
          outputs: Sequence[Output],
          opt: RunOptions, stats: RunStats, stop: _Stop) -> None:
    tile_m = float(ts.meta.get("tile_m") or 100.0)
    flt = TemporalFilter(opt.max_speed_mps, opt.alpha, opt.beta,
                         noise_m=tile_m if opt.noise_m is None else opt.noise_m,
                         max_rejections=opt.max_rejections, min_confidence=opt.min_confidence)
    distinct_m = tile_m if opt.distinct_m is None else opt.distinct_m
    # 1.5 strides reaches the 8 grid neighbours of the best tile
    refine_m = 1.5 * float(ts.meta.get("stride_m") or tile_m) if opt.refine_m is None else opt.refine_m
    k = max(1, min(opt.k, len(ts)))
    centers = ts.centers
    contract = backend.sidecar.input
    truth = load_truth(opt.truth) if opt.truth else None
    telemetry = TelemetryLog(opt.telemetry) if opt.telemetry else None
    mav = [o for o in outputs if isinstance(o, MavlinkOutput)]
    pose = opt.pose
    lat_ms = stats.latency_ms
    lat_lists = [lat_ms[s] for s in STAGES]
    first_shape: tuple[int, int] | None = None
    clock = time.perf_counter
    while stop.reason is None:
        if opt.max_frames is not None and stats.frames >= opt.max_frames:
            stats.stopped_by = "max-frames"
            break
        t0 = clock()
        try:
            frame = next(it)
        except StopIteration:
            break
        except Exception as exc:  # a source that raises has ended; say why
            log.error("source %s failed: %s", src.name, exc)
            stats.errors += 1
            break
        if stop.reason is not None:
            break
        t1 = clock()
        stats.frames += 1
        rec: dict[str, Any] = {"frame": frame.index, "time_s": round(frame.time_s, 4), "source": frame.source_name}
        times: list[float | None] = [t1 - t0, None, None, None, None]  # stages not run stay None
        try:
            reason = frame.error or check_frame(frame.image)
            if reason is None:
                shape = frame.image.shape[:2]  # type: ignore[union-attr]
                if first_shape is None:
                    first_shape = shape
                elif shape != first_shape:
                    reason = "wrong-size"
            if reason is None:
                if telemetry is not None:
                    telemetry.apply(pose, frame.index, frame.time_s)
                for m in mav:
                    m.poll(pose)
                image = frame.image
                if opt.north_up and pose.yaw_deg is not None:
                    image = north_up(image, pose.yaw_deg, contract.height, contract.width)  # type: ignore[arg-type]
                    rec["north_up_deg"] = round(pose.yaw_deg, 2)
                batch = to_model_input([image], contract)  # type: ignore[list-item]
                t2 = clock()
                emb = backend.embed(batch)
                t3 = clock()
                times[1], times[2] = t2 - t1, t3 - t2
                if not np.isfinite(emb).all():
                    reason = "nan"
            if reason is not None:
                stats.skipped[reason] += 1
                rec["skipped"] = reason
            else:
                window = None
                if opt.window_m is not None:
                    radius = flt.search_radius_m(frame.time_s, opt.window_m)
                    if radius is not None:
                        window = SearchWindow(flt.last[0], flt.last[1], radius)  # type: ignore[index]
                scores, idx = matcher.search(emb, k, None)
                if window is not None:
                    # Prefer the best place near the track, unless a far one is clearly better:
                    # then the filter sees the far one, so a track locked on a wrong place still
                    # collects the rejections that re-initialise it.
                    ws, wi = matcher.search(emb, k, window)
                    if wi[0, 0] >= 0 and scores[0, 0] - ws[0, 0] <= opt.window_margin:
                        scores, idx = ws, wi
                        rec["window_m"] = round(window.radius_m, 1)
                t4 = clock()
                times[3] = t4 - t3
                s, ix = scores[0], idx[0]
                if ix[0] < 0:
                    stats.skipped["no-match"] += 1
                    rec["skipped"] = "no-match"
                else:
                    best = int(ix[0])
                    conf = place_margin(s, ix, centers, distinct_m)
                    lat, lon = refine_position(s, ix, centers, refine_m)
                    cand = FixCandidate(lat, lon, float(s[0]), conf, best)
                    fix = flt.update(cand, frame.time_s)
                    aircraft = pose.aircraft(fix.lat, fix.lon)
                    times[4] = clock() - t4
                    stats.fixes += 1
                    if fix.accepted:
                        stats.accepted += 1
                    else:
                        stats.rejected[fix.reason or "?"] += 1
                    rec.update(lat=_r(fix.lat), lon=_r(fix.lon), raw_lat=_r(fix.raw_lat), raw_lon=_r(fix.raw_lon),
                               score=_r(cand.score, 5), confidence=_r(conf, 5), accepted=fix.accepted,
                               reason=fix.reason, tile=best)
                    if fix.speed_mps is not None:
                        rec["speed_mps"] = _r(fix.speed_mps, 2)
                    if aircraft is not None:
                        rec["aircraft_lat"], rec["aircraft_lon"] = _r(aircraft[0]), _r(aircraft[1])
                    if truth is not None and frame.index in truth:
                        tl, tn, al, an = truth[frame.index]
                        err = haversine_m(tl, tn, fix.raw_lat, fix.raw_lon)
                        stats.truth_errors_m.append(err)
                        rec["truth_error_m"] = _r(err, 2)
                        if fix.accepted:
                            stats.truth_accepted_errors_m.append(haversine_m(tl, tn, fix.lat, fix.lon))
                        if aircraft is not None and al is not None and an is not None:
                            stats.truth_aircraft_errors_m.append(haversine_m(al, an, aircraft[0], aircraft[1]))
        except Exception as exc:  # one bad frame never ends the run
            stats.errors += 1
            stats.skipped["error"] += 1
            rec["skipped"] = "error"
            rec["error"] = f"{type(exc).__name__}: {exc}"
            if stats.errors <= 5 or stats.errors % 100 == 0:
                log.warning("frame %d: %s (%d errors so far)", frame.index, rec["error"], stats.errors,
                            exc_info=stats.errors <= 5)
        total = clock() - t0
        times.append(total)
        rec["latency_ms"] = {s: round(v * 1000.0, 3) for s, v in zip(STAGES, times) if v is not None}
        for lst, v in zip(lat_lists, times):
            if v is not None:
                lst.append(v * 1000.0)
        for o in outputs:
            try:
                o.write(rec)
            except Exception as exc:
                stats.output_errors += 1
                if stats.output_errors <= 5:
                    log.warning("output %s failed: %s", type(o).__name__, exc)
    if stop.reason is not None:
        stats.stopped_by = stop.reason

