"""The report's per-frame pictures (OpenCV only, like plots.py): the timeline of states and reasons,
the search windows on the map, the error against the claimed accuracy, and what the autopilot was sent.

Each function returns the PNG's path and draws exactly what runtime/report/frames.py derives from
the records, so a test can read a pixel back at a frame's known place.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from skyloc.core.errors import SkylocError
from skyloc.runtime.report import plots
from skyloc.runtime.report.frames import FrameState, frame_reason, frame_state

# BGR per state; the timeline's state row and the evidence images' borders use the same colours
STATE_COLOURS: dict[FrameState, tuple[int, int, int]] = {
    FrameState.SENT: plots.CYAN, FrameState.ACCEPTED: plots.GREEN, FrameState.VERIFIED: (0, 215, 255),
    FrameState.UNVERIFIED: plots.RED, FrameState.SKIPPED: plots.GREY}
REASON_COLOUR = plots.ORANGE
TIMELINE_LEFT, TIMELINE_TOP, TIMELINE_ROW = 190, 40, 20


def timeline_layout(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Where the timeline draws: column of each frame (x centre), and the row of each label (y centre).

    Rows: `state` (one colour per FrameState), then one row per reason seen, in order of first sight.
    """
    n = len(records)
    col = min(14.0, 1100.0 / max(n, 1))  # past 1100 frames several share a pixel column
    reasons = list(dict.fromkeys(x for x in (frame_reason(r) for r in records) if x))
    rows = ["state"] + reasons
    y = {label: TIMELINE_TOP + TIMELINE_ROW * i + TIMELINE_ROW // 2 for i, label in enumerate(rows)}
    x = [int(TIMELINE_LEFT + col * i + col / 2) for i in range(n)]
    return {"col": col, "rows": rows, "y": y, "x": x,
            "width": int(TIMELINE_LEFT + col * n + 20), "height": TIMELINE_TOP + TIMELINE_ROW * len(rows) + 60}


def timeline_png(path: str | os.PathLike, records: Sequence[dict[str, Any]], title: str = "") -> Path:
    """One column per frame (in record order): its state, and a mark in the row of its reason."""
    lay = timeline_layout(records)
    W, H = max(lay["width"], TIMELINE_LEFT + 125 * len(STATE_COLOURS) + 10), lay["height"]
    img = np.full((H, W, 3), 255, np.uint8)
    half_c, half_r = max(lay["col"] / 2 - 0.5, 0.5), TIMELINE_ROW // 2 - 2
    for label in lay["rows"]:
        yc = lay["y"][label]
        cv2.line(img, (TIMELINE_LEFT, yc + TIMELINE_ROW // 2), (lay["width"] - 20, yc + TIMELINE_ROW // 2),
                 (230, 230, 230), 1)
        plots._text(img, label[:26], (6, yc + 5), plots.BLACK, 0.42)
    # where frames share a pixel column, the state drawn last shows: the ones that need a look last
    order = sorted(range(len(records)), key=lambda i: list(STATE_COLOURS).index(frame_state(records[i])))
    for i in order:
        xc, r = lay["x"][i], records[i]
        x0, x1 = int(round(xc - half_c)), int(round(xc + half_c))
        yc = lay["y"]["state"]
        cv2.rectangle(img, (x0, yc - half_r), (x1, yc + half_r), STATE_COLOURS[frame_state(r)], -1)
        why = frame_reason(r)
        if why:
            yr = lay["y"][why]
            cv2.rectangle(img, (x0, yr - half_r), (x1, yr + half_r), REASON_COLOUR, -1)
    # time ticks under the rows: the frame's own time_s
    y_axis = TIMELINE_TOP + TIMELINE_ROW * len(lay["rows"]) + 4
    step = max(1, int(round(len(records) / 8)))
    for i in range(0, len(records), step):
        cv2.line(img, (lay["x"][i], y_axis), (lay["x"][i], y_axis + 5), plots.BLACK, 1)
        plots._text(img, f"{records[i]['time_s']:g}", (lay["x"][i] - 10, y_axis + 20), plots.BLACK, 0.38)
    plots._text(img, "time (s)", (6, y_axis + 20), plots.BLACK, 0.42)
    x = TIMELINE_LEFT
    for state, colour in STATE_COLOURS.items():
        n = sum(frame_state(r) == state for r in records)
        cv2.rectangle(img, (x, 10), (x + 12, 22), colour, -1)
        plots._text(img, f"{state} ({n})", (x + 16, 21), plots.BLACK, 0.42)
        x += 125
    plots._text(img, title[:24], (6, 21), plots.BLACK, 0.45)
    return plots.write_png(path, img)


def window_png(path: str | os.PathLike, records: Sequence[dict[str, Any]], windows: Sequence[dict[str, Any]],
               gmap: Any | None = None, title: str = "") -> tuple[Path, plots.View]:
    """The search windows on the map (the start prior in white, the track's windows in yellow, the
    frame's own fix as a dot of its state's colour); returns the view too (where each point is)."""
    pos = [r for r in records if r.get("skipped") is None]
    pts = [(r["lat"], r["lon"]) for r in pos] + [(w["lat"], w["lon"]) for w in windows]
    if not pts:
        raise SkylocError("report: no fix and no search window to draw")
    a = np.array(pts, float)
    view = _window_view(a, windows)
    img = view.background(gmap)
    for w in windows:
        c = tuple(int(v) for v in view.px(w["lat"], w["lon"]).round())
        radius = max(1, int(round(w["radius_m"] / view.mpp)))
        colour = plots.WHITE if w["kind"] == "prior" else (0, 230, 255)
        cv2.circle(img, c, radius, colour, 2 if w["kind"] == "prior" else 1, cv2.LINE_8)  # exact colours
    for r in pos:
        x, y = (int(v) for v in view.px(r["lat"], r["lon"]).round())
        cv2.circle(img, (x, y), 3, STATE_COLOURS[frame_state(r)], -1, cv2.LINE_AA)
    view.decorate(img)
    n_prior = sum(w["kind"] == "prior" for w in windows)
    legend = [f"{title[:30]}", f"start prior ({n_prior} frames)", f"track window ({len(windows) - n_prior} frames)"]
    cv2.rectangle(img, (8, 8), (250, 14 + 20 * len(legend)), (40, 40, 40), -1)
    for i, (s, colour) in enumerate(zip(legend, (plots.WHITE, plots.WHITE, (0, 230, 255)))):
        plots._text(img, s, (14, 26 + 20 * i), colour)
    return plots.write_png(path, img), view


def _window_view(pts: np.ndarray, windows: Sequence[dict[str, Any]]) -> plots.View:
    from skyloc.core import geo

    extra = [pts]
    for w in windows:  # the view holds every circle whole
        for de, dn in ((w["radius_m"], 0), (-w["radius_m"], 0), (0, w["radius_m"]), (0, -w["radius_m"])):
            la, lo = geo.local_m_to_latlon(np.array(de, float), np.array(dn, float), w["lat"], w["lon"])
            extra.append(np.array([[float(la), float(lo)]]))
    a = np.concatenate(extra)
    return plots.View(a[:, 0], a[:, 1], margin=0.04)


def accuracy_png(path: str | os.PathLike, errors: Sequence[dict[str, Any]], title: str = "") -> Path:
    """Error against the claimed accuracy (1 sigma): one dot per fix with truth, coloured by state;
    lines error = 1x and 2x the claim (dots above the 2x line claimed too much)."""
    pts = [(float(e["accuracy_m"]), float(e["error_m"]), e) for e in errors
           if e.get("accuracy_m") is not None and e["accuracy_m"] > 0]
    W, H = 700, 520
    img = np.full((H, W, 3), 255, np.uint8)
    top = max([max(a, b) for a, b, _ in pts] + [1.0]) * 1.1
    to_px = plots._axes(img, (70, 40, W - 30, H - 60), (0.0, top), (0.0, top), "claimed accuracy_m (1 sigma, m)",
                        "error vs truth (m)", f"{title}: error vs claimed accuracy")
    for k, colour in ((1.0, plots.GREY), (2.0, plots.ORANGE)):
        (a, b), = to_px([0.0], [0.0])
        (c, d), = to_px([top / k], [top])
        cv2.line(img, (int(a), int(b)), (int(c), int(d)), colour, 1, cv2.LINE_AA)
        plots._text(img, f"{k:g}x", (int(c) - 28, int(d) + 16), colour, 0.45)
    for acc, err, e in pts:
        state = FrameState.SENT if e["verified"] and e["accepted"] else (
            FrameState.ACCEPTED if e["accepted"] else FrameState.VERIFIED if e["verified"] else FrameState.UNVERIFIED)
        (x, y), = to_px([acc], [err])
        cv2.circle(img, (int(x), int(y)), 4, STATE_COLOURS[state], -1, cv2.LINE_AA)
    within = sum(err <= 2 * acc for acc, err, _ in pts)
    plots._text(img, f"{within} of {len(pts)} within 2x their claim", (80, 62), plots.BLACK, 0.45)
    return plots.write_png(path, img)


def autopilot_png(path: str | os.PathLike, rows: Sequence[dict[str, Any]], title: str = "") -> Path:
    """What the autopilot was sent, over time: the horizontal accuracy of each position sent (dots),
    and a red tick under every frame that sent none (the autopilot's GPS times out there)."""
    sent = [r for r in rows if r["sent"] and r["horiz_accuracy_m"] is not None]
    t = np.array([r["time_s"] for r in rows], float)
    W, H = 900, 360
    img = np.full((H, W, 3), 255, np.uint8)
    xr = (float(t.min()), float(t.max()) if t.max() > t.min() else float(t.min()) + 1.0)
    top = max([r["horiz_accuracy_m"] for r in sent] + [1.0]) * 1.15
    box = (60, 40, W - 30, H - 70)
    to_px = plots._axes(img, box, xr, (0.0, top), "time (s)", "h-acc (m)",
                        f"{title}: sent to the autopilot ({sum(r['sent'] for r in rows)} of {len(rows)} frames)")
    for r in rows:
        (x, y), = to_px([r["time_s"]], [0.0])
        if r["sent"] and r["horiz_accuracy_m"] is not None:
            (_, ya), = to_px([r["time_s"]], [r["horiz_accuracy_m"]])
            cv2.circle(img, (int(x), int(ya)), 4, STATE_COLOURS[FrameState.SENT], -1, cv2.LINE_AA)
        elif not r["sent"]:
            cv2.line(img, (int(x), box[3] - 12), (int(x), box[3] - 3), plots.RED, 2)
    plots._text(img, "red tick: nothing sent for that frame", (box[0], H - 8), plots.RED, 0.42)
    return plots.write_png(path, img)
