"""The onboard loop: source -> pose source -> Localizer.step -> outputs.

    for frame in source:
        pose = poses.pose_for(frame.time_s, frame.meta)  # telemetry CSV / MAVLink / EXIF / flags
        fix = localizer.step(frame, pose)  # quality -> rectify -> embed -> retrieve -> register -> filter
        for out in outputs:
            out.write(fix_record(fix))

One JSON record per frame (skipped frames included, with the reason; schema in
runtime/outputs/schema.py), and a RunStats at the end. Nothing but a termination signal (STOP_SIGNALS
and the other catchable ones), the source ending or --max-frames stops it: a bad frame is skipped and counted, an exception
inside one frame is logged and counted, a failing output is counted (and turns the exit code
non-zero, run_cli.EXIT_OUTPUT_ERRORS). Every input is opened and checked before any output is
opened, so a startup error never touches an output file.
"""
from __future__ import annotations

import logging
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from skyloc.runtime.backends import Backend, open_backend
from skyloc.runtime.outputs.schema import SCHEMA_VERSION, SkipReason
from skyloc.core.geo import haversine_m
from skyloc.runtime.localize.localizer import Fix, Localizer, LocalizerOptions
from skyloc.core.options import opt
from skyloc.runtime.outputs.writers import Output
from skyloc.runtime.report.evidence import EvidenceWriter
from skyloc.runtime.run.health import RunHealth, pose_source_label
from skyloc.runtime.run.inputs import check_coverage, open_camera, open_imagery, open_pose_source
from skyloc.runtime.run.stats import RunStats, load_truth
from skyloc.runtime.sources.base import Frame, FrameSource, ReconnectPolicy
from skyloc.runtime.sources.open import open_source
from skyloc.runtime.maps.tileset import TileSet

log = logging.getLogger(__name__)



@dataclass
class RunOptions(LocalizerOptions):
    """Everything `skyloc run` takes besides --model/--tiles/--source: the only place its defaults
    and checks live; the flags, `--config FILE.toml` and the resolved config come from it."""

    out: str = opt("-", "JSON lines file of one record per frame, '-' for stdout")
    overwrite: bool = opt(False, "replace an existing --out / --stats-json / resolved config (refused otherwise)")
    udp: str | None = opt(None, "also send each record as a JSON datagram", metavar="HOST:PORT")
    mavlink: str | None = opt(None, "send GPS_INPUT: udpout:HOST:PORT, udpin:HOST:PORT, tcp:HOST:PORT, "
                                    "/dev/ttyX:BAUD, file:PATH", metavar="URL")
    nmea: str | None = opt(None, "send NMEA GGA + RMC (a position only for verified, accepted fixes): "
                                 "udp:HOST:PORT, /dev/ttyX:BAUD, file:PATH", metavar="TARGET")
    fix_type: int = opt(3, "GPS_INPUT fix_type of a verified, accepted fix", ge=2, le=3)
    rejected_fix_type: int | None = opt(None, "also send every other fix with this fix_type (0 or 1: no fix) "
                                              "[send nothing]", ge=0, le=1)
    satellites: int = opt(10, "GPS_INPUT satellites_visible of a verified fix", ge=0, le=255)
    gps_id: int = opt(0, "GPS_INPUT gps_id (instance)", ge=0, le=255)
    mavlink_sysid: int = opt(1, "our MAVLink system id", ge=1, le=255)
    mavlink_compid: int = opt(191, "our MAVLink component id (191 = onboard computer)", ge=1, le=255)
    backend: str = opt("auto", "inference backend", choices=("auto", "onnxruntime", "tensorrt"))
    providers: str | None = opt(None, "onnxruntime execution providers, e.g. cuda,cpu")
    camera: str | None = opt(None, "camera file: JSON fx/fy/cx/cy/width/height[/dist], OpenCV calibration "
                                   "YAML, or a synthetic flight's flight.json", metavar="FILE")
    hfov: float | None = opt(None, "horizontal field of view, degrees (ideal camera; instead of --camera)",
                             gt=0, lt=180, metavar="DEG")
    imagery: str | None = opt(None, "map imagery for registration [the imagery the tile set records]",
                              metavar="PATH")
    altitude: float | None = opt(None, "altitude above ground, metres (fixed)", gt=0, le=20000, metavar="M")
    roll: float | None = opt(None, "roll, degrees, right wing down positive (fixed)", ge=-90, le=90)
    pitch: float | None = opt(None, "pitch, degrees, nose up positive (fixed)", ge=-90, le=90)
    yaw: float | None = opt(None, "heading, degrees clockwise from north (fixed)", ge=-360, le=360)
    camera_tilt: float = opt(0.0, "camera tilt forward from nadir, degrees", ge=0, lt=90)
    gsd: float | None = opt(None, "ground sampling distance, metres per pixel (images without altitude)",
                            gt=0, le=100, metavar="M_PER_PX")
    telemetry: str | None = opt(None, "per-frame pose CSV: frame or time_s + any of altitude_m, roll_deg, "
                                      "pitch_deg, yaw_deg, tilt_deg (a synthetic flight's truth.csv works; "
                                      "its positions are ignored)", metavar="CSV")
    fps: float | None = opt(None, "time step of image folders [1] / videos without a frame rate", gt=0, le=1000)
    live: bool = opt(False, "treat a video file as a live camera (latest frame, reopened when it ends)")
    reopen_initial: float = opt(0.5, "first reopen back-off of a live source, s", gt=0, le=3600)
    reopen_max: float = opt(10.0, "longest back-off, s", gt=0, le=3600)
    reopen_attempts: int = opt(30, "a live source gives up after N reopens in a row without a frame, then the "
                                   "run ends with exit 4 (about 4 min at the default back-off; 0 = never)", ge=0)
    max_frames: int | None = opt(None, "stop after this many frames", ge=0)
    truth: str | None = opt(None, "truth.csv of a synthetic flight: report the error against it", metavar="CSV")
    stats_json: str | None = opt(None, "also write the final statistics as JSON here", metavar="FILE")
    pose_wait: float = opt(5.0, "say so when --mavlink has given no valid pose this many seconds into the run",
                           gt=0, le=3600, metavar="S")
    evidence: str | None = opt(None, "also write a registration-evidence PNG per positioned frame into this folder "
                                     "(`skyloc report --evidence` shows them)", metavar="DIR")
    log_level: str = opt("WARNING", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    handle_signals: bool = opt(True, cli=False)

    @property
    def reconnect(self) -> ReconnectPolicy:
        return ReconnectPolicy(initial_s=self.reopen_initial, max_s=self.reopen_max,
                               max_attempts=self.reopen_attempts or None)

    @property
    def backend_conf(self) -> dict[str, Any] | None:
        return {"providers": self.providers} if self.providers else None


# Every catchable signal whose default action ends the process: each stops the run the way SIGTERM
# does (summary, --stats-json, outputs closed). The last group is taken only when not ignored
# (nohup-style parents): an ignored signal stays ignored.
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")
STOP_SIGNALS_UNLESS_IGNORED = ("SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGXCPU",
                               "SIGPWR", "SIGIO")


class _Stop:
    """Signal handlers (STOP_SIGNALS and the rest) that ask the loop and a waiting live source to stop."""

    def __init__(self, source: FrameSource, enable: bool) -> None:
        self.reason: str | None = None
        self._source = source
        self._old: dict[int, Any] = {}
        if enable and threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS + STOP_SIGNALS_UNLESS_IGNORED:
                sig = getattr(signal, name, None)
                if sig is None or (name not in STOP_SIGNALS and signal.getsignal(sig) == signal.SIG_IGN):
                    continue
                try:
                    self._old[sig] = signal.signal(sig, self._handle)
                except (OSError, ValueError):  # not catchable on this platform
                    pass

    def _handle(self, signum: int, _frame: Any) -> None:
        self.reason = signal.Signals(signum).name
        self._source.interrupt()

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _num(x: float | None, nd: int = 7) -> float | None:
    """JSON-safe number: None for missing or non-finite (records never carry NaN)."""
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), nd)


def fix_record(fix: Fix) -> dict[str, Any]:
    """The JSON record of one frame (fields: runtime/outputs/schema.py)."""
    rec: dict[str, Any] = {"schema": SCHEMA_VERSION, "frame": fix.frame, "time_s": _num(fix.time_s, 4),
                           "source": fix.source, "latency_ms": dict(fix.latency_ms)}
    if fix.skipped is not None:
        rec["skipped"] = fix.skipped
        if fix.error:
            rec["error"] = fix.error
        for k in ("scale_level", "coverage_m"):
            if getattr(fix, k) is not None:
                rec[k] = _num(getattr(fix, k), 3)
        return rec
    rec.update(lat=_num(fix.lat), lon=_num(fix.lon), raw_lat=_num(fix.raw_lat), raw_lon=_num(fix.raw_lon),
               ground_lat=_num(fix.ground_lat), ground_lon=_num(fix.ground_lon),
               accepted=fix.accepted, verified=fix.verified, send_3d=fix.send_3d, reason=fix.reason,
               accuracy_m=_num(fix.accuracy_m, 2), raw_accuracy_m=_num(fix.raw_accuracy_m, 2),
               heading_deg=_num(fix.heading_deg, 2), heading_source=fix.heading_source,
               score=_num(fix.score, 5), confidence=_num(fix.confidence, 5), tile=fix.tile,
               scale_level=_num(fix.scale_level, 4), scale_source=fix.scale_source)
    for k, nd in (("coverage_m", 2), ("speed_mps", 2), ("vn_mps", 3), ("ve_mps", 3), ("window_m", 1)):
        v = getattr(fix, k)
        if v is not None:
            rec[k] = _num(v, nd)
    if fix.registration is not None:
        rec["registration"] = {k: (_num(v, 4) if isinstance(v, float) else v) for k, v in fix.registration.items()}
    return rec


def run(model: str | Path | Backend, tiles: str | Path | TileSet, source: str | FrameSource,
        outputs: Sequence[Output] | Callable[[], Sequence[Output]], options: RunOptions | None = None,
        stats: RunStats | None = None, poses: Any = None, camera: Any = None, imagery: Any = None) -> RunStats:
    """Localize every frame of `source` against `tiles`; write one record per frame to `outputs`.

    Every input (model, tile set, source, camera, pose source, imagery) is opened and checked
    first; `outputs` may be a callable that opens them, called only then. Objects passed in are
    used as they are and left open (outputs are always closed). Pass `stats` to keep the counts
    even when this raises.
    """
    opt = options or RunOptions()
    stats = stats if stats is not None else RunStats()
    opened: list[Any] = []
    outs: Sequence[Output] = []
    try:
        backend = model if isinstance(model, Backend) else open_backend(model, opt.backend, opt.backend_conf)
        if not isinstance(model, Backend):
            opened.append(backend)
        if isinstance(tiles, TileSet):
            tiles.check_model(backend.sidecar)
            ts = tiles
        else:
            ts = TileSet.load(tiles, expect_model=backend.sidecar)
        cam = camera if camera is not None else open_camera(opt)
        img = imagery if imagery is not None else (open_imagery(ts, opt) if opt.register else None)
        pose_src = poses if poses is not None else open_pose_source(opt, source)
        check_coverage(ts, opt, cam, pose_src)  # tiles larger than every frame's footprint: refuse now
        truth = load_truth(opt.truth) if opt.truth else None
        localizer = Localizer(backend, ts, opt, camera=cam, imagery=img)
        src = source if isinstance(source, FrameSource) else open_source(
            str(source), live=opt.live or None, fps=opt.fps, reconnect=opt.reconnect, reuse_buffers=True)
        if not isinstance(source, FrameSource):
            opened.append(src)
        evidence = EvidenceWriter(opt.evidence, opt.overwrite) if opt.evidence else None  # refuses old evidence
        outs = outputs() if callable(outputs) else outputs  # inputs are good: now open the outputs
        if hasattr(pose_src, "attach"):
            pose_src.attach(outs)
    except BaseException:
        for o in [*opened, *(outputs if not callable(outputs) else [])]:
            o.close()
        raise
    stats.backend = getattr(backend, "description", backend.name)
    problems = getattr(pose_src, "problems", [])
    stats.telemetry_rows_skipped = len(problems)
    for p in problems[:5]:
        log.warning("telemetry row skipped: %s", p)
    stats.registration = "off" if img is None else str(getattr(localizer.registrar, "name", "on"))
    log.info("run: %s, %d tiles, source %s, %s", stats.backend, len(ts), src.name,
             "retrieval only (no map imagery): fixes unverified" if img is None else "registration on")
    stop = _Stop(src, opt.handle_signals)
    health = RunHealth(pose_src, src, stats, opt.telemetry, opt.mavlink, mavlink_pose_wait_s=opt.pose_wait)
    it = iter(src)
    try:
        _loop(localizer, pose_src, it, src, outs, opt, stats, stop, truth, health, evidence)
        _check_source_ended(src, stats)
    finally:
        close_it = getattr(it, "close", None)
        if close_it is not None:
            close_it()  # stops reader threads before the source is freed
        stop.restore()
        stats.reopens = src.stats.reopens
        stats.dropped = src.stats.dropped
        for o in [*outs, *opened]:
            try:
                o.close()
            except Exception as exc:  # closing must not hide the run's own result
                stats.output_errors += o in outs
                log.warning("closing %s failed: %s", type(o).__name__, exc)
        stats.output_errors += sum(int(getattr(o, "errors", 0) or 0) for o in outs)
        stats.mavlink_nonfinite_dropped = sum(int(getattr(getattr(getattr(o, "link", None), "stats", None),
                                                          "nonfinite_dropped", 0) or 0) for o in outs)
    return stats


def _check_source_ended(src: FrameSource, stats: RunStats) -> None:
    """A source that ends by itself having given no frame (undecodable video, a camera that never
    opened) or a live source that ends at all (it gave up reopening) has failed: exit 4, said."""
    if stats.stopped_by is not None or stats.source_failed:
        return
    live = hasattr(src, "policy")
    if stats.frames == 0:
        stats.source_failed = True
        log.error("source %s gave no frame: %s", src.name, "it never opened (or gave up reopening); check the "
                  "device / URL" if live else "it cannot be decoded (damaged or truncated file, or a codec this "
                  "OpenCV lacks); check it with ffprobe or extract the frames to a folder")
    elif live:
        stats.source_failed = True
        log.error("live source %s ended: it gave up reopening (--reopen-attempts)", src.name)


def _loop(localizer: Localizer, poses: Any, it: Iterator[Frame], src: FrameSource, outputs: Sequence[Output],
          opt: RunOptions, stats: RunStats, stop: _Stop, truth: dict | None, health: RunHealth | None = None,
          evidence: EvidenceWriter | None = None) -> None:
    clock = time.perf_counter
    exif_camera = localizer.camera is None and hasattr(poses, "camera_for")
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
            stats.source_failed = True
            break
        if stop.reason is not None:
            break
        t1 = clock()
        stats.frames += 1
        pose = None
        try:
            pose = poses.pose_for(frame.time_s, {"index": frame.index, **(frame.meta or {})})
            cam = poses.camera_for(frame) if exif_camera else None
            t2 = clock()
            fix = localizer.step(frame, pose, cam)
            fix.latency_ms = {"grab": round((t1 - t0) * 1000.0, 3), "pose": round((t2 - t1) * 1000.0, 3),
                              **fix.latency_ms}
        except Exception as exc:  # one bad frame never ends the run
            stats.errors += 1
            fix = Fix(frame.index, float(frame.time_s), frame.source_name, skipped=SkipReason.ERROR,
                      error=f"{type(exc).__name__}: {exc}")
            fix.latency_ms = {"grab": round((t1 - t0) * 1000.0, 3)}
            if stats.errors <= 5 or stats.errors % 100 == 0:
                log.warning("frame %d: %s (%d errors so far)", frame.index, fix.error, stats.errors,
                            exc_info=stats.errors <= 5)
        fix.latency_ms["total"] = round((clock() - t0) * 1000.0, 3)
        rec = fix_record(fix)
        rec["pose_source"] = pose_source_label(pose) if pose is not None else "none"
        if health is not None:
            health.frame(frame.index, float(frame.time_s), pose, fix, fix.latency_ms["total"] / 1000.0)
        if frame.unix_s is not None and math.isfinite(frame.unix_s):
            rec["capture_unix_s"] = round(frame.unix_s, 6)
        if truth is not None and fix.skipped is None and frame.index in truth:
            _truth(rec, fix, truth[frame.index])
        stats.add(fix, rec)
        if evidence is not None and fix.skipped is None:
            stats.output_errors += not evidence.write_safely(frame, pose, cam, rec, localizer)
        for o in outputs:
            try:
                o.write(rec)
            except Exception as exc:
                stats.output_errors += 1
                if stats.output_errors <= 5:
                    log.warning("output %s failed: %s", type(o).__name__, exc)
    if stop.reason is not None:
        stats.stopped_by = stop.reason


def _truth(rec: dict[str, Any], fix: Fix, t: tuple[float, float, float | None, float | None]) -> None:
    clat, clon, alat, alon = t
    if alat is None or alon is None:  # a truth file without aircraft positions: the ground point
        alat, alon = clat, clon
    if fix.raw_lat is not None and fix.raw_lon is not None:
        rec["truth_error_m"] = _num(float(haversine_m(alat, alon, fix.raw_lat, fix.raw_lon)), 2)
    if fix.lat is not None and fix.lon is not None:
        rec["truth_filtered_error_m"] = _num(float(haversine_m(alat, alon, fix.lat, fix.lon)), 2)
    if fix.ground_lat is not None and fix.ground_lon is not None:
        rec["truth_ground_error_m"] = _num(float(haversine_m(clat, clon, fix.ground_lat, fix.ground_lon)), 2)
