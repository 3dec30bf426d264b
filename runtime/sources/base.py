"""Frame sources: camera / V4L2, RTSP and other network streams, GStreamer pipelines, video
files and image folders, behind one iterator of `Frame`s.

Two behaviours on purpose:
- files (video, image folder; runtime/sources/files.py) are read in order and never drop a
  frame; a reader thread decodes a couple of frames ahead so decoding overlaps inference;
- live sources (camera, network stream, GStreamer, or a file forced live) have a grab thread
  that keeps only the *latest* frame, so a slow model never works on stale images, and that
  reopens a source that drops, with bounded exponential back-off (runtime/sources/live.py).

Images are BGR uint8 as OpenCV gives them (a grayscale file stays 2-D). The frame size may
change from frame to frame (a thumbnail in a folder, a camera reopened at another resolution):
nothing here keeps the first frame's size.
"""
from __future__ import annotations

import math
import queue
import re
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from skyloc.core.errors import SkylocError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")


@dataclass
class Frame:
    """One frame and when it was taken.

    `time_s` is the capture time on the source's own clock, so telemetry and truth join on time,
    not on list position: image folders use the EXIF DateTimeOriginal(+SubSec) when the first
    image has one (seconds since 1970 on the camera clock), else the frame number / fps; videos
    the container timestamp; live sources the seconds since the source opened. `unix_s` is the
    absolute UTC capture time when it is known (live: the wall clock at grab; EXIF with an
    OffsetTimeOriginal), else None. `index` is the frame number: the digits of the file name when
    every file has them (a missing file leaves a gap, it does not shift later frames), the frame
    slot in a video (undecodable slots keep their number), else the position.
    `meta`: file (name), path, exif (named tags, see runtime.exif), time_from
    ("exif" | "name" | "position" | "container" | "clock"), for pose sources.
    """

    index: int
    time_s: float
    image: np.ndarray | None  # BGR uint8, or None when it could not be decoded (see `error`)
    source_name: str  # file name for folders, else the source spec
    error: str | None = None  # "empty" | "corrupt" | "unreadable" | "no-time" when not usable
    meta: dict[str, Any] = field(default_factory=dict)
    unix_s: float | None = None


@dataclass
class ReconnectPolicy:
    """Back-off for reopening a live source: initial_s * factor**(k-1), capped at max_s, before
    the k-th consecutive attempt; give up after max_attempts (None: keep trying, as a drone should)."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 10.0
    max_attempts: int | None = None
    open_timeout_s: float = 5.0  # network streams: connect / read timeouts so a stall becomes a drop
    read_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("initial_s", "max_s", "open_timeout_s", "read_timeout_s"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise SkylocError(f"reconnect {name}={v!r} must be a finite number > 0 (seconds)")
        if not isinstance(self.factor, (int, float)) or not math.isfinite(self.factor) or self.factor < 1:
            raise SkylocError(f"reconnect factor={self.factor!r} must be a finite number >= 1")
        if self.max_s < self.initial_s:
            raise SkylocError(f"reconnect max_s={self.max_s} is below initial_s={self.initial_s}")
        if self.max_attempts is not None and (not isinstance(self.max_attempts, int) or self.max_attempts < 1):
            raise SkylocError(f"reconnect max_attempts={self.max_attempts!r} must be >= 1 or None (never give up)")

    def delay(self, attempt: int) -> float:
        # in logs, so a long outage (attempt 10**6) never overflows a float power
        k = max(0, int(attempt) - 1)
        if self.factor == 1.0 or k == 0:
            return min(self.max_s, self.initial_s)
        if math.log(self.initial_s) + k * math.log(self.factor) >= math.log(self.max_s):
            return self.max_s
        return min(self.max_s, self.initial_s * self.factor ** k)


@dataclass
class SourceStats:
    frames: int = 0  # delivered to the consumer
    grabbed: int = 0  # live: read from the device
    dropped: int = 0  # live: grabbed but replaced by a newer frame before being consumed
    disconnects: int = 0  # live: the source stopped giving frames
    reopens: int = 0  # live: reopen attempts
    reopen_failures: int = 0
    backoff_s: list[float] = field(default_factory=list)  # delays slept before reopen attempts (last 100)
    error: str | None = None  # live: why the grab thread died, when it did (the stream then ends)


class FrameSource(ABC):
    """Iterate once; `interrupt()` (signal-safe) makes the iterator end promptly; `close()` frees."""

    live: bool = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.stats = SourceStats()
        self._stop = threading.Event()

    @abstractmethod
    def __iter__(self) -> Iterator[Frame]: ...

    def interrupt(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _prefetch(items: Iterator[Frame], depth: int, stop: threading.Event,
              threads: list[threading.Thread] | None = None) -> Iterator[Frame]:
    """Run `items` in a thread, `depth` ahead, order preserved, nothing dropped. The thread is
    appended to `threads` so the owner can join it before freeing what it reads from."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    done = threading.Event()
    end = object()

    def put(item: object) -> bool:
        while not (stop.is_set() or done.is_set()):
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def worker() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except Exception as exc:  # surfaced in the consumer, which ends the stream
            put(exc)
        finally:
            put(end)

    t = threading.Thread(target=worker, name="skyloc-reader", daemon=True)
    if threads is not None:
        threads.append(t)
    t.start()
    try:
        while True:
            try:
                item = q.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set() or not t.is_alive() and q.empty():
                    return
                continue
            if item is end:
                return
            if isinstance(item, Exception):
                raise item
            yield item  # type: ignore[misc]
    finally:
        done.set()
        t.join(timeout=2.0)


def natural_key(name: str) -> list:
    """frame2 before frame10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def source_kind(spec: str) -> str:
    """What `open_source` would open: camera, v4l2, network, gstreamer, folder, image, video."""
    s = spec.strip()
    if s.isdigit():
        return "camera"
    if s.startswith("/dev/video"):
        return "v4l2"
    scheme = s.split("://", 1)[0].lower() if "://" in s else ""
    if scheme in NETWORK_SCHEMES:
        return "network"
    if "!" in s:
        return "gstreamer"
    p = Path(s)
    if p.is_dir():
        return "folder"
    if p.is_file():
        return "image" if p.suffix.lower() in IMAGE_EXTS else "video"
    raise SkylocError(f"source {spec!r} not found: give a camera index (0), /dev/videoN, a video file, "
                      "rtsp://..., a GStreamer pipeline (elements joined by '!') or an image folder")


