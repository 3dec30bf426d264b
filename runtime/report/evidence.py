"""Registration evidence, one small PNG per positioned frame (`skyloc run --evidence DIR`), and the
report's sheet of them (`skyloc report --evidence DIR`).

Each image shows, left to right: the frame as the camera saw it; the frame warped onto the ground
north-up with the fix's heading, scale level and the run's pose (the patch the registrar matched);
the map imagery at the ground point the fix claims (same size and resolution: the two should look
alike); and the match surface: normalized cross-correlation of the patch's gradient magnitude
(the NCC registrar's feature) over the map around that point, +-half a patch each way. The cross
marks the claimed place, the circle the surface's peak: a peak on the cross, clearly above the rest
of the surface, is the evidence; a flat surface or a peak elsewhere says the fix is not what it
claims. The surface is recomputed here from the frame and the map, independently of the
registrar's own search, so it checks the record rather than repeating it. The border has the
frame's state colour (pictures.STATE_COLOURS).
"""
from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from skyloc.core.atomic import write_bytes_atomic
from skyloc.core.errors import SkylocError
from skyloc.runtime.report.frames import frame_state
from skyloc.runtime.report.pictures import STATE_COLOURS

log = logging.getLogger(__name__)

PANEL_PX = 160  # side of each panel of an evidence image
SURFACE_PX = 48  # the patch side the match surface is computed at (cheap: ~2 ms a frame)
HEADER_PX, FOOTER_PX, BORDER_PX = 24, 22, 4
NAME = re.compile(r"^frame-(\d{6,})\.png$")


def evidence_name(frame: int) -> str:
    return f"frame-{int(frame):06d}.png"


def evidence_files(folder: str | os.PathLike) -> dict[int, Path]:
    """frame -> evidence PNG in folder (files of other names are not ours and are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {int(m.group(1)): p for p in sorted(folder.iterdir()) if (m := NAME.match(p.name))}


def match_surface(patch_rgb: np.ndarray, patch_valid: np.ndarray, map_rgb: np.ndarray) -> np.ndarray:
    """NCC (TM_CCOEFF_NORMED, the patch's valid mask) of the patch's gradient magnitude over every
    shift inside map_rgb (larger than the patch): a (M - P + 1) square surface, centre = no shift."""
    from skyloc.runtime.register.base import gradient_magnitude, to_gray

    tpl = gradient_magnitude(to_gray(patch_rgb))
    img = gradient_magnitude(to_gray(map_rgb))
    mask = patch_valid.astype(np.float32)
    if mask.sum() < 0.25 * mask.size or float(tpl[patch_valid].std()) < 1e-6:
        return np.full((img.shape[0] - tpl.shape[0] + 1, img.shape[1] - tpl.shape[1] + 1), np.nan, np.float32)
    res = cv2.matchTemplate(img, tpl, cv2.TM_CCOEFF_NORMED, mask=mask)
    return np.where(np.isfinite(res), res, np.nan).astype(np.float32)


def surface_peak(res: np.ndarray, mpp: float) -> dict[str, float] | None:
    """The surface's peak value and its distance from the centre (the claimed place), metres."""
    if not np.isfinite(res).any():
        return None
    y, x = np.unravel_index(int(np.nanargmax(res)), res.shape)
    cy, cx = (res.shape[0] - 1) / 2, (res.shape[1] - 1) / 2
    return {"peak": float(res[y, x]), "east_m": float((x - cx) * mpp), "north_m": float((cy - y) * mpp),
            "off_m": float(math.hypot(x - cx, y - cy) * mpp)}


def _panel(img: np.ndarray, label: str) -> np.ndarray:
    out = np.full((PANEL_PX + 18, PANEL_PX, 3), 255, np.uint8)
    h, w = img.shape[:2]
    s = PANEL_PX / max(h, w)
    small = cv2.resize(img, (max(1, int(round(w * s))), max(1, int(round(h * s)))), interpolation=cv2.INTER_AREA)
    y0, x0 = (PANEL_PX - small.shape[0]) // 2, (PANEL_PX - small.shape[1]) // 2
    out[y0:y0 + small.shape[0], x0:x0 + small.shape[1]] = small
    cv2.putText(out, label, (3, PANEL_PX + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def _surface_picture(res: np.ndarray) -> np.ndarray:
    v = np.nan_to_num(res, nan=-1.0)
    lo, hi = float(np.percentile(v, 5)), float(v.max())
    grey = np.clip((v - lo) / (hi - lo + 1e-9) * 255, 0, 255).astype(np.uint8)
    pic = cv2.resize(cv2.applyColorMap(grey, cv2.COLORMAP_JET), (PANEL_PX, PANEL_PX), interpolation=cv2.INTER_NEAREST)
    c = PANEL_PX // 2
    cv2.drawMarker(pic, (c, c), (255, 255, 255), cv2.MARKER_CROSS, 18, 2)
    if np.isfinite(res).any():
        y, x = np.unravel_index(int(np.nanargmax(res)), res.shape)
        s = PANEL_PX / res.shape[0]
        cv2.circle(pic, (int((x + 0.5) * s), int((y + 0.5) * s)), 7, (255, 255, 255), 2, cv2.LINE_AA)
    return pic


def compose(rec: dict[str, Any], frame_bgr: np.ndarray, patch_bgr: np.ndarray | None, map_bgr: np.ndarray | None,
            surface: np.ndarray | None, check: dict[str, float] | None) -> np.ndarray:
    """The evidence image of one record (BGR)."""
    blank = np.full((PANEL_PX, PANEL_PX, 3), 200, np.uint8)
    panels = [_panel(frame_bgr, "frame"),
              _panel(patch_bgr if patch_bgr is not None else blank, "on the ground, north-up"),
              _panel(map_bgr if map_bgr is not None else blank, "map at the fix" if map_bgr is not None
                     else "no map imagery"),
              _panel(_surface_picture(surface) if surface is not None else blank, "match surface")]
    body = np.concatenate([np.pad(p, ((0, 0), (0, 4), (0, 0)), constant_values=255) for p in panels], axis=1)
    W = body.shape[1] + 2 * BORDER_PX
    img = np.full((body.shape[0] + HEADER_PX + FOOTER_PX + 2 * BORDER_PX, W, 3), 255, np.uint8)
    colour = STATE_COLOURS[frame_state(rec)]
    cv2.rectangle(img, (0, 0), (W - 1, img.shape[0] - 1), colour, BORDER_PX * 2)
    img[BORDER_PX + HEADER_PX:BORDER_PX + HEADER_PX + body.shape[0], BORDER_PX:BORDER_PX + body.shape[1]] = body
    reg = rec.get("registration") or {}
    head = (f"frame {rec['frame']}  t {rec['time_s']:g} s  {frame_state(rec)}"
            + (f" ({rec['reason']})" if rec.get("reason") else "")
            + (f"  acc {rec['accuracy_m']:.1f} m" if rec.get("accuracy_m") is not None else ""))
    foot = (f"{reg.get('method', 'retrieval only')} score {reg.get('score', float('nan')):.2f}"
            f"  heading {rec.get('heading_deg', float('nan')):.0f} ({rec.get('heading_source')})")
    if check is not None:
        foot += f"  | surface peak {check['peak']:.2f}, {check['off_m']:.1f} m from the fix"
    cv2.putText(img, head, (BORDER_PX + 4, BORDER_PX + 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, foot, (BORDER_PX + 4, img.shape[0] - BORDER_PX - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0),
                1, cv2.LINE_AA)
    return img


class EvidenceWriter:
    """`skyloc run --evidence DIR`: one PNG per positioned frame. A folder already holding evidence is
    refused unless `overwrite` (the files of an earlier run are never replaced silently)."""

    def __init__(self, folder: str | os.PathLike, overwrite: bool = False) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise SkylocError(f"--evidence {self.folder} is a file, not a folder: name a folder for the PNGs")
        old = evidence_files(self.folder)
        if old and not overwrite:
            raise SkylocError(f"--evidence {self.folder} already holds {len(old)} evidence images of an earlier run: "
                              "name another folder, or pass --overwrite to replace them")
        for p in old.values():  # --overwrite: no image of the earlier run may pass for one of this run
            p.unlink()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written = self.failed = 0

    def write_safely(self, frame: Any, pose: Any, camera: Any, rec: dict[str, Any], localizer: Any) -> bool:
        """`write`, logging a failure instead of raising (evidence is for people: it never costs a fix);
        False when it failed."""
        try:
            self.write(frame, pose, camera, rec, localizer)
            return True
        except Exception as exc:
            self.failed += 1
            if self.failed <= 5:
                log.warning("evidence of frame %s not written: %s", rec.get("frame"), exc)
            return False

    def write(self, frame: Any, pose: Any, camera: Any, rec: dict[str, Any], localizer: Any) -> Path | None:
        """Draw and write the evidence of one record; None for a skipped frame or one without a ground point."""
        if rec.get("skipped") is not None or frame.image is None:
            return None
        lat, lon, heading, level = (rec.get(k) for k in ("ground_lat", "ground_lon", "heading_deg", "scale_level"))
        if None in (lat, lon, heading, level):
            return None
        side_m = float(localizer.tile_m) * float(level)
        rgb = cv2.cvtColor(np.ascontiguousarray(frame.image[:, :, :3]), cv2.COLOR_BGR2RGB)
        patch = ground_patch(rgb, pose, camera if camera is not None else localizer.camera, side_m,
                             float(heading), getattr(localizer.opt, "use_heading", True))
        map_bgr = surface = check = None
        imagery = getattr(localizer, "imagery", None)
        if imagery is not None:
            mpp = side_m / PANEL_PX
            m_rgb, _ = imagery.crop(float(lat), float(lon), side_m, mpp)
            map_bgr = m_rgb[:, :, ::-1]
            small = cv2.resize(patch.image, (SURFACE_PX, SURFACE_PX), interpolation=cv2.INTER_AREA)
            valid = cv2.resize(patch.valid.astype(np.uint8), (SURFACE_PX, SURFACE_PX),
                               interpolation=cv2.INTER_NEAREST).astype(bool)
            big, _ = imagery.crop(float(lat), float(lon), 2.0 * side_m, side_m / SURFACE_PX)
            surface = match_surface(small, valid, big)
            check = surface_peak(surface, 2.0 * side_m / big.shape[1])
        img = compose(rec, frame.image[:, :, :3], patch.image[:, :, ::-1], map_bgr, surface, check)
        ok, buf = cv2.imencode(".png", img)
        if not ok:
            raise SkylocError(f"cannot encode the evidence of frame {rec['frame']} as PNG")
        self.written += 1
        return write_bytes_atomic(self.folder / evidence_name(rec["frame"]), buf.tobytes())


def ground_patch(rgb: np.ndarray, pose: Any, camera: Any, side_m: float, heading: float, use_heading: bool) -> Any:
    """The frame on the ground, north-up at `heading`, one tile of side_m metres (PANEL_PX a side), as
    the localizer's rectify stage makes it (an unknown altitude: the one at which the tile fits)."""
    from skyloc.runtime.localize.localizer import nadir_patch
    from skyloc.runtime.localize.rectify import ground_coverage_m, rectify

    mpp = side_m / PANEL_PX
    if camera is None:
        src = int(round(side_m / pose.gsd_m)) if pose.gsd_m else None
        return nadir_patch(rgb, PANEL_PX, mpp, heading, src)
    cam = camera.scaled_to(rgb.shape[1], rgb.shape[0])
    if pose.altitude_m is None and pose.gsd_m is None:
        unit = pose.with_(altitude_m=1.0, yaw_deg=pose.yaw_deg if use_heading else None)
        pose = pose.with_(altitude_m=side_m / ground_coverage_m(cam, unit))
    return rectify(rgb, cam, pose, mpp, PANEL_PX, heading)


def evidence_sheet(path: str | os.PathLike, records: Sequence[dict[str, Any]], folder: str | os.PathLike,
                   most: int = 8) -> tuple[Path | None, list[int], int]:
    """Up to `most` evidence images of the run stacked in one PNG: spread over the flight, every state
    that occurs shown at least once. Returns (path or None when the folder holds none, frames shown,
    images found for the records)."""
    files = evidence_files(folder)
    have = [r for r in records if r["frame"] in files and r.get("skipped") is None]
    if not have:
        return None, [], 0
    picked: list[dict[str, Any]] = []
    for state in dict.fromkeys(frame_state(r) for r in have):  # one of each state first
        picked.append(next(r for r in have if frame_state(r) == state))
    for i in np.linspace(0, len(have) - 1, most).round().astype(int):
        if len(picked) < most and all(have[i]["frame"] != p["frame"] for p in picked):
            picked.append(have[i])
    picked.sort(key=lambda r: r["frame"])
    images = [cv2.imread(str(files[r["frame"]])) for r in picked]
    if any(i is None for i in images):
        bad = [files[r["frame"]].name for r, i in zip(picked, images) if i is None]
        raise SkylocError(f"evidence {folder}: {', '.join(bad)} cannot be read as PNG; rerun `skyloc run --evidence`")
    w = max(i.shape[1] for i in images)
    rows = [np.pad(i, ((0, 6), (0, w - i.shape[1]), (0, 0)), constant_values=255) for i in images]
    from skyloc.runtime.report.plots import write_png

    return write_png(path, np.concatenate(rows, axis=0)), [r["frame"] for r in picked], len(have)
