"""Live frame sources: camera / V4L2, network streams, GStreamer pipelines, or a file forced live.

A grab thread reads as fast as the source delivers and keeps only the *latest* frame, so a
slow model never works on stale images; the consumer takes whatever is newest (frames it
never saw are counted as dropped). When the source stops giving frames the thread reopens it
with bounded exponential back-off (ReconnectPolicy). With `reuse_buffers` three image buffers
rotate (the one being written, the latest published, the one the consumer holds), so a 1080p
stream does not allocate a new frame per grab.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from typing import Iterator

import cv2
import numpy as np

from skyloc.core.errors import SkylocError
from skyloc.runtime.sources.base import Frame, FrameSource, ReconnectPolicy

log = logging.getLogger(__name__)


def _has_gstreamer() -> bool:
    info = cv2.getBuildInformation()
    m = re.search(r"GStreamer:\s*(\S+)", info)
    return bool(m and m.group(1).upper().startswith("YES"))


class LiveSource(FrameSource):
    """Camera / stream / pipeline with a grab thread keeping only the latest frame."""

    live = True

    def __init__(self, spec: str, kind: str, reconnect: ReconnectPolicy | None = None,
                 reuse_buffers: bool = False) -> None:
        super().__init__(spec)
        self.kind = kind  # "camera" | "v4l2" | "network" | "gstreamer" | "file"
        self.policy = reconnect or ReconnectPolicy()
        if kind == "gstreamer" and not _has_gstreamer():
            raise SkylocError(f"source {spec!r} is a GStreamer pipeline but this OpenCV was built without "
                              "GStreamer; on Jetson use the JetPack OpenCV (python3-opencv), or give a "
                              "camera index / video file instead")
        self._cond = threading.Condition()
        self._latest: tuple[int, float, int, float] | None = None  # (seq, time, pool slot, wall clock)
        self._held = -1  # pool slot the consumer is using
        self._pool: list[np.ndarray | None] = [None, None, None]
        self._reuse = reuse_buffers
        self._ended = False
        self._t0 = time.monotonic()
        self._thread: threading.Thread | None = None
        self._cap = self._open()  # first attempt now, so a bad spec shows up before the loop starts
        if self._cap is None:
            log.warning("source %s did not open; will retry with back-off", spec)

    def _open(self) -> cv2.VideoCapture | None:
        spec = self.name
        try:
            if self.kind == "camera":
                cap = cv2.VideoCapture(int(spec))
            elif self.kind == "v4l2":
                cap = cv2.VideoCapture(spec, cv2.CAP_V4L2)
            elif self.kind == "gstreamer":
                cap = cv2.VideoCapture(spec, cv2.CAP_GSTREAMER)
            elif self.kind == "network":
                params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.policy.open_timeout_s * 1000),
                          cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.policy.read_timeout_s * 1000)]
                cap = cv2.VideoCapture(spec, cv2.CAP_FFMPEG, params)
            else:
                cap = cv2.VideoCapture(spec)
        except cv2.error as exc:
            log.warning("opening %s failed: %s", spec, exc)
            return None
        if not cap.isOpened():
            cap.release()
            return None
        if self.kind in ("camera", "v4l2"):
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # no driver queue of stale frames
        return cap

    def _grab_loop(self) -> None:
        attempts = 0  # reopen attempts since the last good frame
        seq = 0
        slot = 0
        try:
            while not self._stop.is_set():
                cap = self._cap
                if cap is not None:
                    try:
                        buf = self._pool[slot] if self._reuse else None
                        ok, img = cap.read(buf) if buf is not None else cap.read()
                    except cv2.error:
                        ok, img = False, None
                    if ok and img is not None:
                        attempts = 0
                        seq += 1
                        self.stats.grabbed += 1
                        wall = time.time()
                        with self._cond:
                            # the buffer may come back another size (a camera reopened at another
                            # resolution): nothing here assumes the first frame's size
                            self._pool[slot] = img
                            self._latest = (seq, time.monotonic() - self._t0, slot, wall)
                            self._cond.notify_all()
                            # next slot: neither the one just published nor the consumer's
                            slot = next(s for s in range(3) if s != slot and s != self._held)
                        continue
                    cap.release()
                    self._cap = None
                    self.stats.disconnects += 1
                    log.warning("source %s stopped giving frames; reopening", self.name)
                if self.policy.max_attempts is not None and attempts >= self.policy.max_attempts:
                    log.error("source %s: giving up after %d reopen attempts", self.name, attempts)
                    return
                attempts += 1
                delay = self.policy.delay(attempts)
                self.stats.backoff_s = (self.stats.backoff_s + [delay])[-100:]
                if self._stop.wait(delay):
                    return
                self.stats.reopens += 1
                self._cap = self._open()
                if self._cap is None:
                    self.stats.reopen_failures += 1
                else:
                    log.info("source %s reopened", self.name)
        except Exception as exc:  # a bug here must end the stream loudly, never silently
            log.exception("source %s: grab thread failed", self.name)
            self.stats.error = f"{type(exc).__name__}: {exc}"
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def __iter__(self) -> Iterator[Frame]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._grab_loop, name="skyloc-grab", daemon=True)
            self._thread.start()
        last = 0
        index = 0
        while True:
            with self._cond:
                self._held = -1
                while not self._stop.is_set() and not self._ended and (self._latest is None or self._latest[0] == last):
                    self._cond.wait(0.1)
                if self._stop.is_set() or self._latest is None or self._latest[0] == last:
                    return
                seq, t, slot, wall = self._latest
                self.stats.dropped += seq - last - 1
                last = seq
                self._held = slot
                img = self._pool[slot]
            self.stats.frames += 1
            yield Frame(index, t, img, self.name, None,
                        {"source": self.name, "kind": self.kind, "time_from": "clock",
                         "reopens": self.stats.reopens}, wall)
            index += 1

    def close(self) -> None:
        super().close()
        if self._thread is not None:
            self._thread.join(timeout=max(2.0, self.policy.read_timeout_s + 1.0))
            if self._thread.is_alive():  # stuck in a driver read: releasing under it could crash
                log.warning("source %s: grab thread did not stop; leaving the capture to the OS", self.name)
                return
        if self._cap is not None:
            self._cap.release()
            self._cap = None
