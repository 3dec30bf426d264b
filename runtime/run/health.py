"""What `skyloc run` says while it runs, so a slow or degraded run never looks like a hang.

- telemetry whose time range does not cover the frames: said at start when the source's length
  is known (video files), else at the first frame it misses; every frame it misses is counted
  and its record's `pose_source` says what the frame fell back to;
- a MAVLink pose that never becomes valid (all NaN, garbage, no autopilot): said once after
  `mavlink_pose_wait_s` of frames without one;
- a frame slower than `slow_frame_s`: said (rate-limited) with the stage that took the time and
  the likely cause (no altitude / heading: the scale / heading search).
"""
from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)

MAVLINK_POSE_WAIT_S = 5.0
SLOW_FRAME_S = 5.0


def telemetry_span(poses: Any) -> tuple[float, float] | None:
    """(first, last) time_s of the --telemetry samples on the frame clock, or None without one."""
    tel = getattr(poses, "telemetry", None)
    series = getattr(tel, "series", None)
    if not series:
        return None
    off = float(getattr(tel, "offset", 0.0) or 0.0)
    first = min(ts[0] for ts, _ in series.values())
    last = max(ts[-1] for ts, _ in series.values())
    return first - off, last - off


def source_span(src: Any) -> tuple[float, float] | None:
    """(0, duration) in seconds of a video file whose frame count and rate are known, else None."""
    n, fps = getattr(src, "frame_count", None), getattr(src, "fps", None)
    if not n or not fps:
        return None
    return 0.0, (n - 1) / float(fps)


def pose_source_label(pose: Any) -> str:
    """The record's `pose_source`: field=source pairs, or "none" (no source gave any value)."""
    return str(getattr(pose, "source", "") or "") or "none"


class RunHealth:
    """Per-frame watch of the run's inputs and pace; warnings go to the log (stderr)."""

    def __init__(self, poses: Any, src: Any, stats: Any, telemetry_path: str | None = None,
                 mavlink_url: str | None = None, mavlink_pose_wait_s: float = MAVLINK_POSE_WAIT_S,
                 slow_frame_s: float = SLOW_FRAME_S, clock: Any = time.monotonic) -> None:
        self.stats, self.clock = stats, clock
        self.span = telemetry_span(poses)
        self.telemetry_path = telemetry_path
        self.mavlink_url = mavlink_url if getattr(poses, "mavlink", None) is not None else None
        self.wait_s, self.slow_s = mavlink_pose_wait_s, slow_frame_s
        self.t0 = clock()
        self._said_telemetry = self._said_mavlink = False
        self._mavlink_seen = False
        frames = source_span(src)
        if self.span is not None and frames is not None and (frames[1] < self.span[0] or frames[0] > self.span[1]):
            self._warn_telemetry(f"the frames span time_s {frames[0]:.1f}..{frames[1]:.1f} s")

    def _warn_telemetry(self, what: str) -> None:
        self._said_telemetry = True
        a, b = self.span  # type: ignore[misc]
        log.warning("--telemetry %s covers time_s %.1f..%.1f s but %s: those frames get no pose from it and "
                    "fall back to MAVLink / EXIF / the flags, or to none (scale and heading then searched: "
                    "seconds per frame); each record's pose_source says which. Check the log's time base "
                    "(time_s on the frames' clock)", self.telemetry_path, a, b, what)

    def frame(self, frame_index: int, time_s: float, pose: Any, fix: Any, total_s: float) -> None:
        src = pose_source_label(pose) if pose is not None else "none"
        if self.span is not None and "=telemetry" not in src:
            self.stats.frames_without_telemetry += 1
            if not self._said_telemetry:
                self._warn_telemetry(f"frame {frame_index} is at time_s {time_s:.1f} s")
        if self.mavlink_url is not None and not self._mavlink_seen:
            if "=mavlink" in src:
                self._mavlink_seen = True
            elif not self._said_mavlink and self.clock() - self.t0 >= self.wait_s:
                self._said_mavlink = True
                log.warning("no valid pose from MAVLink (%s) in %.0f s: messages with NaN / Inf are dropped "
                            "(see the MAVLink count in the summary); frames run on the other pose sources or "
                            "none (scale and heading searched: seconds per frame)", self.mavlink_url, self.wait_s)
        if total_s >= self.slow_s:
            self.stats.slow_frames += 1
            if self.stats.slow_frames <= 3 or self.stats.slow_frames % 100 == 0:
                lat = getattr(fix, "latency_ms", {}) or {}
                stage = max((k for k in lat if k != "total"), key=lambda k: lat[k], default="?")
                why = []
                if pose is None or getattr(pose, "altitude_m", None) is None and getattr(pose, "gsd_m", None) is None:
                    why.append("no altitude: every scale searched")
                if pose is None or getattr(pose, "yaw_deg", None) is None:
                    why.append("no heading: every rotation searched")
                log.warning("frame %d took %.1f s (%s %.1f s%s); %d slow frames so far", frame_index, total_s, stage,
                            lat.get(stage, 0.0) / 1000.0, "; " + ", ".join(why) if why else "",
                            self.stats.slow_frames)
