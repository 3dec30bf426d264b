"""`open_source`: the frame source a spec string names (camera, stream, video file, image folder)."""
from __future__ import annotations

from pathlib import Path

from skyloc.core.errors import SkylocError
from skyloc.runtime.sources.base import FrameSource, ReconnectPolicy, source_kind
from skyloc.runtime.sources.files import ImageFolderSource, VideoFileSource, check_fps
from skyloc.runtime.sources.live import LiveSource


def open_source(spec: str, *, live: bool | None = None, fps: float | None = None,
                reconnect: ReconnectPolicy | None = None, reuse_buffers: bool = False,
                prefetch: int = 2) -> FrameSource:
    """Open a frame source from a spec string (see `source_kind`).

    `live=True` opens a video file like a camera (latest frame only, reopened when it ends:
    handy to replay a flight in real time); `fps` sets the time step of image folders
    (default 1 s) and of videos whose header has no frame rate. With `reuse_buffers` an
    image is valid only until the next frame is requested (the run loop uses this).
    """

    kind = source_kind(spec)
    if kind in ("camera", "v4l2", "network", "gstreamer"):
        return LiveSource(spec.strip(), kind, reconnect, reuse_buffers)
    if kind == "folder":
        if live:
            raise SkylocError(f"source {spec!r} is an image folder; it cannot be opened as a live source")
        return ImageFolderSource(spec, fps=check_fps(fps, 1.0), prefetch=prefetch)
    if kind == "image":
        return ImageFolderSource(spec, fps=check_fps(fps, 1.0), prefetch=prefetch, files=[Path(spec)])
    if live:
        return LiveSource(spec, "file", reconnect, reuse_buffers)
    return VideoFileSource(spec, fps=fps, prefetch=prefetch, reuse_buffers=reuse_buffers)
