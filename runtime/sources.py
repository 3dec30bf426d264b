"""Frame sources: camera / V4L2, RTSP and other network streams, GStreamer pipelines, video
files and image folders, behind one iterator of `Frame`s.

Two behaviours on purpose:
- files (video, image folder) are read in order and never drop a frame; a reader thread
  decodes a couple of frames ahead so decoding overlaps inference;
- live sources (camera, network stream, GStreamer, or a file forced live) have a grab thread
  that keeps only the *latest* frame, so a slow model never works on stale images, and that
  reopens a source that drops, with bounded exponential back-off (runtime/live_source.py).

Images are BGR uint8 as OpenCV gives them. Image files are decoded with IMREAD_ANYCOLOR,
which applies the EXIF orientation (phone / drone JPEGs) and keeps a grayscale file 2-D so
the loop can skip it as "grayscale" instead of silently converting it.
"""
from __future__ import annotations

import os
import queue
import re
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from skyloc.runtime.errors import SkylocError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")


@dataclass
class Frame:
    index: int  # position in this run's stream (0, 1, 2...; files: no gaps)
    time_s: float  # files: index / fps; live: seconds since the source opened
    image: np.ndarray | None  # BGR uint8, or None when it could not be decoded (see `error`)
    source_name: str  # file name for folders, else the source spec
    error: str | None = None  # "empty" | "corrupt" | "unreadable" when image is None


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

    def delay(self, attempt: int) -> float:
        return min(self.max_s, self.initial_s * self.factor ** max(0, attempt - 1))


@dataclass
class SourceStats:
    frames: int = 0  # delivered to the consumer
    grabbed: int = 0  # live: read from the device
    dropped: int = 0  # live: grabbed but replaced by a newer frame before being consumed
    disconnects: int = 0  # live: the source stopped giving frames
    reopens: int = 0  # live: reopen attempts
    reopen_failures: int = 0
    backoff_s: list[float] = field(default_factory=list)  # delays slept before reopen attempts (last 100)


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


def decode_image(path: Path) -> tuple[np.ndarray | None, str | None]:
    """(BGR or 2-D gray image, None) or (None, reason). EXIF orientation applied."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None, "unreadable"
    if data.size == 0:
        return None, "empty"
    try:
        img = cv2.imdecode(data, cv2.IMREAD_ANYCOLOR)
    except cv2.error:
        img = None
    return (None, "corrupt") if img is None else (img, None)


class ImageFolderSource(FrameSource):
    def __init__(self, path: str | os.PathLike, fps: float = 1.0, prefetch: int = 2,
                 files: list[Path] | None = None) -> None:
        super().__init__(str(path))
        root = Path(path)
        if files is None:
            files = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
            files.sort(key=lambda p: natural_key(p.name))
        if not files:
            raise SkylocError(f"image folder {root} has no images ({', '.join(IMAGE_EXTS)})")
        self.files = files
        self.fps = fps if fps and fps > 0 else 1.0
        self.prefetch = prefetch

    def _read(self) -> Iterator[Frame]:
        for i, p in enumerate(self.files):
            if self._stop.is_set():
                return
            img, err = decode_image(p)
            yield Frame(i, i / self.fps, img, p.name, err)

    def __iter__(self) -> Iterator[Frame]:
        for frame in _prefetch(self._read(), self.prefetch, self._stop):
            self.stats.frames += 1
            yield frame


class VideoFileSource(FrameSource):
    """A video file read frame by frame; buffers are recycled when `reuse_buffers` (then an
    image is valid only until the next frame is asked for)."""

    def __init__(self, path: str | os.PathLike, fps: float | None = None, prefetch: int = 2,
                 reuse_buffers: bool = False) -> None:
        super().__init__(str(path))
        self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            raise SkylocError(f"video {path} cannot be opened by OpenCV (not a video, or a codec "
                              "this OpenCV lacks); convert it to H.264 MP4 or extract frames to a folder")
        native = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and fps > 0 else (native if native and native > 0 else 30.0)
        self.prefetch = prefetch
        self._pool: list[np.ndarray | None] = [None] * (prefetch + 2) if reuse_buffers else []
        self._threads: list[threading.Thread] = []

    def _read(self) -> Iterator[Frame]:
        name = Path(self.name).name
        i = 0
        while not self._stop.is_set():
            slot = i % len(self._pool) if self._pool else -1
            ok, img = self.cap.read(self._pool[slot]) if slot >= 0 and self._pool[slot] is not None else self.cap.read()
            if not ok or img is None:
                return
            if slot >= 0:
                self._pool[slot] = img
            yield Frame(i, i / self.fps, img, name)
            i += 1

    def __iter__(self) -> Iterator[Frame]:
        for frame in _prefetch(self._read(), self.prefetch, self._stop, self._threads):
            self.stats.frames += 1
            yield frame

    def close(self) -> None:
        super().close()
        for t in self._threads:  # never release the capture under a reader still using it
            t.join(timeout=5.0)
        self.cap.release()


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


def open_source(spec: str, *, live: bool | None = None, fps: float | None = None,
                reconnect: ReconnectPolicy | None = None, reuse_buffers: bool = False,
                prefetch: int = 2) -> FrameSource:
    """Open a frame source from a spec string (see `source_kind`).

    `live=True` opens a video file like a camera (latest frame only, reopened when it ends:
    handy to replay a flight in real time); `fps` sets the time step of image folders
    (default 1 s) and of videos whose header has no frame rate. With `reuse_buffers` an
    image is valid only until the next frame is requested (the run loop uses this).
    """
    from skyloc.runtime.live_source import LiveSource  # it builds on the classes above

    kind = source_kind(spec)
    if kind in ("camera", "v4l2", "network", "gstreamer"):
        return LiveSource(spec.strip(), kind, reconnect, reuse_buffers)
    if kind == "folder":
        if live:
            raise SkylocError(f"source {spec!r} is an image folder; it cannot be opened as a live source")
        return ImageFolderSource(spec, fps=fps or 1.0, prefetch=prefetch)
    if kind == "image":
        return ImageFolderSource(spec, fps=fps or 1.0, prefetch=prefetch, files=[Path(spec)])
    if live:
        return LiveSource(spec, "file", reconnect, reuse_buffers)
    return VideoFileSource(spec, fps=fps, prefetch=prefetch, reuse_buffers=reuse_buffers)

