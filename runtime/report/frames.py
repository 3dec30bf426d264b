"""Per-frame facts the report's pictures draw, derived from the fix records alone.

- `frame_state`: one state per frame (sent to the autopilot, accepted, verified, unverified, skipped);
- `autopilot_rows`: what GPS_INPUT / NMEA carried for each frame, by the senders' own rule
  (runtime/outputs/mavlink.py `vouched`, `fix_position`, `measured_heading`): a position only for a
  verified, accepted, finite fix;
- `search_windows`: the retrieval window of each frame that used one (`window_m`), centred where the
  temporal filter's `last` was: the start prior before any fix, then the last position the filter
  took (a record accepted, or an init / reinit / tentative one).
"""
from __future__ import annotations

import math
from enum import StrEnum
from typing import Any, Sequence

from skyloc.runtime.outputs.mavlink import fix_position, measured_heading, vouched
from skyloc.runtime.outputs.schema import FixStatus

# the filter reasons with which it still takes the fix as its last position (filter.py: _init, tentative)
_TAKEN = (FixStatus.INIT, FixStatus.REINIT, FixStatus.TENTATIVE)


class FrameState(StrEnum):
    """What became of one frame, best first."""
    SENT = "sent"  # verified, accepted, finite: sent to the autopilot as a position
    ACCEPTED = "accepted"  # on the track but not verified (retrieval only): never sent
    VERIFIED = "verified"  # registration vouched for it but the filter did not accept it (yet)
    UNVERIFIED = "unverified"  # a match nothing vouched for
    SKIPPED = "skipped"  # no match made (the record's `skipped` says why)


def frame_state(rec: dict[str, Any]) -> FrameState:
    if rec.get("skipped") is not None:
        return FrameState.SKIPPED
    if vouched(rec):
        return FrameState.SENT
    if rec.get("accepted"):
        return FrameState.ACCEPTED
    return FrameState.VERIFIED if rec.get("verified") else FrameState.UNVERIFIED


def frame_reason(rec: dict[str, Any]) -> str | None:
    """`skipped: <why>` for a skipped frame, `filter: <why>` for a fix the filter did not simply accept."""
    if rec.get("skipped") is not None:
        return f"skipped: {rec['skipped']}"
    return f"filter: {rec['reason']}" if rec.get("reason") else None


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def autopilot_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per frame: what the autopilot was sent (`sent` False: nothing, or GPS_INPUT fix_type 0
    when the run used --rejected-fix-type)."""
    rows = []
    for r in records:
        sent = r.get("skipped") is None and vouched(r)
        lat, lon = fix_position(r) if sent else (None, None)
        heading = measured_heading(r) if sent else None
        rows.append({"frame": r["frame"], "time_s": r["time_s"], "state": str(frame_state(r)), "sent": sent,
                     "lat": lat, "lon": lon, "horiz_accuracy_m": _finite(r.get("accuracy_m")) if sent else None,
                     "vn_mps": _finite(r.get("vn_mps")) if sent else None,
                     "ve_mps": _finite(r.get("ve_mps")) if sent else None, "yaw_deg": heading})
    return rows


def search_windows(records: Sequence[dict[str, Any]], start: Sequence[float] | None = None
                   ) -> list[dict[str, Any]]:
    """[{frame, lat, lon, radius_m, kind}] for every record with `window_m`: kind `prior` (the start
    prior, centre from `start` = LAT,LON[,R]; left out when unknown) or `track`."""
    last: tuple[float, float] | None = None
    out = []
    for r in records:
        radius = _finite(r.get("window_m"))
        if radius is not None:
            if last is not None:
                out.append({"frame": r["frame"], "lat": last[0], "lon": last[1], "radius_m": radius, "kind": "track"})
            elif start is not None and len(start) >= 2:
                out.append({"frame": r["frame"], "lat": float(start[0]), "lon": float(start[1]), "radius_m": radius,
                            "kind": "prior"})
        if r.get("skipped") is None and (r.get("accepted") or r.get("reason") in _TAKEN):
            lat, lon = _finite(r.get("lat")), _finite(r.get("lon"))
            if lat is not None and lon is not None:
                last = (lat, lon)
    return out


def accuracy_check(errors: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Error against the claimed accuracy (1 sigma) of the fixes with truth and an accuracy_m: how many
    lie within 1x and 2x their claim (a calibrated 1-sigma claim: about 39 % and 86 % in 2-D)."""
    pairs = [(float(e["accuracy_m"]), float(e["error_m"]), bool(e["verified"]), bool(e["accepted"]))
             for e in errors if _finite(e.get("accuracy_m")) is not None and e["accuracy_m"] > 0]
    n = len(pairs)
    return {"n": n, "within_1x": sum(err <= acc for acc, err, _, _ in pairs),
            "within_2x": sum(err <= 2 * acc for acc, err, _, _ in pairs),
            "share_within_2x": round(sum(err <= 2 * acc for acc, err, _, _ in pairs) / n, 3) if n else None}
