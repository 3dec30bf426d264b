"""File frame sources: image folders and video files (see runtime/sources/base.py for the interface).

Both are read in order and never drop a frame; a reader thread decodes a couple of frames
ahead so decoding overlaps inference. Image files are decoded with IMREAD_ANYCOLOR, which
applies the EXIF orientation (phone / drone JPEGs) and keeps a grayscale file 2-D so the loop
can skip it as "grayscale" instead of silently converting it. How frames are numbered and
timed: see `Frame`.
"""
from __future__ import annotations

import math
import os
import re
import threading
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from skyloc.core.errors import SkylocError
from skyloc.runtime.sources.exif import exif_time, read_exif
from skyloc.runtime.sources.base import IMAGE_EXTS, Frame, FrameSource, _prefetch, natural_key


def read_frame_file(path: Path) -> tuple[np.ndarray | None, str | None, dict[str, Any]]:
    """(BGR or 2-D gray image | None, error reason | None, EXIF tags). EXIF orientation applied."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None, "unreadable", {}
    if data.size == 0:
        return None, "empty", {}
    exif = read_exif(data[:262144].tobytes())
    try:
        img = cv2.imdecode(data, cv2.IMREAD_ANYCOLOR)
    except cv2.error:
        img = None
    return (None, "corrupt", exif) if img is None else (img, None, exif)


def decode_image(path: Path) -> tuple[np.ndarray | None, str | None]:
    """(BGR or 2-D gray image, None) or (None, reason). EXIF orientation applied."""
    img, err, _ = read_frame_file(path)
    return img, err


def check_fps(fps: float | None, default: float | None) -> float | None:
    """A frame rate from a flag: None -> default; anything but a finite number > 0 is refused."""
    if fps is None:
        return default
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise SkylocError(f"--fps {fps!r} must be a finite number of frames per second > 0")
    return float(fps)


def name_indices(files: list[Path]) -> list[int] | None:
    """Frame numbers from the last digit group of each file name, when every name has one and
    they rise strictly in the folder's order; else None (then positions are used)."""
    out = []
    for p in files:
        groups = re.findall(r"\d+", p.stem)
        if not groups:
            return None
        out.append(int(groups[-1]))
    return out if all(b > a for a, b in zip(out, out[1:])) else None


class ImageFolderSource(FrameSource):
    """Image files in natural order, never dropped; numbered and timed as `Frame` explains."""

    def __init__(self, path: str | os.PathLike, fps: float | None = 1.0, prefetch: int = 2,
                 files: list[Path] | None = None) -> None:
        super().__init__(str(path))
        root = Path(path)
        if files is None:
            try:
                files = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
            except OSError as exc:
                raise SkylocError(f"image folder {root} cannot be listed: {exc}") from None
            files.sort(key=lambda p: natural_key(p.name))
        if not files:
            raise SkylocError(f"image folder {root} has no images ({', '.join(IMAGE_EXTS)})")
        self.files = files
        self.fps = check_fps(fps, 1.0)
        self.prefetch = prefetch
        named = name_indices(files)
        self.indices = named if named is not None else list(range(len(files)))
        self.index_from = "name" if named is not None else "position"
        # one time base for the whole folder, from the first image: mixing camera-clock and
        # frame-number times would make speeds meaningless
        first = read_exif(_head(files[0]))
        self.time_from = "exif" if exif_time(first)[0] is not None else self.index_from

    def _read(self) -> Iterator[Frame]:
        last_t = None
        for i, p in zip(self.indices, self.files):
            if self._stop.is_set():
                return
            img, err, exif = read_frame_file(p)
            meta = {"file": p.name, "path": str(p), "exif": exif, "time_from": self.time_from}
            t, unix = i / self.fps, None
            if self.time_from == "exif":
                t_exif, is_utc = exif_time(exif)
                if t_exif is None:  # no usable time: the frame cannot be placed on the clock
                    t, err = (last_t if last_t is not None else 0.0), err or "no-time"
                else:
                    t, last_t = t_exif, t_exif
                    unix = t_exif if is_utc else None
            yield Frame(i, t, img, p.name, err, meta, unix)

    def __iter__(self) -> Iterator[Frame]:
        for frame in _prefetch(self._read(), self.prefetch, self._stop):
            self.stats.frames += 1
            yield frame


def _head(path: Path, n: int = 262144) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


class VideoFileSource(FrameSource):
    """A video file read frame by frame; buffers are recycled when `reuse_buffers` (then an
    image is valid only until the next frame is asked for).

    A frame the decoder cannot read is delivered as an error frame ("corrupt", image None) and
    reading goes on; only `max_bad_frames` failures in a row (or the container's frame count)
    end the file. Failures are held back until a good frame follows, so the end of a file
    (where every read fails) adds no error frames.
    """

    def __init__(self, path: str | os.PathLike, fps: float | None = None, prefetch: int = 2,
                 reuse_buffers: bool = False, max_bad_frames: int = 100) -> None:
        super().__init__(str(path))
        fps = check_fps(fps, None)
        self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            raise SkylocError(f"video {path} cannot be opened by OpenCV (not a video, or a codec "
                              "this OpenCV lacks); convert it to H.264 MP4 or extract frames to a folder")
        native = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps or (native if math.isfinite(native) and native > 0 else 30.0)
        count = self.cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if math.isfinite(count) and count > 0 else None
        self.prefetch = prefetch
        self.max_bad_frames = max(1, int(max_bad_frames))
        self.bad_frames = 0  # undecodable frames skipped (delivered as errors)
        self._pool: list[np.ndarray | None] = [None] * (prefetch + 2) if reuse_buffers else []
        self._threads: list[threading.Thread] = []

    def _read(self) -> Iterator[Frame]:
        name = Path(self.name).name
        meta = {"file": name, "path": self.name}
        i = 0  # frame slot in the file: a failed read uses one too
        last_t: float | None = None
        pending: list[int] = []  # failed slots, delivered once a good frame shows they were not the end
        while not self._stop.is_set():
            if self.frame_count is not None and i >= self.frame_count + self.max_bad_frames:
                return
            slot = i % len(self._pool) if self._pool else -1
            try:
                buf = self._pool[slot] if slot >= 0 else None
                ok, img = self.cap.read(buf) if buf is not None else self.cap.read()
            except cv2.error:
                ok, img = False, None
            if not ok or img is None:
                pending.append(i)
                i += 1
                if len(pending) >= self.max_bad_frames:
                    return
                continue
            if slot >= 0:
                self._pool[slot] = img
            ms = self.cap.get(cv2.CAP_PROP_POS_MSEC)
            t_container = ms / 1000.0 if math.isfinite(ms) and ms >= 0 else None
            t, time_from = (t_container, "container") if t_container is not None and (
                last_t is None or t_container > last_t) else (i / self.fps, "position")
            for j in pending:
                self.bad_frames += 1
                yield Frame(j, j / self.fps, None, name, "corrupt", {**meta, "time_from": "position"})
            pending = []
            last_t = t
            yield Frame(i, t, img, name, None, {**meta, "time_from": time_from})
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
