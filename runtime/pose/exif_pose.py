"""Frame pose and camera from an image file's EXIF and DJI XMP (runtime.pose_sources.ExifPose).

The XMP packet is plain XML inside the JPEG; a regex reads the drone-dji:* properties without an
XML parser or a new dependency.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import os
import re

from skyloc.runtime.pose.camera import CameraModel
from skyloc.core.errors import SkylocError
from skyloc.runtime.sources.exif import read_exif
from skyloc.runtime.pose.frame_pose import MAX_TILT_DEG, PoseSource
from skyloc.runtime.pose.frame_pose import PoseValues as Values

_XMP_ATTR = re.compile(rb'drone-dji:(\w+)\s*=\s*"([^"]*)"')
_XMP_ELEM = re.compile(rb"<drone-dji:(\w+)>([^<]*)</drone-dji:\1>")


def read_dji_xmp(data: bytes) -> dict[str, str]:
    """drone-dji:* properties of the XMP packet in a JPEG's bytes (attribute or element form).

    The packet is plain XML in an APP1 segment; a regex reads it without an XML parser (no entity
    expansion on untrusted files). Empty when there is none.
    """
    start = data.find(b"<x:xmpmeta")
    if start < 0:
        return {}
    end = data.find(b"</x:xmpmeta>", start)
    packet = data[start:end if end > 0 else start + 65536]
    out = {k.decode("ascii"): v.decode("utf-8", "replace").strip() for k, v in _XMP_ATTR.findall(packet)}
    out.update({k.decode("ascii"): v.decode("utf-8", "replace").strip() for k, v in _XMP_ELEM.findall(packet)})
    return out


def _num(d: dict[str, Any], key: str) -> float | None:
    try:
        v = float(d[key])
    except (KeyError, TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class ExifPose(PoseSource):
    """Pose from the image file's DJI XMP: RelativeAltitude (above the take-off point: the ground
    there is assumed level with the ground below), GimbalPitchDegree (-90 = nadir -> tilt 0),
    GimbalYawDegree (camera heading; FlightYawDegree when absent). Reads frame_meta["path"]."""

    name = "exif"

    def __init__(self, head_bytes: int = 1 << 20) -> None:
        self.head_bytes = head_bytes
        self._cache: dict[str, tuple[dict[str, str], dict[str, Any]]] = {}
        self.problems: list[str] = []

    def tags(self, path: str | os.PathLike) -> tuple[dict[str, str], dict[str, Any]]:
        """(DJI XMP properties, EXIF tags) of an image file, cached."""
        key = str(path)
        if key not in self._cache:
            try:
                with open(key, "rb") as f:
                    data = f.read(self.head_bytes)
            except OSError as exc:
                raise SkylocError(f"pose from EXIF: cannot read {key}: {exc}") from None
            if len(self._cache) > 64:  # a folder is read in order: old entries are not needed again
                self._cache.clear()
            self._cache[key] = (read_dji_xmp(data), read_exif(data[:262144]))
        return self._cache[key]

    def values_for(self, frame_time_s: float, frame_meta: dict[str, Any]) -> Values:
        path = frame_meta.get("path")
        if not path:
            return {}
        xmp, _ = self.tags(path)
        out: Values = {}
        alt = _num(xmp, "RelativeAltitude")
        if alt is not None and alt > 0:
            out["altitude_m"] = alt
        elif alt is not None:
            self.problems.append(f"{Path(path).name}: RelativeAltitude {alt} m is not above ground; ignored")
        gp = _num(xmp, "GimbalPitchDegree")
        if gp is not None:
            # within a degree past nadir counts as nadir (gimbal noise)
            tilt = 0.0 if -91.0 <= gp <= -90.0 else 90.0 + gp
            if 0.0 <= tilt <= MAX_TILT_DEG:
                out.update(camera_tilt_deg=tilt, roll_deg=0.0, pitch_deg=0.0)
            else:
                self.problems.append(f"{Path(path).name}: GimbalPitchDegree {gp} is more than {MAX_TILT_DEG:g} "
                                     "deg from nadir; not usable for a ground fix")
        yaw = _num(xmp, "GimbalYawDegree")
        yaw = yaw if yaw is not None else _num(xmp, "FlightYawDegree")
        if yaw is not None:
            out["yaw_deg"] = yaw % 360.0
        return out

    def camera_for(self, frame_meta: dict[str, Any], width: int, height: int) -> CameraModel | None:
        """Intrinsics from the file when no camera file is given: DJI DewarpData (fx, fy, centre
        offsets, k1 k2 p1 p2 k3), else CalibratedFocalLength, else FocalLengthIn35mmFilm."""
        path = frame_meta.get("path")
        if not path:
            return None
        xmp, exif = self.tags(path)
        dew = [s.strip() for s in xmp.get("DewarpData", "").split(";")[-1].split(",")]
        try:
            fx, fy, dx, dy, k1, k2, p1, p2, k3 = (float(v) for v in dew)
            return CameraModel(fx, fy, width / 2 + dx, height / 2 + dy, width, height,  # as DJI's K.txt
                               (k1, k2, p1, p2, k3))
        except (ValueError, SkylocError):
            pass
        f = _num(xmp, "CalibratedFocalLength")
        cx, cy = _num(xmp, "CalibratedOpticalCenterX"), _num(xmp, "CalibratedOpticalCenterY")
        if f and f > 0 and cx is not None and cy is not None and 0 < cx < width and 0 < cy < height:
            return CameraModel(f, f, cx, cy, width, height)
        f35 = _num(exif, "FocalLengthIn35mmFilm")
        if f35 and f35 > 0:
            return CameraModel.from_focal_35mm(f35, width, height)
        return None
