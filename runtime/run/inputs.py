"""The run's inputs besides model, tile set and source: camera model, map imagery, pose source.

Opened by runtime/loop.run before any output; each refuses bad input with a SkylocError.
"""
from __future__ import annotations

from typing import Any, Sequence

from skyloc.runtime.sources.base import Frame, FrameSource
from skyloc.runtime.maps.tileset import TileSet


def open_camera(opt: Any) -> Any:
    """--camera FILE, else an ideal camera from --hfov, else None (EXIF per frame, or nadir fallback)."""
    from skyloc.runtime.pose.camera import CameraModel, load_camera

    if opt.camera is not None:
        return load_camera(opt.camera)
    if opt.hfov is not None:
        return _HfovCamera(opt.hfov, CameraModel)
    return None


class _HfovCamera:
    """--hfov without a resolution: the ideal camera for whatever size the frames have."""

    def __init__(self, hfov_deg: float, cls: Any) -> None:
        self.hfov_deg, self._cls = hfov_deg, cls
        cls.from_hfov(hfov_deg, 640, 480)  # validates the angle now, before any output opens

    def scaled_to(self, width: int, height: int) -> Any:
        return self._cls.from_hfov(self.hfov_deg, width, height)


def open_imagery(ts: TileSet, opt: Any) -> Any:
    """--imagery, else the imagery the tile set records (checksum-checked); None: retrieval only."""
    from skyloc.runtime.maps.imagery import MapImagery

    if opt.imagery:
        return MapImagery(opt.imagery)
    return MapImagery.for_tileset(ts.path, ts.meta)


def check_coverage(ts: TileSet, opt: Any, cam: Any, poses: Any) -> None:
    """Refuse a tile set whose tiles no frame can cover (every frame would be skipped as
    no-coverage); warn when only part of the altitudes is served (runtime.maps.coverage)."""
    import logging

    from skyloc.runtime.maps.coverage import check_run_coverage

    warning = check_run_coverage(ts, opt, cam, poses)
    if warning:
        logging.getLogger(__name__).warning("%s", warning)


class Poses:
    """The run's pose source: each field from the first source that has it: --telemetry CSV (joined
    on time), MAVLink telemetry (when --mavlink), the image files' EXIF/DJI XMP (image folders),
    then the fixed flags; --no-heading drops every heading. Also the camera from EXIF when no
    --camera / --hfov is given."""

    def __init__(self, opt: Any, source_kind: str) -> None:
        from skyloc.runtime.pose import sources as ps

        chain: list[Any] = []
        self.telemetry = ps.TelemetryCsvPose(opt.telemetry) if opt.telemetry else None
        if self.telemetry is not None:
            chain.append(self.telemetry)
        self.mavlink = ps.MavlinkPoseListener() if opt.mavlink else None
        if self.mavlink is not None:
            chain.append(self.mavlink)
        self.exif = ps.ExifPose() if source_kind in ("folder", "image") else None
        if self.exif is not None:
            chain.append(self.exif)
        chain.append(ps.FlagPose(opt.altitude, opt.roll, opt.pitch, opt.yaw,
                                 opt.camera_tilt if opt.camera_tilt else None, opt.gsd))
        self.chain = ps.ChainPose(chain, no_heading=not opt.use_heading)

    @property
    def problems(self) -> list[str]:
        """Telemetry rows that were skipped (bad or non-finite cells), file:line and why."""
        return list(self.telemetry.problems) if self.telemetry is not None else []

    def pose_for(self, frame_time_s: float, frame_meta: dict[str, Any]) -> Any:
        return self.chain.pose_for(frame_time_s, frame_meta)

    def camera_for(self, frame: Frame) -> Any:
        if self.exif is None or frame.image is None or not frame.meta.get("path"):
            return None
        h, w = frame.image.shape[:2]
        return self.exif.camera_for(frame.meta, w, h)

    def attach(self, outputs: Sequence[Any]) -> None:
        """MAVLink outputs own the link: they hand every received message to our listener."""
        if self.mavlink is None:
            return
        for o in outputs:
            if hasattr(o, "add_listener"):
                o.add_listener(self.mavlink.feed)


def open_pose_source(opt: Any, source: str | FrameSource) -> Poses:
    """Poses for a source spec or an open source (EXIF is read only from image files)."""
    from skyloc.runtime.sources.files import ImageFolderSource
    from skyloc.runtime.sources.base import source_kind

    if isinstance(source, FrameSource):
        return Poses(opt, "folder" if isinstance(source, ImageFolderSource) else "stream")
    return Poses(opt, source_kind(str(source)))
