"""The report's per-frame part: timeline.png, window.png, accuracy.png, autopilot.png + autopilot.csv,
evidence.png, and their numbers for report.json (frames.py derives them, pictures.py draws them)."""
from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from skyloc.core.atomic import write_text_atomic
from skyloc.runtime.report import pictures
from skyloc.runtime.report.evidence import evidence_sheet
from skyloc.runtime.report.frames import (FrameState, accuracy_check, autopilot_rows, frame_reason, frame_state,
                                          search_windows)

log = logging.getLogger(__name__)

AUTOPILOT_COLUMNS = ("frame", "time_s", "state", "sent", "lat", "lon", "horiz_accuracy_m", "vn_mps", "ve_mps",
                     "yaw_deg")


def run_start(fixes_path: str | os.PathLike) -> list[float] | None:
    """The start prior (LAT, LON[, R]) the run used, from its resolved config beside the fixes; None
    when there is none or it has no start."""
    from skyloc.runtime.run.cli import config_path_for

    cfg = config_path_for(str(fixes_path), None)
    if cfg is None or not cfg.is_file():
        return None
    try:
        start = json.loads(cfg.read_text(encoding="utf-8")).get("options", {}).get("start")
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("report: %s is not a readable resolved config (%s): the start prior is not drawn", cfg, exc)
        return None
    ok = isinstance(start, list) and len(start) in (2, 3) and all(isinstance(v, (int, float)) for v in start)
    return [float(v) for v in start] if ok else None


def write_autopilot_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(AUTOPILOT_COLUMNS), lineterminator="\n")
    w.writeheader()
    w.writerows({k: ("" if r[k] is None else r[k]) for k in AUTOPILOT_COLUMNS} for r in rows)
    return write_text_atomic(path, buf.getvalue())


def frame_pictures(out: Path, records: Sequence[dict[str, Any]], errors: Sequence[dict[str, Any]] | None,
                   gmap: Any, title: str, files: dict[str, Path], evidence_dir: str | os.PathLike | None,
                   start: Sequence[float] | None) -> dict[str, Any]:
    """Draw the per-frame pictures into out (adding them to `files`); returns report.json's part."""
    files["timeline"] = pictures.timeline_png(out / "timeline.png", records, title)
    states = {str(s): sum(frame_state(r) == s for r in records) for s in FrameState}
    reasons: dict[str, int] = {}
    for r in records:
        why = frame_reason(r)
        if why:
            reasons[why] = reasons.get(why, 0) + 1
    rows = autopilot_rows(records)
    files["autopilot_csv"] = write_autopilot_csv(out / "autopilot.csv", rows)
    files["autopilot"] = pictures.autopilot_png(out / "autopilot.png", rows, title)
    gaps, last = [], None
    for r in rows:  # longest time without a position sent (from the first frame)
        if r["sent"]:
            last = r["time_s"]
        gaps.append(r["time_s"] - (last if last is not None else rows[0]["time_s"]))
    part: dict[str, Any] = {
        "frames": {"states": states, "reasons": reasons},
        "autopilot": {"sent": sum(r["sent"] for r in rows), "frames": len(rows),
                      "longest_without_position_s": round(max(gaps), 3) if gaps else None},
    }
    windows = search_windows(records, start)
    if windows or any(r.get("skipped") is None for r in records):
        files["window"], _ = pictures.window_png(out / "window.png", records, windows, gmap, title)
        part["windows"] = {"prior": sum(w["kind"] == "prior" for w in windows),
                           "track": sum(w["kind"] == "track" for w in windows), "start": list(start) if start else None}
    if errors:
        part["accuracy"] = accuracy_check(errors)
        if part["accuracy"]["n"]:
            files["accuracy"] = pictures.accuracy_png(out / "accuracy.png", errors, title)
    if evidence_dir is not None:
        sheet, shown, found = evidence_sheet(out / "evidence.png", records, evidence_dir)
        if sheet is not None:
            files["evidence"] = sheet
        else:
            log.warning("report: %s holds no evidence image of these fixes (run with --evidence %s)",
                        evidence_dir, evidence_dir)
        part["evidence"] = {"dir": str(evidence_dir), "images": found, "shown": shown}
    return part
