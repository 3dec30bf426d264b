"""The few EXIF tags a frame source needs (capture time, camera), read from JPEG / TIFF bytes.

A small TIFF-structure reader instead of a dependency: the onboard install has no Pillow, and
only IFD0 and the Exif sub-IFD are read. Malformed EXIF never raises: what cannot be read is
simply absent (a frame without a time is then handled by the source).
"""
from __future__ import annotations

import calendar
import math
import re
import struct
from typing import Any

# tag id -> name, for IFD0 and the Exif sub-IFD
TAGS = {
    0x010F: "Make", 0x0110: "Model", 0x0132: "DateTime",
    0x9003: "DateTimeOriginal", 0x9291: "SubSecTimeOriginal", 0x9011: "OffsetTimeOriginal",
    0x920A: "FocalLength", 0xA405: "FocalLengthIn35mmFilm", 0xA002: "PixelXDimension", 0xA003: "PixelYDimension",
}
_EXIF_IFD = 0x8769
_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1, 9: 4, 10: 8}


def _tiff_segment(data: bytes) -> bytes | None:
    """The TIFF block of the EXIF APP1 segment of a JPEG, or the file itself when it is a TIFF."""
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return data
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xD9, 0xDA):  # end of image / start of scan: no EXIF before the pixels
            return None
        size = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        seg = data[pos + 4:pos + 2 + size]
        if marker == 0xE1 and seg[:6] == b"Exif\x00\x00":
            return seg[6:]
        pos += 2 + size
    return None


def _read_ifd(tiff: bytes, offset: int, bo: str, out: dict[int, Any]) -> None:
    if offset <= 0 or offset + 2 > len(tiff):
        return
    (n,) = struct.unpack(bo + "H", tiff[offset:offset + 2])
    for k in range(min(n, 512)):
        e = offset + 2 + 12 * k
        if e + 12 > len(tiff):
            return
        tag, typ, count = struct.unpack(bo + "HHI", tiff[e:e + 8])
        size = _TYPE_SIZE.get(typ, 0) * count
        if size == 0 or size > 4096:
            continue
        if size <= 4:
            raw = tiff[e + 8:e + 8 + size]
        else:
            (ptr,) = struct.unpack(bo + "I", tiff[e + 8:e + 12])
            raw = tiff[ptr:ptr + size]
        if len(raw) < size:
            continue
        if typ == 2:
            out[tag] = raw.split(b"\x00", 1)[0].decode("ascii", "replace").strip()
        elif typ in (3, 4, 9):
            fmt = {3: "H", 4: "I", 9: "i"}[typ]
            vals = struct.unpack(bo + fmt * count, raw)
            out[tag] = vals[0] if count == 1 else list(vals)
        elif typ in (5, 10):
            fmt = "II" if typ == 5 else "ii"
            num, den = struct.unpack(bo + fmt, raw[:8])
            if den != 0:
                out[tag] = num / den


def read_exif(data: bytes) -> dict[str, Any]:
    """Named tags (see TAGS) of a JPEG / TIFF file's bytes; {} when there is no readable EXIF."""
    try:
        tiff = _tiff_segment(bytes(data[:262144]) if len(data) > 262144 else bytes(data))
        if tiff is None or len(tiff) < 8:
            return {}
        bo = "<" if tiff[:2] == b"II" else ">"
        (ifd0,) = struct.unpack(bo + "I", tiff[4:8])
        raw: dict[int, Any] = {}
        _read_ifd(tiff, ifd0, bo, raw)
        sub = raw.get(_EXIF_IFD)
        if isinstance(sub, int):
            _read_ifd(tiff, sub, bo, raw)
    except (struct.error, ValueError, IndexError):
        return {}
    return {TAGS[t]: v for t, v in raw.items() if t in TAGS}


_DT = re.compile(r"^(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})$")
_OFFSET = re.compile(r"^([+-])(\d{2}):(\d{2})$")


def exif_time(exif: dict[str, Any]) -> tuple[float | None, bool]:
    """(seconds, is_utc) from DateTimeOriginal + SubSecTimeOriginal (+ OffsetTimeOriginal).

    Without an offset the camera's clock is read as if it were UTC (is_utc False): consistent
    within a flight, but not an absolute time. (None, False) when the tag is absent or invalid.
    """
    m = _DT.match(str(exif.get("DateTimeOriginal", "")).strip())
    if not m:
        return None, False
    y, mo, d, h, mi, s = (int(g) for g in m.groups())
    if not (1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60 and s < 61 and y >= 1970):
        return None, False
    t = float(calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)))
    sub = str(exif.get("SubSecTimeOriginal", "")).strip()
    if sub.isdigit():
        t += int(sub) / 10 ** len(sub)
    off = _OFFSET.match(str(exif.get("OffsetTimeOriginal", "")).strip())
    if off:
        sign = 1 if off.group(1) == "+" else -1
        t -= sign * (int(off.group(2)) * 3600 + int(off.group(3)) * 60)
    return (t, bool(off)) if math.isfinite(t) else (None, False)
